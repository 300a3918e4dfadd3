"""``liver-node serve``: the receiver's lifecycle.

Start order: index and spool (sweep partial receptions), scheduler, study timers recovered from the
index, DICOM listener, metrics endpoint, then the worker process. Signal handlers only set a flag;
shutdown runs in a fixed order: stop accepting, drain associations, stop timers, stop the worker
(which finishes or parks its job), close the index.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from .config import Settings
from .index import Index
from .jobs import JobQueue
from .logs import kv
from .metrics import MetricsServer, NodeMetrics
from .outbox import OutboxSender, RetryPolicy
from .retention import RetentionJob, RetentionPolicy, stale_reception_s
from .sdnotify import Notifier
from .tls import client_context
from .readiness import ReadinessPolicy
from .scp import StorageSCP
from .spool import Spool
from .studies import StudyAssembler
from .worker import worker_probe
from pipeline.phases import Phase

log = logging.getLogger(__name__)
WORKER_STOP_MARGIN_S = 10.0  # beyond worker.shutdown_timeout: its SIGTERM poll and the park itself


def readiness_policy(settings: Settings) -> ReadinessPolicy:
    s = settings.studies
    return ReadinessPolicy(
        quiet_period_s=s.quiet_period,
        max_wait_s=s.max_wait,
        required_phases=frozenset(Phase[p] for p in s.required_phases),
    )


class WorkerSupervisor:
    """Runs ``liver-node worker`` as a child process and restarts it if it dies."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._next_start = 0.0

    def poll(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is not None:
            log.error("%s", kv(event="worker_exited", code=self.proc.returncode, restarts=self.restarts))
            self.restarts += 1
            self.proc = None
            self._next_start = time.monotonic() + min(60.0, 2.0 ** min(self.restarts, 6))
        if time.monotonic() >= self._next_start:
            # The worker reports to nobody's notify socket: under systemd it is its own unit.
            env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
            env["LIVER_NODE_SUPERVISOR_PID"] = str(os.getpid())  # the worker exits if its supervisor dies
            self.proc = subprocess.Popen(self.argv, env=env)

    def stop(self, timeout: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _status_line(index: Index, scp: StorageSCP) -> str:
    jobs = index.counts_by_state("jobs")
    pending = index.counts_by_state("outbox")["pending"]
    return (f"associations={scp.active_associations()} jobs_queued={jobs['queued']} "
            f"jobs_running={jobs['running']} outbox_pending={pending}")


def _observe_e2e(index: Index, metrics: NodeMetrics, study_uid: str) -> None:
    last = index.scalar("SELECT last_received FROM studies WHERE study_uid=?", (study_uid,))
    if last is not None:
        metrics.study_e2e_seconds.observe(max(time.time() - float(last), 0.0))


def serve(settings: Settings, worker_argv: list[str] | None) -> int:
    data_dir = settings.data_dir
    os.umask(0o077)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    index = Index(data_dir / "index.sqlite")
    spool = Spool(data_dir, index, settings.node.min_free_mb << 20)
    swept = spool.sweep_incoming()
    spool.reindex_orphans()
    metrics = NodeMetrics(index, spool.root)
    queue = JobQueue(index, settings.worker.max_attempts)
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"max_instances": 1})
    assembler = StudyAssembler(
        index, queue, scheduler, readiness_policy(settings), settings.phases,
        on_ready=lambda uid, waited: metrics.study_ready_seconds.observe(waited),
    )
    sender = OutboxSender(
        index, settings.node.ae_title,
        RetryPolicy(settings.results.max_attempts, settings.results.retry_base_delay, settings.results.retry_max_delay),
        on_result=lambda result: metrics.results_sent.labels(result).inc(),
        on_study_delivered=lambda uid, rev: _observe_e2e(index, metrics, uid),
        tls=client_context(settings.tls_files) if settings.tls.outgoing else None,
    )
    scp = StorageSCP(settings, spool, metrics, assembler.instance_stored, assembler.association_released)

    def spool_probe() -> tuple[bool, str]:
        if not os.access(spool.incoming, os.W_OK):
            return False, "spool not writable"
        if not spool.has_room():
            return False, "free space below watermark"
        return True, "ok"

    # The worker's heartbeat is in the shared index, so the receiver reports it also when systemd runs
    # the worker as its own unit (serve --no-worker): ready means studies will be analysed.
    stop = threading.Event()
    # Not ready while draining: a balancer or monitor stops routing here before the port closes.
    probes = [spool_probe, worker_probe(index), lambda: (not stop.is_set(), "shutting down")]
    http = MetricsServer(metrics, settings.metrics.bind, settings.metrics.port, probes)

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    scheduler.start()
    recovered = assembler.recover()
    retention = RetentionJob(index, spool, RetentionPolicy(settings.retention.completed_days,
                                                           settings.retention.failed_days),
                             on_removed=lambda kind, n: metrics.retention_removed.labels(kind).inc(n),
                             stale_incoming_s=stale_reception_s(settings))
    scheduler.add_job(retention.run_once, "interval", seconds=settings.retention.interval, id="retention",
                      replace_existing=True, coalesce=True, max_instances=1)
    scheduler.add_job(sender.run_once, "interval", seconds=settings.results.send_interval, id="outbox",
                      replace_existing=True, coalesce=True, max_instances=1)
    dicom_port = scp.start()
    http.start()
    print(f"listening dicom={dicom_port} metrics={http.port}", flush=True)
    log.info("%s", kv(event="started", ae_title=settings.node.ae_title, dicom_port=dicom_port,
                      metrics_port=http.port, data_dir=data_dir, swept_partial=swept, studies_recovered=recovered))
    supervisor = WorkerSupervisor(worker_argv) if settings.worker.enabled and worker_argv else None
    notifier = Notifier()
    # READY once the DICOM port is bound, state recovered and timers armed (the worker reports its own).
    notifier.ready(_status_line(index, scp))
    tick = min(1.0, notifier.watchdog_interval or 1.0)
    status = 0
    while not stop.is_set():
        # The watchdog is pinged from this loop, so it alone would not notice a dead listener: a node
        # that accepts no association or serves no /metrics exits non-zero for systemd to restart it.
        dead = [t.name for t in (scp.accept_thread, http.thread) if not t.is_alive()]
        if dead:
            log.error("%s", kv(event="thread_died", threads=",".join(dead), action="exit"))
            status = 1
            break
        if supervisor is not None:
            supervisor.poll()
        metrics.collect_worker()
        notifier.watchdog()
        notifier.status(_status_line(index, scp))
        stop.wait(tick)

    notifier.stopping()
    log.info("%s", kv(event="stopping", active_associations=scp.active_associations()))
    scp.shutdown(drain_timeout=settings.worker.shutdown_timeout / 2)
    # No new outbox round; the one in flight finishes its current instance and records it before the
    # index closes (sender.stop), so a delivered instance is not left pending.
    sender.stop()
    scheduler.shutdown(wait=True)
    if supervisor is not None:
        # The worker notices SIGTERM within a second and then gives its job shutdown_timeout before it
        # parks it; kill it only after that, or the job stays "running" with its attempt counted.
        supervisor.stop(settings.worker.shutdown_timeout + WORKER_STOP_MARGIN_S)
    http.stop()
    index.close()
    log.info("%s", kv(event="stopped"))
    return status
