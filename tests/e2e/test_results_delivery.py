"""End to end: a phantom study in, SR and SC out, to DCMTK storescp and to Orthanc as the PACS."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from node.index import Index
from pipeline.lesions import box_iou
from pipeline.phantom import LesionClass
from pipeline.report.codes import load_codes
from pipeline.report.sr import result_uid, uid_key
from pipeline.result import ModelInfo
from tests.integration.test_outbox import StoreSCP
from tests.support.orthanc import OrthancPACS, free_port
from tests.support.phantoms import write_clear_case

# Any of the six coded lesion classes: whether one case gets its true class is the model's accuracy,
# checked in tests/integration/test_shipped_weights.py and the held-out report; here the check is
# that the node's finding reaches the PACS as a coded lesion placed on the true lesion.
LESION_CODES = {concept.value for concept in load_codes().classes.values()}


def _phantom(out: Path, cls: LesionClass, seed: int) -> tuple[list[Path], dict]:
    study = write_clear_case(out, cls, seed)
    return sorted(study.folder.rglob("*.dcm")), json.loads(study.labels_path.read_text())


def _check_sr(sr_path: Path, labels: dict) -> None:
    sr = hd.sr.srread(sr_path)
    groups = sr.content.get_planar_roi_measurement_groups()
    assert groups, "no lesion in the SR"
    truth_boxes = {}
    for entries in labels["boxes"].values():
        for e in entries:
            truth_boxes[e["sop_instance_uid"]] = (e["x1"], e["y1"], e["x2"], e["y2"])
    best = 0.0
    for g in groups:
        finding = g.finding_type
        region = g.roi
        sop = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        xs, ys = region.value[:, 0], region.value[:, 1]
        if sop in truth_boxes and finding.value in LESION_CODES:
            best = max(best, box_iou((xs.min(), ys.min(), xs.max(), ys.max()), truth_boxes[sop]))
    assert best > 0.1, "no coded lesion finding in the SR whose region overlaps the true lesion"


@pytest.mark.parametrize("cls, seed", [(LesionClass.HCC, 7101), (LesionClass.CYST, 7102)])
def test_dcmtk_pacs_receives_sr_and_sc(node_factory, tmp_path, cls, seed):
    port = free_port()
    pacs = StoreSCP(tmp_path / "pacs", port)
    try:
        node = node_factory("--destination", f"PACS@127.0.0.1:{port}", "--quiet-period", "3")
        files, labels = _phantom(tmp_path / "study", cls, seed)
        res = subprocess.run(["storescu", "-aec", "LIVERNODE", "127.0.0.1", str(node.dicom_port), *map(str, files)],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-1000:]

        def received():
            got = [pydicom.dcmread(p, stop_before_pixels=True) for p in (tmp_path / "pacs").iterdir()]
            return got if any(d.Modality == "SR" for d in got) and any(d.Modality == "OT" for d in got) else None

        got = node.wait_for(received, timeout=240, interval=1.0)
        assert all(d.StudyInstanceUID == labels["study_instance_uid"] for d in got)
        sr_path = next(p for p in (tmp_path / "pacs").iterdir() if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SR")
        _check_sr(sr_path, labels)
        # its UID carries this data directory's salt (a rebuilt directory cannot reissue it)
        result_json = json.loads(next((node.data_dir / "results").rglob("result.json")).read_text())
        salt = Index(node.data_dir / "index.sqlite").uid_salt()
        key = uid_key([ModelInfo(**m) for m in result_json["models"]], salt)
        sr_uid = pydicom.dcmread(sr_path, stop_before_pixels=True).SOPInstanceUID
        assert sr_uid == result_uid("sr", labels["study_instance_uid"], 1, key, "")
        # its evidence is every instance of the series the analysis used, not only the key slices
        used = {s["series_uid"] for s in result_json["phases"] if s["used"]}
        sent = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        sr = pydicom.dcmread(sr_path, stop_before_pixels=True)
        evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                    for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
        assert used and evidence == {d.SOPInstanceUID for d in sent if d.SeriesInstanceUID in used}
        _, metrics = node.http("/metrics")
        assert 'liver_node_results_sent_total{result="success"}' in metrics
        assert "liver_node_study_e2e_seconds_count 1.0" in metrics
        # what the analysis found, counted for drift monitoring (the worker wrote it, the receiver serves it)
        assert 'liver_node_analyses_total{outcome="lesion"} 1.0' in metrics
        assert f'liver_node_case_class_total{{class="{result_json["case"]["class"]}"}} 1.0' in metrics
        assert 'liver_node_phase_mode_total{mode="ap_pvp"} 1.0' in metrics
        assert f"liver_node_lesions_reported_total {float(len(result_json['lesions']))}" in metrics
    finally:
        pacs.stop()


def test_orthanc_round_trip(node_factory, tmp_path):
    node_port = free_port()
    orthanc = OrthancPACS(tmp_path / "orthanc", {"livernode": ("LIVERNODE", "127.0.0.1", node_port)}).start()
    try:
        node = node_factory("--quiet-period", "3", "--port", str(node_port),
                            "--destination", f"ORTHANC@127.0.0.1:{orthanc.port}")
        files, labels = _phantom(tmp_path / "study", LesionClass.HCC, 7103)
        orthanc.upload(files)
        studies = orthanc.get("/studies")
        assert len(studies) == 1
        # The PACS routes the study to the node over DICOM...
        orthanc.post("/modalities/livernode/store", {"Resources": studies, "Synchronous": True})

        def series_modalities():
            found = [s["MainDicomTags"].get("Modality") for s in orthanc.get(f"/studies/{studies[0]}/series") or []]
            return found if "SR" in found and "OT" in found else None

        # ...and the SR and SC come back into the same study.
        modalities = node.wait_for(series_modalities, timeout=240, interval=1.0)
        assert modalities.count("CT") == 2
    finally:
        orthanc.stop()


def _sr_files(folder: Path) -> list[pydicom.Dataset]:
    """The SRs storescp has finished writing: a poll can land while it writes one, which then reads as
    truncated; the next poll reads it whole (a file that stays unreadable times the wait out)."""
    out = []
    for p in folder.iterdir():
        try:
            out.append(pydicom.dcmread(p))
        except (pydicom.errors.InvalidDicomError, EOFError):
            continue
    return [d for d in out if d.Modality == "SR"]


def test_late_arrival_gets_an_amended_sr(node_factory, tmp_path):
    port = free_port()
    pacs = StoreSCP(tmp_path / "pacs", port)
    try:
        node = node_factory("--destination", f"PACS@127.0.0.1:{port}", "--quiet-period", "3")
        files, labels = _phantom(tmp_path / "study", LesionClass.HCC, 7104)
        # Hold back the last slice of one series: the study is complete without it (no gap), so it is
        # analysed and delivered, and the held-back slice then arrives late.
        headers = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in files}
        one_series = headers[files[0]].SeriesInstanceUID
        late = max((p for p in files if headers[p].SeriesInstanceUID == one_series),
                   key=lambda p: float(headers[p].ImagePositionPatient[2]))
        send = ["storescu", "-aec", "LIVERNODE", "127.0.0.1", str(node.dicom_port)]
        early = [str(p) for p in files if p != late]
        assert subprocess.run([*send, *early], capture_output=True, timeout=300).returncode == 0
        first = node.wait_for(lambda: _sr_files(tmp_path / "pacs") or None, timeout=240, interval=1.0)
        assert len(first) == 1
        assert subprocess.run([*send, str(late)], capture_output=True, timeout=60).returncode == 0

        srs = node.wait_for(lambda: (s if len(s := _sr_files(tmp_path / "pacs")) == 2 else None),
                            timeout=240, interval=1.0)
        old = next(s for s in srs if s.SOPInstanceUID == first[0].SOPInstanceUID)
        new = next(s for s in srs if s.SOPInstanceUID != first[0].SOPInstanceUID)
        pred = new.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert pred.ReferencedSOPInstanceUID == old.SOPInstanceUID
        assert new.StudyInstanceUID == old.StudyInstanceUID == labels["study_instance_uid"]

        def tracking_uids(ds):
            groups = hd.sr.Comprehensive3DSR.from_dataset(ds).content.get_planar_roi_measurement_groups()
            return sorted(str(g.tracking_uid) for g in groups)

        assert tracking_uids(new) == tracking_uids(old) and tracking_uids(new)
    finally:
        pacs.stop()
