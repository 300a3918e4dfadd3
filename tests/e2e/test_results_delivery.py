"""End to end: a phantom study in, SR and SC out, to DCMTK storescp and to Orthanc as the PACS."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from pipeline.phantom import CaseOptions, ContrastPhase, LesionClass, WriteOptions, make_study
from tests.integration.test_outbox import StoreSCP
from tests.support.orthanc import OrthancPACS, free_port

HCC_CODE, CYST_CODE = "25370001", "85057007"


def _phantom(out: Path, cls: LesionClass, seed: int) -> tuple[list[Path], dict]:
    opts = CaseOptions(phases=(ContrastPhase.AP, ContrastPhase.PVP), n_slices=24, slice_thickness_mm=5.0,
                       lesion_classes=(cls,), max_lesions=1)
    make_study(out, seed, 0, opts, WriteOptions())
    labels = json.loads(next(out.rglob("labels.json")).read_text())
    return sorted(out.rglob("*.dcm")), labels


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _check_sr(sr_path: Path, labels: dict, code: str) -> None:
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
        sop = region.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        xs, ys = region.value[:, 0], region.value[:, 1]
        if sop in truth_boxes and finding.value == code:
            best = max(best, _box_iou((xs.min(), ys.min(), xs.max(), ys.max()), truth_boxes[sop]))
    assert best > 0.1, "no SR finding of the true class whose region overlaps the true lesion"


@pytest.mark.parametrize("cls, code, seed", [(LesionClass.HCC, HCC_CODE, 7101), (LesionClass.CYST, CYST_CODE, 7102)])
def test_dcmtk_pacs_receives_sr_and_sc(node_factory, tmp_path, cls, code, seed):
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
        _check_sr(sr_path, labels, code)
        _, metrics = node.http("/metrics")
        assert 'liver_node_results_sent_total{result="success"}' in metrics
        assert "liver_node_study_e2e_seconds_count 1.0" in metrics
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
