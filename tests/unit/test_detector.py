"""Detector: dataset export, offline configuration, manifest sha256 check, checkpoint loading and inference."""
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
from pipeline.train.detector_data import (ExportOptions, boxes_in_window, crop_window, export_dataset,
                                         yolo_lines)

REPO = Path(__file__).resolve().parents[2]


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


def test_crop_window_holds_the_chosen_box_and_stays_inside_the_slice() -> None:
    rng = np.random.default_rng(0)
    for box in (_box(100, 200, 140, 260), _box(0, 0, 10, 10), _box(500, 490, 512, 512)):
        for _ in range(50):
            x0, y0 = crop_window([box], 512, 512, 320, rng)
            assert 0 <= x0 <= 192 and 0 <= y0 <= 192
            assert x0 <= box.x1 and box.x2 <= x0 + 320 and y0 <= box.y1 and box.y2 <= y0 + 320
    x0, y0 = crop_window([], 512, 512, 320, rng)
    assert 0 <= x0 <= 192 and 0 <= y0 <= 192


def test_boxes_in_window_shift_clip_and_drop_mostly_cut_boxes() -> None:
    inside, half_cut, sliver, outside = (_box(110, 120, 130, 150), _box(90, 100, 110, 120),
                                         _box(95, 100, 101, 110), _box(0, 0, 20, 20))
    kept, dropped = boxes_in_window([inside, half_cut, sliver, outside], 100, 100, 64, 0.4)
    assert [(b.x1, b.y1, b.x2, b.y2) for b in kept] == [(10, 20, 30, 50), (0, 0, 10, 20)]  # half_cut: 50% kept
    assert dropped == 1  # the sliver (1/6 inside); wholly outside boxes are neither kept nor counted


@pytest.mark.parametrize(("crop", "upsample", "window"), [(160, 1.0, 160), (120, 1.5, 80)], ids=["native", "upsampled"])
def test_crop_export_labels_are_source_boxes_scaled_by_the_upsample_factor(tmp_path: Path, crop: int, upsample: float,
                                                                          window: int) -> None:
    opts = ExportOptions(seed=1000, n_cases=2, crop=crop, upsample=upsample, negative_fraction=0.2, val_fraction=0.5,
                         n_slices=12, min_area_px=0.0)
    assert opts.window == window  # the native window that is resized to crop px
    summary = export_dataset(tmp_path, opts)
    assert summary.n_boxes > 0
    from PIL import Image  # noqa: PLC0415

    for png in (tmp_path / "images").rglob("*.png"):
        assert Image.open(png).size == (crop, crop)
    cases = {i: render_case(sample_case(1000, i, CaseOptions(phases=(ContrastPhase.AP, ContrastPhase.PVP),
                                                                 n_slices=12, slice_thickness_mm=5.0)))
             for i in range(2)}
    n_exact = 0
    for label in (tmp_path / "labels").rglob("*.txt"):
        _, case_tag, _, k = label.stem.split("_")
        source = cases[int(case_tag[1:])].boxes[int(k)]
        for line in label.read_text().splitlines():
            _, cx, cy, w, h = (float(v) * crop for v in line.split())
            clipped = min(cx - w / 2, cy - h / 2) < 1e-3 or max(cx + w / 2, cy + h / 2) > crop - 1e-3
            scaled = any(abs(w - upsample * (b.x2 - b.x1)) < 1e-3 and abs(h - upsample * (b.y2 - b.y1)) < 1e-3
                         for b in source)
            assert scaled or clipped  # a label is a source box times the factor, possibly cut by the edge
            n_exact += scaled
    assert n_exact > 0


def test_small_lesion_repeats_add_training_crops_that_hold_a_small_box(tmp_path: Path) -> None:
    base = dict(seed=1000, n_cases=2, crop=160, negative_fraction=0.0, val_fraction=0.5, n_slices=12, min_area_px=0.0)
    plain = export_dataset(tmp_path / "plain", ExportOptions(**base))
    boosted = export_dataset(tmp_path / "boosted", ExportOptions(**base, small_repeats=2, small_box_px=24.0))
    repeats = sorted((tmp_path / "boosted" / "labels" / "train").glob("*r[12].txt"))
    assert repeats and boosted.n_train == plain.n_train + len(repeats)
    assert boosted.n_val == plain.n_val  # validation keeps one crop per slice
    for label in repeats:  # each repeat window holds a box under 24 px (unless cut by the edge)
        sizes = [max(float(w), float(h)) * 160 for _, _, _, w, h in (ln.split() for ln in label.read_text().splitlines())]
        assert any(s < 24.0 for s in sizes), (label.name, sizes)


