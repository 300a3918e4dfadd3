"""The inference worker: a separate process that owns the pipeline and its models.

Reception and inference never share a process (torch and pixel decoding slow every association,
and a crash here must not stop reception). The worker loads the models once, then claims jobs from
the queue one at a time. Its heartbeat row in the index tells the receiver's /readyz whether
models are loaded and the worker is alive.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.phases import IGNORED
from pipeline.series import RESOURCE_ERRNOS

from .config import Settings
from .index import Index
from .jobs import Job, JobQueue
from .logs import kv, safe_reason
from .outbox import enqueue
from .sdnotify import Notifier
from .spool import Spool

log = logging.getLogger(__name__)

HEARTBEAT_STALE_S = 15.0
MODEL_RETRY_S = 60.0  # without models, how often the worker tries to load them again (jobs wait meanwhile)
# Conditions that can clear by themselves: retention frees the disk, another process frees memory
# (the series reader lets the machine's resource errors through for this).
TRANSIENT_ERRNOS = RESOURCE_ERRNOS | {errno.ENOSPC, errno.EDQUOT, errno.EAGAIN}


def transient_failure(exc: BaseException) -> bool:
    """Worth a later retry, unlike a bad series or a defect: a full disk, memory, or the GPU's memory
    (torch's OutOfMemoryError, told by name so the receiver never imports torch)."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return True
    return any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__)


class PipelineUnavailable(Exception):
    """The pipeline package does not provide the entry points the worker needs."""


@dataclass(frozen=True)
class SeriesFiles:
    series_uid: str
    phase: str
    phase_reason: str
    paths: tuple[Path, ...]
    ignored: bool = False


def study_series(index: Index, spool: Spool, study_uid: str) -> list[SeriesFiles]:
    out = []
    for s in index.query("SELECT series_uid, phase, phase_reason, phase_source FROM series WHERE study_uid=?"
                         " ORDER BY series_number", (study_uid,)):
        paths = tuple(spool.absolute(r[0]) for r in index.query(
            "SELECT path FROM instances WHERE series_uid=? AND study_uid=? ORDER BY id", (s[0], study_uid)))
        out.append(SeriesFiles(s[0], s[1] or "OTHER", s[2] or "", paths, s[3] == IGNORED))
    return out


