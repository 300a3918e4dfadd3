"""Retention with the clock injected: what is due goes (files and rows), everything else stays."""
from __future__ import annotations

import shutil

import pytest

from node.index import Index
from node.jobs import JobQueue
from node.retention import DAY_S, RetentionJob, RetentionPolicy
from node.spool import Spool
from tests.support.ctdata import SeriesSpec, uid, write_series


@pytest.fixture
def env(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    index = Index(data / "index.sqlite")
    spool = Spool(data, index, 0)
    yield tmp_path, index, spool
    index.close()


def _receive(tmp_path, spool, name: str) -> str:
    import pydicom

    study = uid("retention", name)
    for f in write_series(tmp_path / name, study, SeriesSpec("AP", 2), rows=16, cols=16):
        temp = spool.incoming / f.name
        shutil.copy(f, temp)
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        spool.store(temp, command_sop_class=ds.SOPClassUID, command_sop_instance=ds.SOPInstanceUID,
                    assoc_id="a", calling_aet="SCU")
    return study


def _complete(index, study: str, ok: bool, at: float) -> None:
    queue = JobQueue(index)
    queue.enqueue_ready_study(study, "quiet_period", at)
    job = queue.claim(1, at)
    queue.finish(job, ok, None if ok else "reason", at)


def test_purges_due_studies_and_keeps_the_rest(env):
    tmp_path, index, spool = env
    t0 = 1_000_000.0
    old_done = _receive(tmp_path, spool, "old-done")
    new_done = _receive(tmp_path, spool, "new-done")
    old_failed = _receive(tmp_path, spool, "old-failed")
    receiving = _receive(tmp_path, spool, "receiving")
    _complete(index, old_done, True, t0)
    _complete(index, new_done, True, t0 + 6 * DAY_S)
    _complete(index, old_failed, False, t0)
    results = spool.root.parent / "results" / spool.study_dir(old_done).name / "rev-1"
    results.mkdir(parents=True)
    (results / "result.json").write_text("{}")
    removed: dict[str, int] = {}
    job = RetentionJob(index, spool, RetentionPolicy(completed_days=7, failed_days=30),
                       on_removed=lambda k, n: removed.__setitem__(k, n), clock=lambda: t0 + 8 * DAY_S)
    purged = job.run_once()
    assert purged.studies == 1 and purged.instances == 2 and purged.result_files == 1
    assert removed["studies"] == 1 and removed["instances"] == 2 and removed["bytes"] > 0
    assert not spool.study_dir(old_done).exists() and not results.exists()
    remaining = {r[0] for r in index.query("SELECT DISTINCT study_uid FROM instances")}
    assert remaining == {new_done, old_failed, receiving}
    assert index.scalar("SELECT COUNT(*) FROM jobs WHERE study_uid=?", (old_done,)) == 0
    # The failed study goes after its own, longer period; receiving studies never.
    job.clock = lambda: t0 + 31 * DAY_S
    assert job.run_once().studies == 2
    assert {r[0] for r in index.query("SELECT study_uid FROM studies")} == {receiving}
    assert index.integrity_ok()


def test_pending_outbox_keeps_the_study(env):
    tmp_path, index, spool = env
    study = _receive(tmp_path, spool, "pending")
    _complete(index, study, True, 0.0)
    with index.transaction() as c:
        c.execute("INSERT INTO outbox (study_uid, revision, sop_instance_uid, sop_class_uid, path, destination,"
                  " state, next_attempt_at, created) VALUES (?, 1, '1.2', '1.2', 'x', 'A@h:1', 'pending', 0, 0)",
                  (study,))
    assert RetentionJob(index, spool, RetentionPolicy(1, 1), clock=lambda: 10 * DAY_S).run_once().studies == 0
