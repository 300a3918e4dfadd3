"""Result objects: the per-data-directory salt of their UIDs (node.index ``node_identity``) and the SR's evidence."""
from __future__ import annotations

import sqlite3

from node.index import Index


def test_a_new_data_directory_gets_its_own_salt_and_keeps_it(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = Index(tmp_path / "a" / "index.sqlite").uid_salt()
    assert len(first) == 32 and int(first, 16) >= 0
    assert Index(tmp_path / "a" / "index.sqlite").uid_salt() == first  # a restart, a second process
    assert Index(tmp_path / "b" / "index.sqlite").uid_salt() != first  # a rebuilt directory


def test_a_database_from_before_the_salt_keeps_unsalted_uids(tmp_path):
    """A job half delivered by the old version must finish under the UIDs it already sent."""
    db = tmp_path / "index.sqlite"
    Index(db).close()
    with sqlite3.connect(db) as conn:  # as the old version left it: jobs, and no node_identity table
        conn.execute("DROP TABLE node_identity")
        conn.execute("INSERT INTO jobs (study_uid, revision, state, created) VALUES ('1.2.3', 1, 'running', 0)")
    assert Index(db).uid_salt() == ""
    assert Index(db).uid_salt() == ""


def test_sr_evidence_sources_are_the_images_analysed(tmp_path):
    """Localizers, non-images and our own overlays routed back are no evidence of the analysis."""
    from pydicom.uid import SecondaryCaptureImageStorage

    from pipeline.analyzer import SeriesInput
    from pipeline.outputs import _sources
    from pipeline.result import SeriesUse, StudyResult
    from tests.support.ctdata import SeriesSpec, ct_instance, uid

    study, series = uid("ev", "study"), uid("ev", "series")
    spec = SeriesSpec(slices=4)
    paths = []
    for i in range(5):
        ds = ct_instance(study, series, i, spec, rows=8, cols=8)
        if i == 3:
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        if i == 4:
            ds.SOPClassUID = SecondaryCaptureImageStorage
        paths.append(tmp_path / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    result = StudyResult(study, "ok", series=[SeriesUse(series, "AP", "test", True)])
    found = _sources(result, [SeriesInput(series, "AP", "test", (*paths, tmp_path / "junk.dcm"))])
    assert set(found) == {uid(series, i, "sop") for i in range(3)}
    path, header = found[uid(series, 0, "sop")]
    assert path == paths[0] and "PatientName" not in header and header.StudyInstanceUID == study  # UIDs only
