"""A transient failure (disk full, out of memory) is retried after a delay; any other failure is final."""
from __future__ import annotations

import errno

import pytest

import node.worker as worker_module
from node.cli import cmd_status
from node.config import settings_from_mapping
from node.index import Index
from node.jobs import JobQueue
from node.metrics import NodeMetrics


class ScriptedRunner:
    """Raises the scripted exceptions, one per study analysed."""
    models = []

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)

    def run_study(self, study_uid, series):
        raise self.failures.pop(0)


@pytest.fixture
def worker(tmp_path):
    settings = settings_from_mapping({"node": {"data_dir": str(tmp_path)},
                                      "worker": {"retry_delay": 60.0, "max_attempts": 3}})
    w = worker_module.Worker(settings)
    with w.index.transaction() as c:
        c.execute("INSERT INTO studies (study_uid, state, first_received, last_received) VALUES ('1.2', 'receiving', 0, 0)")
    JobQueue(w.index).enqueue_ready_study("1.2", "complete", 0.0)
    yield w
    w.index.close()


def _job_row(index: Index):
    return index.query("SELECT state, reason, not_before, attempts FROM jobs")[0]


def test_a_full_disk_is_retried_after_a_doubling_delay_then_fails_when_attempts_run_out(worker, monkeypatch, capsys):
    clock = [1000.0]
    monkeypatch.setattr(worker_module.time, "time", lambda: clock[0])
    disk_full = OSError(errno.ENOSPC, "No space left on device")
    worker.runner = ScriptedRunner(disk_full, disk_full, disk_full)
    delays = []
    for attempt in (1, 2):
        job = worker.queue.claim(worker.pid, clock[0])
        assert job is not None and job.attempts == attempt
        worker._run_job(job)
        state, reason, not_before, _ = _job_row(worker.index)
        assert state == "queued" and "No space left on device" in reason
        assert worker.index.scalar("SELECT state FROM studies") == "ready"  # not failed while it waits
        assert worker.queue.claim(worker.pid, not_before - 1) is None  # not before its time
        metrics = NodeMetrics(worker.index)
        assert b"liver_node_jobs_retry_waiting 1.0" in metrics.render()
        cmd_status(worker.settings)
        assert f"retrying jobs: 1 x OSError: [Errno {errno.ENOSPC}] No space left on device" in capsys.readouterr().out
        delays.append(not_before - clock[0])
        clock[0] = not_before
    assert delays == [60.0, 120.0]
    job = worker.queue.claim(worker.pid, clock[0])
    worker._run_job(job)  # the third attempt of three: no more retries
    state, reason, _, attempts = _job_row(worker.index)
    assert (state, attempts) == ("failed", 3) and "No space left on device" in reason
    assert worker.index.scalar("SELECT state FROM studies") == "failed"


def test_a_bad_series_or_a_defect_fails_at_once(worker):
    worker.runner = ScriptedRunner(ValueError("series has inconsistent spacing"))
    worker._run_job(worker.queue.claim(worker.pid, 0.0))
    state, reason, not_before, attempts = _job_row(worker.index)
    assert (state, attempts, not_before) == ("failed", 1, None) and "inconsistent spacing" in reason


def test_which_failures_count_as_transient():
    class OutOfMemoryError(RuntimeError):  # as torch names its CUDA allocator failure
        pass

    assert worker_module.transient_failure(OSError(errno.ENOSPC, "full"))
    assert worker_module.transient_failure(MemoryError())
    assert worker_module.transient_failure(OutOfMemoryError("CUDA out of memory"))
    assert not worker_module.transient_failure(FileNotFoundError(errno.ENOENT, "gone"))
    assert not worker_module.transient_failure(RuntimeError("shape mismatch"))
    assert not worker_module.transient_failure(ValueError("bad header"))


def test_an_index_from_before_retries_gains_the_column(tmp_path):
    import sqlite3

    path = tmp_path / "index.sqlite"
    Index(path).close()
    with sqlite3.connect(path) as db:  # the jobs table as released before not_before existed
        db.execute("ALTER TABLE jobs DROP COLUMN not_before")
    index = Index(path)
    try:
        assert "not_before" in {r[1] for r in index.query("PRAGMA table_info(jobs)")}
    finally:
        index.close()


def test_without_models_studies_wait_in_the_queue_until_the_weights_load(worker, monkeypatch):
    import threading

    loads = []

    def load(settings):
        loads.append(1)
        if len(loads) == 1:  # the weights are broken at start, fixed later by an operator
            raise worker_module.PipelineUnavailable("models cannot be loaded: detector.pt sha256 mismatch")
        return ScriptedRunner(ValueError("series has inconsistent spacing"))

    monkeypatch.setattr(worker_module, "load_pipeline", load)
    monkeypatch.setattr(worker_module, "MODEL_RETRY_S", 1.0)
    probe = worker_module.worker_probe(worker.index)
    seen = {}

    def watch():  # worker.run() installs signal handlers, so it runs in the main thread and this watches
        clock = worker_module.time
        deadline = clock.monotonic() + 20
        while not loads and clock.monotonic() < deadline:
            clock.sleep(0.05)
        clock.sleep(0.3)
        if len(loads) == 1:  # between the failed load and the retry: the study waits, /readyz says why
            seen["state"], seen["probe"] = worker.index.scalar("SELECT state FROM jobs"), probe()
        while worker.index.scalar("SELECT state FROM jobs") == "queued" and clock.monotonic() < deadline:
            clock.sleep(0.05)
        worker.stop.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert worker.run() == 0
    watcher.join(10)
    assert seen["state"] == "queued"
    ok, detail = seen["probe"]
    assert not ok and "sha256 mismatch" in detail
    assert len(loads) == 2
    index = Index(worker.settings.data_dir / "index.sqlite")  # run() closed the worker's
    try:
        state, reason, _, attempts = _job_row(index)
    finally:
        index.close()
    assert (state, attempts) == ("failed", 1) and "inconsistent spacing" in reason  # analysed once loaded
