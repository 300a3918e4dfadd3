"""Spool and index without the network: validation, placement, orphan recovery."""
from __future__ import annotations

import shutil
import stat

import pytest

from node.index import Index
from node.spool import InvalidIdentifier, MissingIdentifiers, Spool, TruncatedPixelData, inspect_instance
from tests.support.ctdata import SeriesSpec, ct_instance, dataset_sha256, uid


def _received(tmp_path, name: str, **changes):
    """A file laid out like pynetdicom's chunked receive (preamble, file meta, data set)."""
    ds = ct_instance(uid("spool", name), uid("spool", name, "s"), 0, SeriesSpec("AP", 1), rows=32, cols=32)
    for k, v in changes.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, ds


@pytest.fixture
def spool(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    index = Index(data / "index.sqlite")
    yield Spool(data, index, min_free_bytes=0)
    index.close()


def test_store_places_file_by_hash_with_private_permissions(spool, tmp_path):
    path, ds = _received(tmp_path, "a")
    digest = dataset_sha256(path)
    temp = spool.incoming / "x.dcm"
    shutil.copy(path, temp)
    outcome = spool.store(temp, command_sop_class=ds.SOPClassUID, command_sop_instance=ds.SOPInstanceUID,
                          assoc_id="t-1", calling_aet="SCU")
    assert outcome.label == "stored"
    final = spool.study_dir(ds.StudyInstanceUID) / f"{digest}.dcm"
    assert final.exists() and stat.S_IMODE(final.stat().st_mode) == 0o600
    assert ds.StudyInstanceUID not in str(final)  # paths come from hashes, never from UIDs
    assert not any(spool.incoming.iterdir())


@pytest.mark.parametrize("changes, error", [
    ({"SeriesInstanceUID": None}, MissingIdentifiers),
    ({"SOPInstanceUID": "1.2.3/../4"}, InvalidIdentifier),
    ({"PixelData": b"\x00" * 100}, TruncatedPixelData),
])
def test_inspect_names_the_problem(tmp_path, changes, error):
    path, _ = _received(tmp_path, "bad", **changes)
    with pytest.raises(error):
        inspect_instance(path)


def test_orphan_files_are_reindexed_at_start(spool, tmp_path):
    path, ds = _received(tmp_path, "orphan")
    temp = spool.incoming / "y.dcm"
    shutil.copy(path, temp)
    spool.store(temp, command_sop_class=ds.SOPClassUID, command_sop_instance=ds.SOPInstanceUID,
                assoc_id="t-1", calling_aet="SCU")
    # Simulate a power cut that kept the fsynced file but lost the index commit.
    with spool.index.transaction() as c:
        c.execute("DELETE FROM instances")
    assert spool.reindex_orphans() == 1
    rows = spool.index.query("SELECT sop_instance_uid, sha256 FROM instances")
    assert [(r[0], r[1]) for r in rows] == [(ds.SOPInstanceUID, dataset_sha256(path))]
    assert spool.reindex_orphans() == 0


def test_a_series_scanned_across_midnight_starts_before_it(spool, tmp_path):
    """Its slices arrive in any order; the start is 23:59:40, not 00:00:04 (text comparison gave that)."""
    study = uid("spool", "midnight")
    for n, (i, t) in enumerate([(1, "000004"), (0, "235940"), (2, "000002")]):
        ds = ct_instance(study, uid(study, "s"), i, SeriesSpec("AP", 3), rows=16, cols=16)
        ds.AcquisitionTime = t
        path = tmp_path / f"m{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        temp = spool.incoming / path.name
        shutil.copy(path, temp)
        spool.store(temp, command_sop_class=ds.SOPClassUID, command_sop_instance=ds.SOPInstanceUID,
                    assoc_id="a", calling_aet="SCU")
    assert spool.index.scalar("SELECT acquisition_time FROM series") == "235940"


def test_enhanced_ct_series_fields_come_from_its_sequences(tmp_path):
    """What the node indexes for phase labelling, from an Enhanced CT instance and from its classic twin."""
    import pydicom

    from node.spool import series_fields
    from pipeline.phantom import CaseOptions, LesionClass, WriteOptions, make_study
    from pipeline.phases import tm_before

    opts = CaseOptions(n_slices=3, lesion_classes=(LesionClass.HCC,), max_lesions=1)
    fields = {}
    for name, write in (("classic", WriteOptions()), ("enhanced", WriteOptions(enhanced=True))):
        make_study(tmp_path / name, 5, 0, opts, write)
        by_series = {}
        for f in sorted((tmp_path / name).rglob("*.dcm")):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            if "ImagePositionPatient" not in ds and "PerFrameFunctionalGroupsSequence" not in ds or "SeriesInstanceUID" not in ds:
                continue
            by_series.setdefault((ds.get("SeriesNumber"), ds.get("SeriesDescription", "")), []).append(
                series_fields(ds))
        fields[name] = by_series
    assert fields["enhanced"].keys() == fields["classic"].keys()
    for description, (enhanced,) in fields["enhanced"].items():
        classic = fields["classic"][description]
        earliest = classic[0].acquisition_time
        for f in classic[1:]:
            earliest = f.acquisition_time if tm_before(f.acquisition_time, earliest) else earliest
        assert float(enhanced.acquisition_time) == float(earliest), description
        assert enhanced.contrast_start_time == classic[0].contrast_start_time
        assert (enhanced.contrast_agent is None) == (classic[0].contrast_agent is None)
        assert enhanced.orientation is not None and [float(v) for v in enhanced.orientation.split("\\")] == \
            [float(v) for v in classic[0].orientation.split("\\")]


def _store_copy(spool, tmp_path, name: str, study: str, series: str, number: int) -> None:
    ds = ct_instance(study, series, number, SeriesSpec("AP", 3), rows=16, cols=16)
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    temp = spool.incoming / path.name
    shutil.copy(path, temp)
    spool.store(temp, command_sop_class=ds.SOPClassUID, command_sop_instance=ds.SOPInstanceUID,
                assoc_id=name, calling_aet="SCU")


def test_a_study_reopened_after_analysis_waits_from_its_new_first_instance(spool, tmp_path):
    study = uid("spool", "reopen")
    _store_copy(spool, tmp_path, "a", study, uid("spool", "reopen", "s1"), 0)
    index = spool.index
    with index.transaction() as c:  # analysed hours ago
        c.execute("UPDATE studies SET first_received=first_received-7200, state='done' WHERE study_uid=?", (study,))
    old = index.scalar("SELECT first_received FROM studies WHERE study_uid=?", (study,))
    _store_copy(spool, tmp_path, "b", study, uid("spool", "reopen", "s2"), 0)  # a series sent later
    first, last, state = index.query("SELECT first_received, last_received, state FROM studies WHERE study_uid=?",
                                     (study,))[0]
    assert state == "receiving" and first == last and first - old > 7000
    _store_copy(spool, tmp_path, "c", study, uid("spool", "reopen", "s2"), 1)  # while receiving: kept
    assert index.scalar("SELECT first_received FROM studies WHERE study_uid=?", (study,)) == first


def test_one_series_uid_in_two_studies_keeps_a_row_and_its_own_instances_in_each(spool, tmp_path, caplog):
    from apscheduler.schedulers.background import BackgroundScheduler

    from node.jobs import JobQueue
    from node.readiness import ReadinessPolicy
    from node.studies import StudyAssembler
    from node.worker import study_series
    from pipeline.phases import PhaseRules

    a, b, series = uid("spool", "move-a"), uid("spool", "move-b"), uid("spool", "move", "s")
    _store_copy(spool, tmp_path, "a0", a, series, 0)
    _store_copy(spool, tmp_path, "a1", a, series, 1)
    # the PACS reconciled the patient: the same series, same Series UID, re-sent under study b,
    # and then one more instance of study a arrives: each study must still find its own series
    with caplog.at_level("WARNING", logger="node.spool"):
        _store_copy(spool, tmp_path, "b0", b, series, 0)
    _store_copy(spool, tmp_path, "a2", a, series, 2)
    assert "event=series_in_two_studies" in caplog.text
    for study, n in ((a, 3), (b, 1)):
        found = study_series(spool.index, spool, study)
        assert [s.series_uid for s in found] == [series] and len(found[0].paths) == n
        assert all(spool.study_dir(study) in p.parents for p in found[0].paths)
    # labelling one study's phases leaves the other study's row alone
    with spool.index.transaction() as c:
        c.execute("UPDATE series SET phase='PVP' WHERE study_uid=?", (b,))
    policy = ReadinessPolicy(quiet_period_s=3600, max_wait_s=7200, required_phases=frozenset())
    StudyAssembler(spool.index, JobQueue(spool.index), BackgroundScheduler(), policy, PhaseRules()).label_phases(a)
    phases = dict(spool.index.query("SELECT study_uid, phase FROM series"))
    assert phases[b] == "PVP" and phases[a] == "AP"


def test_an_index_keyed_by_series_uid_alone_is_rebuilt_and_gives_back_moved_series(tmp_path):
    import sqlite3

    from node.index import SCHEMA, SERIES_INDEXES, SERIES_TABLE

    db = tmp_path / "index.sqlite"
    old_series = SERIES_TABLE.format(name="series").replace("series_uid TEXT NOT NULL,", "series_uid TEXT PRIMARY KEY,")
    old_series = old_series.replace(",\n    PRIMARY KEY (study_uid, series_uid)", "")
    old = sqlite3.connect(db)
    old.executescript(SCHEMA.replace(SERIES_TABLE.format(name="series"), old_series).replace(SERIES_INDEXES, ""))
    assert [r[1] for r in old.execute("PRAGMA table_info(series)") if r[5]] == ["series_uid"]
    # a series that moved from study a to study b under the old key: one row, instances in both
    old.execute("INSERT INTO series (series_uid, study_uid, modality, phase) VALUES ('1.2.3', 'b', 'CT', 'AP')")
    for study in ("a", "a", "b"):
        old.execute("INSERT INTO instances (sop_instance_uid, sop_class_uid, series_uid, study_uid, path, sha256,"
                    " size, transfer_syntax, received_at) VALUES (?, 'c', '1.2.3', ?, 'p', ?, 1, 't', 0)",
                    (f"{study}.{old.total_changes}", study, str(old.total_changes)))
    old.commit()
    old.close()
    index = Index(db)
    try:
        assert [r[1] for r in sorted(index.query("PRAGMA table_info(series)"), key=lambda r: r[5]) if r[5]] == [
            "study_uid", "series_uid"]
        rows = {r["study_uid"]: (r["series_uid"], r["modality"]) for r in index.query("SELECT * FROM series")}
        assert rows == {"a": ("1.2.3", "CT"), "b": ("1.2.3", "CT")}
        assert index.scalar("SELECT COUNT(*) FROM sqlite_master WHERE name='series_by_uid'") == 1
    finally:
        index.close()
    Index(db).close()  # a second open finds it rebuilt and leaves it
