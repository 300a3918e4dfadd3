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


def test_a_late_instance_stored_after_the_selection_is_not_purged(env):
    """An association stores (and acknowledges) an instance of a done study between retention's query and
    its delete: the study is receiving again, so it is skipped and nothing acknowledged is lost."""
    import pydicom

    tmp_path, index, spool = env
    t0 = 1_000_000.0
    study = _receive(tmp_path, spool, "late")
    _complete(index, study, True, t0)
    (late,) = write_series(tmp_path / "late-pvp", study, SeriesSpec("PVP", 1, number=3), rows=16, cols=16)
    job = RetentionJob(index, spool, RetentionPolicy(7, 30), clock=lambda: t0 + 8 * DAY_S)
    select = job.due_studies

    def select_then_late_arrival():
        due = select()
        temp = spool.incoming / late.name
        shutil.copy(late, temp)
        ds = pydicom.dcmread(late, stop_before_pixels=True)
        assert not spool.store(temp, command_sop_class=ds.SOPClassUID, command_sop_instance=ds.SOPInstanceUID,
                               assoc_id="b", calling_aet="SCU").duplicate
        return due

    job.due_studies = select_then_late_arrival
    assert job.run_once().studies == 0
    sop = pydicom.dcmread(late, stop_before_pixels=True).SOPInstanceUID
    assert index.scalar("SELECT COUNT(*) FROM instances WHERE sop_instance_uid=?", (sop,)) == 1
    assert index.scalar("SELECT state FROM studies WHERE study_uid=?", (study,)) == "receiving"
    assert len(list(spool.study_dir(study).glob("*.dcm"))) == 3


def test_stale_partial_receptions_are_swept_and_live_ones_kept(env):
    import os

    tmp_path, index, spool = env
    stale, live = spool.incoming / "tmpstale.dcm", spool.incoming / "tmplive.dcm"
    for p in (stale, live):
        p.write_bytes(b"\0" * 132)
    old = os.stat(stale).st_mtime - 3600
    os.utime(stale, (old, old))
    removed: dict[str, int] = {}
    job = RetentionJob(index, spool, RetentionPolicy(7, 30), on_removed=lambda k, n: removed.__setitem__(k, n),
                       stale_incoming_s=600)
    job.run_once()
    assert not stale.exists() and live.exists() and removed == {"partial_receptions": 1}


def test_a_study_received_again_after_its_purge_gets_a_new_revision(env):
    """Result UIDs derive from (study, revision, models): restarting at revision 1 would reuse the first
    delivery's UIDs, which a PACS that keeps the first copy of a UID would silently ignore."""
    tmp_path, index, spool = env
    study = _receive(tmp_path, spool, "again")
    _complete(index, study, True, 0.0)
    assert index.scalar("SELECT revision FROM studies WHERE study_uid=?", (study,)) == 1
    assert RetentionJob(index, spool, RetentionPolicy(1, 1), clock=lambda: 10 * DAY_S).run_once().studies == 1
    assert study not in str(index.query("SELECT * FROM purged_revisions"))  # only a hash outlives it
    assert _receive(tmp_path, spool, "again") == study
    assert JobQueue(index).enqueue_ready_study(study, "complete", 11 * DAY_S) is not None
    assert index.scalar("SELECT revision FROM studies WHERE study_uid=?", (study,)) == 2
