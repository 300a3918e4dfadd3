"""Detector input channels: grey replicated (published) or adjacent slices (2.5D), alike in training and inference."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.detect.channels import ADJACENT, GREY, check_mode, slice_rgb
from pipeline.detect.detector import DetectorLoadError, LesionDetector
from pipeline.detect.offline import configure_ultralytics_offline
from pipeline.imaging import window_u8
from pipeline.phantom import render_case, sample_case
from pipeline.train.detector_data import ExportOptions, case_options, export_dataset
from tests.support.detectors import recording_detector, write_manifest

REPO = Path(__file__).resolve().parents[2]


def _stack(n: int = 4) -> np.ndarray:
    return np.stack([np.full((6, 5), 10 * (k + 1), np.uint8) for k in range(n)])


def test_grey_mode_repeats_the_slice_in_all_three_channels() -> None:
    img = slice_rgb(_stack(), 2, GREY)
    assert img.shape == (6, 5, 3) and img.dtype == np.uint8
    assert (img == 30).all()


def test_adjacent_mode_puts_the_previous_slice_in_red_and_the_next_in_blue() -> None:
    vol = _stack()
    assert [int(slice_rgb(vol, 1, ADJACENT)[0, 0, c]) for c in range(3)] == [10, 20, 30]
    # the end slices stand in for their missing neighbour
    assert [int(slice_rgb(vol, 0, ADJACENT)[0, 0, c]) for c in range(3)] == [10, 10, 20]
    assert [int(slice_rgb(vol, 3, ADJACENT)[0, 0, c]) for c in range(3)] == [30, 40, 40]
    assert [int(slice_rgb(vol[:1], 0, ADJACENT)[0, 0, c]) for c in range(3)] == [10, 10, 10]


def test_unknown_channel_mode_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'rgb-ish'"):
        check_mode("rgb-ish")
    with pytest.raises(ValueError, match="channels"):
        ExportOptions(channels="2.5d")


def test_manifest_with_an_unknown_channel_mode_does_not_load(tmp_path: Path) -> None:
    (tmp_path / "detector.pt").write_bytes(b"weights")
    write_manifest(tmp_path, "depth")
    with pytest.raises(DetectorLoadError, match="invalid manifest"):
        LesionDetector.from_manifest(tmp_path)


def test_inference_input_matches_the_training_image_as_ultralytics_reads_it(tmp_path: Path) -> None:
    """An exported 2.5D training PNG, read the way the ultralytics trainer reads it (cv2, BGR), is the
    very array the detector hands to ``predict`` (numpy input is BGR too) for the same slice."""
    import cv2  # noqa: PLC0415

    opts = ExportOptions(seed=1000, n_cases=1, imgsz=512, negative_fraction=1.0, val_fraction=1.0, n_slices=6,
                         channels=ADJACENT)
    export_dataset(tmp_path / "data", opts)
    (tmp_path / "w").mkdir()
    det, seen = recording_detector(tmp_path / "w", ADJACENT, batch_size=4)
    assert det.channels == ADJACENT

    phase = "PVP"
    from pipeline.phantom import ContrastPhase  # noqa: PLC0415

    vol = window_u8(render_case(sample_case(1000, 0, case_options(opts))).volumes[ContrastPhase(phase)])
    assert len(det.detect(vol)) == vol.shape[0] and len(seen) == vol.shape[0]  # two batches
    for k in (0, 3, 5):
        png = tmp_path / "data" / "images" / "val" / f"s1000_c0000_{phase}_{k:03d}.png"
        trained_on = cv2.imread(str(png), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(trained_on, seen[k])
        np.testing.assert_array_equal(trained_on[..., ::-1], slice_rgb(vol, k, ADJACENT))
    assert not np.array_equal(seen[3][..., 0], seen[3][..., 2])  # neighbours differ: really 2.5D


def test_centre_channel_init_gives_on_adjacent_slices_what_the_grey_detector_gave_on_the_centre_slice() -> None:
    import copy  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from pipeline.train.detector import centre_channel_init  # noqa: PLC0415

    configure_ultralytics_offline(REPO / ".yolo")
    from ultralytics import YOLO  # noqa: PLC0415

    # the shipped detector: an untrained network's output barely depends on its input
    grey = YOLO(str(REPO / "weights" / "detector.pt")).model.float().eval()
    folded = copy.deepcopy(grey)
    centre_channel_init(folded)
    torch.manual_seed(0)
    prev, centre, nxt = (torch.rand(1, 1, 96, 96) for _ in range(3))
    with torch.no_grad():
        before = grey(torch.cat([centre] * 3, dim=1))[0]
        after = folded(torch.cat([prev, centre, nxt], dim=1))[0]
        unfolded = grey(torch.cat([prev, centre, nxt], dim=1))[0]
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(unfolded, before, atol=1e-3)  # without folding the neighbours change the output


def test_neighbours_are_sought_at_the_trained_distance_on_thinner_slices() -> None:
    from pipeline.detect.channels import neighbour_offset  # noqa: PLC0415

    assert neighbour_offset(5.0, 5.0) == 1
    assert neighbour_offset(1.25, 5.0) == 4 and neighbour_offset(2.0, 5.0) == 2  # 2.5 rounds to even
    assert neighbour_offset(10.0, 5.0) == 1  # never the slice itself
    assert neighbour_offset(None, 5.0) == 1 and neighbour_offset(1.0, None) == 1
    vol = np.stack([np.full((2, 2), k, np.uint8) for k in range(10)])
    assert [int(v) for v in slice_rgb(vol, 5, ADJACENT, offset=4)[0, 0]] == [1, 5, 9]
    assert [int(v) for v in slice_rgb(vol, 8, ADJACENT, offset=4)[0, 0]] == [4, 8, 9]


def test_trainer_manifest_records_the_channel_mode_and_neighbour_distance(tmp_path: Path) -> None:
    import tomllib  # noqa: PLC0415

    from pipeline.train.detector import write_manifest  # noqa: PLC0415

    (tmp_path / "detector.pt").write_bytes(b"weights")
    for channels, expected in ((GREY, None), (ADJACENT, 5.0)):
        write_manifest(tmp_path / "m.toml", weights=tmp_path / "detector.pt", arch="yolov8n", imgsz=512, seed=1,
                       cases=2, command="x", ultra_version="8", metrics={}, epochs_run=1, wall_s=1.0,
                       channels=channels)
        data = tomllib.loads((tmp_path / "m.toml").read_text())
        assert data["input"]["channels"] == channels and data["input"].get("neighbour_mm") == expected


def test_detector_takes_neighbours_at_the_manifest_distance_given_the_series_spacing(tmp_path: Path) -> None:
    det, seen = recording_detector(tmp_path, ADJACENT, "neighbour_mm = 5.0\n")
    vol = np.stack([np.full((64, 64), 20 * k, np.uint8) for k in range(6)])
    det.detect(vol, slice_spacing_mm=2.5)  # 2 slices to 5 mm
    det.detect(vol)  # spacing unknown: the adjacent slices
    assert [int(v) for v in seen[3][0, 0, ::-1]] == [20, 60, 100]
    assert [int(v) for v in seen[6 + 3][0, 0, ::-1]] == [40, 60, 80]