@pytest.mark.parametrize(("kw", "named"), [(dict(upsample=0.5, crop=160), "upsample"),
                                           (dict(upsample=2.0, crop=None), "upsample"),
                                           (dict(small_repeats=2, crop=None), "small_repeats")])
def test_upsample_and_small_repeats_need_crop_mode(kw: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        ExportOptions(**kw)


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


@pytest.mark.parametrize("arch", ["yolov8n.yaml", "yolov8n-p2.yaml"])
def test_untrained_checkpoint_loads_offline_and_detects_in_batches(tmp_path: Path, arch: str) -> None:
    """The loading and inference path on a real (untrained) ultralytics checkpoint, built from yaml."""
    configure_ultralytics_offline(REPO / ".yolo")
    from ultralytics import YOLO

    YOLO(arch).save(str(tmp_path / "detector.pt"))
    _write_manifest(tmp_path, hashlib.sha256((tmp_path / "detector.pt").read_bytes()).hexdigest())
    det = LesionDetector.from_manifest(tmp_path, device="cpu", batch_size=2)
    slices = np.zeros((3, 512, 512), np.uint8)
    out = det.detect(slices)
    assert len(out) == 3 and all(isinstance(d, list) for d in out)
    assert all(isinstance(x, Detection) for d in out for x in d)

    seen = []  # the fp16 switch reaches ultralytics on CUDA only
    predict = det._model.predict
    det._model.predict = lambda *a, **kw: seen.append(kw["quantize"]) or predict(*a, **kw)
    det.half = True
    det.detect(slices[:1])
    det._device = "cuda:0"  # no GPU here: record the call without running it
    det._model.predict = lambda *a, **kw: seen.append(kw["quantize"]) or []
    det.detect(slices[:1])
    assert seen == [None, 16]


def test_trainer_refuses_relative_or_missing_seed_weights_before_any_work(tmp_path: Path) -> None:
    from pipeline.train.detector import TrainingError, main

    with pytest.raises(TrainingError, match="--pretrained must be an existing absolute path"):
        main(["--out", str(tmp_path), "--model", "yolov8n-p2.yaml", "--pretrained", "detector.pt"])
    with pytest.raises(TrainingError, match="--init"):
        main(["--out", str(tmp_path), "--init", str(tmp_path / "absent.pt")])
    with pytest.raises(SystemExit):  # argparse: --init and --pretrained together
        main(["--out", str(tmp_path), "--init", str(tmp_path), "--pretrained", str(tmp_path)])
    for flag in (["--upsample", "1.5"], ["--small-repeats", "2"], ["--hard-negatives", "m.json"]):  # crops only
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path), *flag])
    assert not any(tmp_path.iterdir())  # no dataset exported


@pytest.mark.parametrize(("upsample", "repeats", "hard", "expected"), [
    (1.0, 0, 0, {"train_crop": 320}),
    (1.5, 2, 7, {"train_crop": 320, "train_upsample": 1.5, "train_small_repeats": 2, "train_hard_negatives": 7}),
])
def test_trainer_manifest_records_how_training_crops_were_made(tmp_path: Path, upsample: float, repeats: int,
                                                               hard: int, expected: dict) -> None:
    import tomllib  # noqa: PLC0415

    from pipeline.train.detector import write_manifest  # noqa: PLC0415

    (tmp_path / "detector.pt").write_bytes(b"weights")
    write_manifest(tmp_path / "m.toml", weights=tmp_path / "detector.pt", arch="yolov8n", imgsz=768, seed=1, cases=2,
                   command="x", ultra_version="8", metrics={}, epochs_run=1, wall_s=1.0, train_crop=320,
                   train_upsample=upsample, train_small_repeats=repeats, train_hard_negatives=hard)
    data = tomllib.loads((tmp_path / "m.toml").read_text())
    assert {k: v for k, v in data["input"].items() if k.startswith("train_")} == expected
    assert data["input"]["imgsz"] == 768 and data["sha256"] == hashlib.sha256(b"weights").hexdigest()


def test_the_config_folder_follows_yolo_config_dir_and_an_unusable_one_is_a_load_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under systemd the install tree is read-only: the units set YOLO_CONFIG_DIR to the state directory."""
    import shutil

    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("detector.pt", "detector.manifest.toml"):
        shutil.copy(REPO / "weights" / name, weights / name)
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "state" / "yolo"))
    LesionDetector.from_manifest(weights, device="cpu")
    assert (tmp_path / "state" / "yolo" / "Ultralytics" / "Arial.ttf").is_file()
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "a-file" / "yolo"))
    with pytest.raises(DetectorLoadError, match="ultralytics config folder not usable"):
        LesionDetector.from_manifest(weights, device="cpu")