def load_pipeline(settings: Settings):
    """Return the pipeline's Analyzer with its models loaded; raises PipelineUnavailable."""
    try:
        from pipeline.analyzer import Analyzer, AnalyzerOptions
        from pipeline.weights import WeightsError
    except ImportError as exc:
        raise PipelineUnavailable(f"pipeline cannot be imported ({exc.__class__.__name__}: {exc})") from None
    try:
        return Analyzer.from_weights(settings.weights_dir, device=settings.pipeline.device or None,
                                     options=AnalyzerOptions(unknown_phase=settings.pipeline.unknown_phase))
    except (WeightsError, OSError, ImportError) as exc:
        raise PipelineUnavailable(f"models cannot be loaded: {exc}") from None


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.index = Index(settings.data_dir / "index.sqlite")
        self.spool = Spool(settings.data_dir, self.index, settings.node.min_free_mb << 20)
        self.queue = JobQueue(self.index, settings.worker.max_attempts)
        self.stop = threading.Event()
        self.hung = False  # a job outlived worker.job_timeout: exit non-zero so the supervisor restarts us
        self.pid = os.getpid()
        self.runner = None  # pipeline.analyzer.Analyzer once loaded
        self.unavailable_reason: str | None = None
        self.notifier = Notifier()

    def _deliver(self, job: Job, result, series, folder, previous: Path | None) -> None:  # noqa: ANN001
        """Write the SR and SCs (amending ``previous``, the last report), then index them in the outbox;
        both before anything is sent."""
        from pipeline.outputs import write_result_objects

        paths = write_result_objects(result, series, folder, revision=job.revision,
                                     predecessor_sr=previous / "sr.dcm" if previous else None,
                                     heatmap=getattr(self.runner, "heatmap", None), uid_salt=self.index.uid_salt())
        calling = self.index.scalar("SELECT calling_aet FROM studies WHERE study_uid=?", (job.study_uid,))
        destinations = self.settings.destinations_for(calling)
        added = enqueue(self.index, job.study_uid, job.revision, paths, destinations, time.time())
        log.info("%s", kv(event="results_queued", job=job.id, objects=len(paths), destinations=len(destinations),
                          entries=added))

    def results_dir(self, job: Job):
        return self.settings.data_dir / "results" / self.spool.study_dir(job.study_uid).name / f"rev-{job.revision}"

    @staticmethod
    def _orphaned() -> bool:
        """Started by `serve` and that process is gone (a crash or kill -9 of the receiver)."""
        supervisor = os.environ.get("LIVER_NODE_SUPERVISOR_PID")
        return bool(supervisor) and os.getppid() != int(supervisor)

    def _models_json(self) -> str | None:
        if self.runner is None:
            return None
        return json.dumps([{"name": m.name, "version": m.version, "sha256": m.sha256} for m in self.runner.models])

    def heartbeat(self, status: str) -> None:
        with self.index.transaction() as c:
            c.execute(
                "INSERT INTO workers (pid, started, heartbeat, models_loaded, models, status) VALUES (?,?,?,?,?,?)"
                " ON CONFLICT(pid) DO UPDATE SET heartbeat=excluded.heartbeat, models_loaded=excluded.models_loaded,"
                " models=excluded.models, status=excluded.status",
                (self.pid, time.time(), time.time(), int(self.runner is not None), self._models_json(), status),
            )

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        self.queue.recover_interrupted(time.time(), HEARTBEAT_STALE_S, idle_pid=self.pid)
        next_recovery = time.monotonic() + HEARTBEAT_STALE_S
        self._load_models()
        next_load = time.monotonic() + MODEL_RETRY_S
        self.heartbeat("idle")
        # READY only once the models are loaded (or known to be unavailable, which /readyz reports).
        self.notifier.ready("models loaded" if self.runner else f"no models: {self.unavailable_reason}")
        while not self.stop.is_set():
            if self._orphaned():
                log.error("%s", kv(event="supervisor_gone", action="exit"))
                break
            self.notifier.watchdog()
            if time.monotonic() >= next_recovery:  # a job whose worker died while this one ran
                self.queue.recover_interrupted(time.time(), HEARTBEAT_STALE_S, idle_pid=self.pid)
                next_recovery = time.monotonic() + HEARTBEAT_STALE_S
            if self.runner is None:
                # Without models the studies wait in the queue (failing them would make every sender
                # resend): /readyz says why, and the weights are tried again until an operator fixes them.
                if time.monotonic() >= next_load:
                    self._reload_models()
                    next_load = time.monotonic() + MODEL_RETRY_S
                if self.runner is None:
                    self.heartbeat(f"no models: {self.unavailable_reason}")
                    self.stop.wait(min(self.settings.worker.poll_interval, self.notifier.watchdog_interval or 1.0))
                    continue
            job = self.queue.claim(self.pid, time.time())
            if job is None:
                self.heartbeat("idle")
                self.stop.wait(min(self.settings.worker.poll_interval, self.notifier.watchdog_interval or 1.0))
                continue
            self._run_job(job)
        self.notifier.stopping()
        with self.index.transaction() as c:
            c.execute("DELETE FROM workers WHERE pid=?", (self.pid,))
        self.index.close()
        return 3 if self.hung else 0

    def _load_models(self) -> None:
        try:
            self.runner = load_pipeline(self.settings)
            self.unavailable_reason = None
            log.info("%s", kv(event="models_loaded"))
        except PipelineUnavailable as exc:
            if str(exc) != self.unavailable_reason:  # once per reason, not once a minute
                log.error("%s", kv(event="pipeline_unavailable", reason=exc, action="jobs_wait"))
            self.unavailable_reason = str(exc)

    def _reload_models(self) -> None:
        """``_load_models`` after READY, where systemd's watchdog applies: a cold load can outlast
        WatchdogSec, so it runs in a thread while this one keeps pinging and heartbeating."""
        thread = threading.Thread(target=self._load_models, name="model-load", daemon=True)
        thread.start()
        while thread.is_alive() and not self.stop.is_set():
            thread.join(1.0)
            self.notifier.watchdog()
            self.heartbeat("loading models")
        if self.runner is not None:
            self.notifier.status("models loaded")

    def _run_job(self, job: Job) -> None:
        log.info("%s", kv(event="job_started", job=job.id, study_uid=job.study_uid, revision=job.revision,
                          attempt=job.attempts))
        self.heartbeat(f"running job {job.id}")
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                from pipeline.analyzer import SeriesInput

                series = [SeriesInput(s.series_uid, s.phase, s.phase_reason, s.paths, s.ignored)
                          for s in study_series(self.index, self.spool, job.study_uid)]
                result = self.runner.run_study(job.study_uid, series)
                outcome["timings"] = result.timings_s
                outcome["findings"] = result.findings()
                from pipeline.report.sr import uid_key
                from pipeline.report.tracking import carry_tracking

                folder = self.results_dir(job)
                previous = earlier_report(folder, job.revision)
                carry_tracking(result, previous / "result.json" if previous else None, job.revision,
                               uid_key(result.models, self.index.uid_salt()))
                result.write(folder)
                self._deliver(job, result, series, folder, previous)
                if result.status != "ok":
                    outcome["error"] = f"not analysed: {result.reason}"
                outcome["finished"] = True
            except Exception as exc:  # the pipeline's failure becomes the job's recorded reason
                outcome["error"] = safe_reason(exc)
                outcome["transient"] = transient_failure(exc)

        thread = threading.Thread(target=target, name=f"job-{job.id}", daemon=True)
        thread.start()
        deadline = time.monotonic() + self.settings.worker.job_timeout
        while thread.is_alive():
            thread.join(1.0)
            self.notifier.watchdog()
            self.heartbeat(f"running job {job.id}")
            if time.monotonic() > deadline and thread.is_alive():
                # A thread cannot be stopped: fail the study, then leave the loop so the process exits and
                # its supervisor (serve, or systemd) starts a fresh worker for the jobs behind it.
                reason = f"analysis exceeded worker.job_timeout ({self.settings.worker.job_timeout:g} s)"
                self.queue.finish(job, False, reason, time.time(), worker_pid=self.pid)
                log.error("%s", kv(event="job_failed", job=job.id, reason=reason, action="worker_restart"))
                self.hung = True
                self.stop.set()
                return
            if self.stop.is_set():
                thread.join(self.settings.worker.shutdown_timeout)
                if thread.is_alive():
                    self.queue.park(job)
                    log.warning("%s", kv(event="job_parked", job=job.id, reason="shutdown"))
                    return
        if "error" not in outcome and not outcome.get("finished"):  # a BaseException ended the thread
            outcome["error"] = "analysis ended without a result"
        ok = "error" not in outcome
        if outcome.get("transient"):
            delay = self.settings.worker.retry_delay * 2 ** min(job.attempts - 1, 6)  # at most 64x
            if self.queue.retry_later(job, outcome["error"], time.time() + delay, self.pid):
                log.warning("%s", kv(event="job_retry", job=job.id, attempt=job.attempts, delay_s=f"{delay:g}",
                                     reason=outcome["error"]))
                return
        self.queue.finish(job, ok, outcome.get("error"), time.time(), outcome.get("timings"), worker_pid=self.pid,
                          findings=outcome.get("findings") if outcome.get("finished") else None)
        log.log(logging.INFO if ok else logging.ERROR, "%s",
                kv(event="job_done" if ok else "job_failed", job=job.id, reason=outcome.get("error", "")))


def earlier_report(folder: Path, revision: int) -> Path | None:
    """The folder of the newest earlier revision that wrote an SR, beside ``folder`` (``rev-N``): the
    amendment's predecessor and the source of its lesions' tracking UIDs, both from that one report.
    Not only N-1: a revision superseded while queued, or failed, wrote no SR."""
    for earlier in range(revision - 1, 0, -1):
        path = folder.parent / f"rev-{earlier}"
        if (path / "sr.dcm").exists():
            return path
    return None


def worker_probe(index: Index) -> Callable[[], tuple[bool, str]]:
    def probe() -> tuple[bool, str]:
        rows = index.query("SELECT heartbeat, models_loaded, status FROM workers ORDER BY heartbeat DESC LIMIT 1")
        if not rows or time.time() - rows[0][0] > HEARTBEAT_STALE_S:
            return False, "no live inference worker"
        if not rows[0][1]:
            status = rows[0][2] or ""
            return False, "models not loaded" + (f" ({status.removeprefix('no models: ')})" if status.startswith("no models") else "")
        return True, "ok"

    return probe
