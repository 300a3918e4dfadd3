"""Detector: dataset export, offline configuration, manifest sha256 check, smoke detection."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.detect.detector import Detection, DetectorLoadError, LesionDetector
from pipeline.detect.offline import configure_ultralytics_offline
from pipeline.imaging import window_u8
from pipeline.phantom import CaseOptions, ContrastPhase, LesionBox, LesionClass, render_case, sample_case
from pipeline.train.detector_data import ExportOptions, export_dataset, yolo_lines

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / "weights"


def _box(x1: int, y1: int, x2: int, y2: int) -> LesionBox:
    return LesionBox(1, next(iter(LesionClass)), 0, x1, y1, x2, y2, (x2 - x1) * (y2 - y1))


def test_yolo_lines_normalised_and_tiny_dropped() -> None:
    lines, dropped = yolo_lines([_box(100, 200, 140, 260), _box(10, 10, 12, 13)], 512, 512, 0.5, 4.0)
    assert dropped == 1  # 2x3 px at 512 = 1.5 px at 256
    assert lines == ["0 0.234375 0.449219 0.078125 0.117188"]


def test_export_matches_phantom_boxes(tmp_path: Path) -> None:
    opts = ExportOptions(seed=1000, n_cases=2, imgsz=256, negative_fraction=0.1, val_fraction=0.5,
                         n_slices=12, min_area_px=0.0)
    summary = export_dataset(tmp_path, opts)
    assert summary.n_train > 0 and summary.n_val > 0
    assert "path: " + str(tmp_path.resolve()) in summary.data_yaml.read_text()
    cases = {i: render_case(sample_case(1000, i, CaseOptions(phases=(ContrastPhase.AP, ContrastPhase.PVP),
                                                                 n_slices=12, slice_thickness_mm=5.0)))
             for i in range(2)}
    n_pos = n_neg = 0
    for label in sorted((tmp_path / "labels").rglob("*.txt")):
        _, case_tag, phase, k = label.stem.split("_")
        case = cases[int(case_tag[1:])]
        boxes = case.boxes[int(k)]
        rows = [list(map(float, line.split())) for line in label.read_text().splitlines()]
        assert (tmp_path / "images" / label.parent.name / f"{label.stem}.png").is_file()
        if not boxes:
            assert rows == []
            n_neg += 1
            continue
        n_pos += 1
        assert len(rows) == len(boxes)
        for row, b in zip(rows, boxes):
            assert row[0] == 0
            np.testing.assert_allclose(row[1:], [(b.x1 + b.x2) / 1024, (b.y1 + b.y2) / 1024,
                                                 (b.x2 - b.x1) / 512, (b.y2 - b.y1) / 512], atol=1e-6)
    assert n_pos > 0


def test_offline_configuration_installs_font_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("YOLO_OFFLINE", "YOLO_AUTOINSTALL"):
        monkeypatch.delenv(var, raising=False)
    cfg = configure_ultralytics_offline(REPO / ".yolo")
    assert os.environ["YOLO_OFFLINE"] == "1" and os.environ["YOLO_AUTOINSTALL"] == "0"
    assert os.environ["YOLO_CONFIG_DIR"] == str(cfg)
    font = cfg / "Ultralytics" / "Arial.ttf"
    assert font.is_file() and font.stat().st_size > 10_000
    assert configure_ultralytics_offline(REPO / ".yolo") == cfg  # idempotent
    from ultralytics import settings

    assert settings["sync"] is False


def _write_manifest(d: Path, sha: str) -> None:
    (d / "detector.manifest.toml").write_text(
        f'name = "t"\nversion = "0"\nfile = "detector.pt"\nsha256 = "{sha}"\n'
        "[input]\nimgsz = 256\n[thresholds]\nconf = 0.25\niou = 0.5\nmax_det = 100\n")


def test_from_manifest_refuses_sha_mismatch(tmp_path: Path) -> None:
    (tmp_path / "detector.pt").write_bytes(b"not the model")
    _write_manifest(tmp_path, hashlib.sha256(b"something else").hexdigest())
    with pytest.raises(DetectorLoadError, match="sha256"):
        LesionDetector.from_manifest(tmp_path)


def test_from_manifest_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DetectorLoadError):
        LesionDetector.from_manifest(tmp_path)


def _iou(d: Detection, b: LesionBox) -> float:
    ix = max(0.0, min(d.x2, b.x2) - max(d.x1, b.x1))
    iy = max(0.0, min(d.y2, b.y2) - max(d.y1, b.y1))
    inter = ix * iy
    return inter / ((d.x2 - d.x1) * (d.y2 - d.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter)


def test_smoke_detects_large_lesion() -> None:
    """Uses the committed weights; fails (does not skip) when they are missing."""
    assert (WEIGHTS / "detector.pt").is_file(), "weights/detector.pt missing: train with pipeline.train.detector"
    opts = CaseOptions(phases=(ContrastPhase.AP,), n_slices=40, slice_thickness_mm=5.0)
    for index in range(50):  # held-out seed; first case with a lesion >= 20 mm in-plane
        spec = sample_case(9000, index, opts)
        big = [les for les in spec.lesions if min(les.diameters_mm[:2]) >= 20.0]
        if big:
            break
    else:
        pytest.fail("no phantom case with a lesion >= 20 mm in seed 9000")
    case = render_case(spec)
    lid = big[0].lesion_id
    k, box = max(((k, b) for k, bs in enumerate(case.boxes) for b in bs if b.lesion_id == lid),
                 key=lambda kb: kb[1].area_px)
    det = LesionDetector.from_manifest(WEIGHTS, device="cpu")
    assert det.name == "liver-lesion-detector" and len(det.sha256) == 64
    [found] = det.detect(window_u8(case.volumes[ContrastPhase.AP][k])[None])
    assert any(_iou(d, box) > 0.1 for d in found), f"no detection overlaps {box}: {found}"
