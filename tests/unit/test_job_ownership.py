"""Job ownership across worker deaths: a live worker's job is not run twice, and only its owner records it."""
from __future__ import annotations

import json

import pytest

from node.index import Index
from node.jobs import JobQueue
from node.metrics import NodeMetrics


@pytest.fixture
def index(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    with index.transaction() as c:
        c.execute("INSERT INTO studies (study_uid, state, first_received, last_received) VALUES ('1.2', 'receiving', 0, 0)")
    yield index
    index.close()


def _heartbeat(index, pid: int, at: float) -> None:
    with index.transaction() as c:
        c.execute("INSERT INTO workers (pid, started, heartbeat, models_loaded, status) VALUES (?, ?, ?, 1, 'busy')"
                  " ON CONFLICT(pid) DO UPDATE SET heartbeat=excluded.heartbeat", (pid, at, at))


def test_recovery_leaves_a_live_workers_job_and_requeues_a_dead_ones(index):
    queue = JobQueue(index)
    queue.enqueue_ready_study("1.2", "complete", 100.0)
    job = queue.claim(111, 100.0)  # an orphan of a killed receiver, still running it
    _heartbeat(index, 111, 195.0)
    assert queue.recover_interrupted(200.0, stale_s=15.0, idle_pid=222) == (0, 0)
    assert index.scalar("SELECT state FROM jobs") == "running"
    assert queue.recover_interrupted(200.0) == (1, 0)  # without heartbeats (the old rule): requeued
    job = queue.claim(111, 201.0)
    assert queue.recover_interrupted(230.0, stale_s=15.0, idle_pid=222) == (1, 0)  # its heartbeat went stale
    # the new owner claims it; the old one's late outcome is dropped, the owner's recorded
    newer = queue.claim(222, 231.0)
    assert not queue.finish(job, False, "orphan failed", 240.0, worker_pid=111)
    assert index.scalar("SELECT state FROM jobs") == "running"
    assert queue.finish(newer, True, None, 250.0, worker_pid=222)
    assert index.scalar("SELECT state FROM jobs") == "done"
    assert index.scalar("SELECT state FROM studies") == "done"


def test_an_idle_worker_recovers_a_job_left_in_its_own_reused_pid(index):
    queue = JobQueue(index)
    queue.enqueue_ready_study("1.2", "complete", 100.0)
    queue.claim(333, 100.0)
    _heartbeat(index, 333, 199.0)  # the new worker with the dead one's PID is alive, and idle
    assert queue.recover_interrupted(200.0, stale_s=15.0, idle_pid=333) == (1, 0)


def test_a_restart_does_not_replay_earlier_stage_timings(index):
    queue = JobQueue(index)
    queue.enqueue_ready_study("1.2", "complete", 100.0)
    queue.finish(queue.claim(1, 100.0), True, None, 101.0, {"detect": 2.0})

    def observed(metrics: NodeMetrics) -> float:
        metrics.collect_worker()
        return sum(s.value for m in metrics.stage_seconds.collect() for s in m.samples if s.name.endswith("_count"))

    assert observed(NodeMetrics(index)) == 0.0  # finished before this process started
    metrics = NodeMetrics(index)
    with index.transaction() as c:
        c.execute("UPDATE studies SET state='receiving'")
    queue.enqueue_ready_study("1.2", "complete", 200.0)
    queue.finish(queue.claim(1, 200.0), True, None, 201.0, {"detect": 1.0, "classify": 0.5})
    assert observed(metrics) == 2.0
    assert json.loads(index.scalar("SELECT timings FROM jobs ORDER BY id DESC LIMIT 1"))["classify"] == 0.5


def test_a_hung_analysis_fails_its_study_and_restarts_the_worker(tmp_path, monkeypatch):
    """A thread cannot be killed: past worker.job_timeout the study is failed and the worker exits non-zero,
    so its supervisor starts a fresh one and the queue behind the hung study moves on."""
    import threading

    import node.worker as worker_module
    from node.config import settings_from_mapping

    release = threading.Event()

    class HungRunner:
        models = []

        def run_study(self, study_uid, series):
            release.wait(30)  # a stuck read or GPU call
            raise RuntimeError("released by the test")

    monkeypatch.setattr(worker_module, "load_pipeline", lambda settings: HungRunner())
    settings = settings_from_mapping({"node": {"data_dir": str(tmp_path)},
                                      "worker": {"job_timeout": 1.5, "poll_interval": 0.1}})
    index = Index(tmp_path / "index.sqlite")
    with index.transaction() as c:
        c.execute("INSERT INTO studies (study_uid, state, first_received, last_received) VALUES ('1.2', 'receiving', 0, 0)")
    JobQueue(index).enqueue_ready_study("1.2", "complete", 0.0)
    try:
        assert worker_module.Worker(settings).run() == 3
        state, reason = index.query("SELECT state, reason FROM jobs")[0]
        assert state == "failed" and "worker.job_timeout (1.5 s)" in reason
        assert index.scalar("SELECT state FROM studies") == "failed"
    finally:
        release.set()
        index.close()


def test_a_newer_revision_supersedes_a_queued_older_one(index):
    """The older revision's analysis would be out of date, and its report would reach the PACS after the
    newer one's (a retry waiting out a full disk made that possible)."""
    queue = JobQueue(index)
    queue.enqueue_ready_study("1.2", "complete", 100.0)
    first = queue.claim(1, 100.0)
    assert queue.retry_later(first, "OSError: [Errno 28] No space left on device", 160.0, 1)
    with index.transaction() as c:  # a late instance reopens the study
        c.execute("UPDATE studies SET state='receiving'")
    queue.enqueue_ready_study("1.2", "quiet_period", 110.0)
    assert [tuple(r) for r in index.query("SELECT revision, state, reason FROM jobs ORDER BY id")] == [
        (1, "superseded", "superseded by revision 2"), (2, "queued", None)]
    assert queue.claim(1, 200.0).revision == 2
    assert queue.claim(1, 200.0) is None  # revision 1 never runs
    assert index.counts_by_state("jobs")["superseded"] == 1


def test_a_retried_older_job_finishing_last_still_reports_its_timings(index):
    queue = JobQueue(index)
    metrics = NodeMetrics(index)
    queue.enqueue_ready_study("1.2", "complete", 100.0)
    older = queue.claim(1, 100.0)
    with index.transaction() as c:
        c.execute("INSERT INTO studies (study_uid, state, first_received, last_received) VALUES ('1.3', 'receiving', 0, 0)")
    queue.enqueue_ready_study("1.3", "complete", 101.0)
    newer = queue.claim(2, 101.0)
    queue.finish(newer, True, None, 102.0, {"detect": 1.0}, worker_pid=2)
    metrics.collect_worker()
    queue.finish(older, True, None, 103.0, {"detect": 2.0}, worker_pid=1)  # the lower id finishes later
    metrics.collect_worker()
    count = sum(s.value for m in metrics.stage_seconds.collect() for s in m.samples if s.name.endswith("_count"))
    assert count == 2.0


def test_findings_are_counted_once_by_outcome_class_and_phases_and_a_restart_does_not_replay_them(index):
    from prometheus_client.parser import text_string_to_metric_families

    def samples(metrics: NodeMetrics) -> dict[tuple, float]:
        metrics.collect_worker()
        return {(s.name, tuple(s.labels.values())): s.value
                for f in text_string_to_metric_families(metrics.render().decode())
                for s in f.samples if s.name.startswith(("liver_node_analyses", "liver_node_case_class",
                                                         "liver_node_phase_mode", "liver_node_lesions_reported"))
                and s.name.endswith("_total")}

    queue = JobQueue(index)
    metrics = NodeMetrics(index)
    assert samples(metrics)[("liver_node_analyses_total", ("failed",))] == 0.0  # every label exists from the start
    runs = [({"status": "ok", "phase_mode": "AP+PVP", "lesions": 2, "case_class": "HCC"}, True),
            ({"status": "ok", "phase_mode": "PVP only", "lesions": 0, "case_class": None}, True),
            ({"status": "not_analysed", "phase_mode": None, "lesions": 0, "case_class": None}, False),
            (None, False)]  # the analysis raised: no result
    for i, (findings, ok) in enumerate(runs):
        study = f"1.2.{i + 10}"
        with index.transaction() as c:
            c.execute("INSERT INTO studies (study_uid, state, first_received, last_received)"
                      " VALUES (?, 'receiving', 0, 0)", (study,))
        queue.enqueue_ready_study(study, "complete", 100.0 + i)
        queue.finish(queue.claim(1, 100.0 + i), ok, None if ok else "x", 101.0 + i, {"detect": 1.0}, findings=findings)
    got = samples(metrics)
    assert {k[1][0]: v for k, v in got.items() if k[0] == "liver_node_analyses_total"} == {
        "lesion": 1.0, "no_lesion": 1.0, "not_analysed": 1.0, "failed": 1.0}
    assert got[("liver_node_case_class_total", ("HCC",))] == 1.0
    assert sum(v for k, v in got.items() if k[0] == "liver_node_case_class_total") == 1.0
    assert got[("liver_node_phase_mode_total", ("ap_pvp",))] == 1.0 and got[("liver_node_phase_mode_total", ("pvp_only",))] == 1.0
    assert got[("liver_node_lesions_reported_total", ())] == 2.0
    assert samples(metrics) == got  # a second scrape counts nothing again
    assert samples(NodeMetrics(index))[("liver_node_analyses_total", ("lesion",))] == 0.0  # nor does a restart
