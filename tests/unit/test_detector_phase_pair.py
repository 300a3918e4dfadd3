"""Phase-pair detector input: the slice in G, the other contrast phase at the same patient position in
R and B, built alike for training (``detector_data``) and inference (``partner_volume`` + detector)."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from pipeline.detect.channels import GREY, PHASE_PAIR, slice_rgb
from pipeline.detect.partner import partner_volume
from pipeline.series import Geometry
from pipeline.train.detector_data import ExportOptions, export_dataset, other_phase, shifted
from tests.support.detectors import recording_detector

AXIAL = dict(row_direction=np.array([1.0, 0.0, 0.0]), column_direction=np.array([0.0, 1.0, 0.0]))


def _geometry(n: int, z0: float = 0.0, dz: float = 5.0, x0: float = 0.0, y0: float = 0.0,
              spacing: tuple[float, float] = (1.0, 1.0), frame: str = "1.2.3") -> Geometry:
    origins = np.array([[x0, y0, z0 + k * dz] for k in range(n)])
    return Geometry(origins=origins, pixel_spacing=spacing, frame_of_reference_uid=frame, **AXIAL)


def _random(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_phase_pair_puts_the_partner_in_red_and_blue_and_the_slice_in_green() -> None:
    own, partner = np.full((3, 4, 4), 50, np.uint8), np.full((3, 4, 4), 90, np.uint8)
    assert [int(v) for v in slice_rgb(own, 1, PHASE_PAIR, partner_u8=partner)[0, 0]] == [90, 50, 90]
    # no partner (one phase in the study): the grey image the published detector sees
    np.testing.assert_array_equal(slice_rgb(own, 1, PHASE_PAIR), slice_rgb(own, 1, GREY))
    # a grey detector ignores a partner
    np.testing.assert_array_equal(slice_rgb(own, 1, GREY, partner_u8=partner), slice_rgb(own, 1, GREY))


def test_partner_on_the_same_grid_is_the_other_series_itself() -> None:
    target, source = _random((4, 8, 9), 1), _random((4, 8, 9), 2)
    g = _geometry(4)
    np.testing.assert_array_equal(partner_volume(g, target, g, source), source)


def test_partner_follows_patient_coordinates_across_a_shifted_field_of_view() -> None:
    target, source = _random((3, 8, 8), 1), _random((3, 8, 8), 2)
    # the source grid starts 2 mm further right and 1 mm further back: target column c is source column c-2
    out = partner_volume(_geometry(3), target, _geometry(3, x0=2.0, y0=1.0), source)
    np.testing.assert_array_equal(out[:, 1:, 2:], source[:, :-1, :-2])
    # where the source does not reach, the target's own pixels stand in
    np.testing.assert_array_equal(out[:, :, :2], target[:, :, :2])
    np.testing.assert_array_equal(out[:, 0, :], target[:, 0, :])


def test_partner_takes_the_nearest_slice_and_pixel_of_a_finer_source() -> None:
    # target: 5 mm slices of 2 mm pixels; source: 2.5 mm slices of 1 mm pixels over the same slab
    target = np.zeros((3, 4, 4), np.uint8)
    source = np.zeros((5, 8, 8), np.uint8)
    for i in range(5):
        source[i] = 10 * i + np.arange(8)[None, :]  # slice index in tens, column in units
    out = partner_volume(_geometry(3, spacing=(2.0, 2.0)), target, _geometry(5, dz=2.5), source)
    assert [int(out[k, 0, 0]) // 10 for k in range(3)] == [0, 2, 4]  # z 0, 5, 10 mm
    assert [int(v) % 10 for v in out[1, 0]] == [0, 2, 4, 6]  # x 0, 2, 4, 6 mm


def test_partner_beyond_the_source_slab_is_the_slice_itself() -> None:
    target, source = _random((4, 5, 5), 1), _random((2, 5, 5), 2)
    out = partner_volume(_geometry(4), target, _geometry(2, z0=0.0), source)  # source covers z 0 and 5 only
    np.testing.assert_array_equal(out[:2], source)
    np.testing.assert_array_equal(out[3], target[3])  # z 15: more than one source spacing away


def test_partner_half_a_pixel_off_takes_every_source_column_once() -> None:
    # 0.7 mm pixels, the source starting 0.35 mm further left: each target pixel is half-way between two
    target = np.zeros((1, 2, 12), np.uint8)
    source = np.tile(np.arange(12, dtype=np.uint8), (1, 2, 1))
    out = partner_volume(_geometry(1, spacing=(0.7, 0.7)), target, _geometry(1, x0=-0.35, spacing=(0.7, 0.7)), source)
    assert out[0, 0].tolist() == list(range(1, 12)) + [0]  # columns 1..11, then the target's own pixel


def test_partner_from_a_tilted_series_is_not_used() -> None:
    target, source = _random((3, 6, 6), 1), _random((3, 6, 6), 2)
    t = np.radians(15.0)
    tilted = Geometry(origins=np.array([[0.0, 0.0, 5.0 * k] for k in range(3)]), pixel_spacing=(1.0, 1.0),
                      frame_of_reference_uid="1.2.3", row_direction=np.array([1.0, 0.0, 0.0]),
                      column_direction=np.array([0.0, np.cos(t), np.sin(t)]))
    np.testing.assert_array_equal(partner_volume(_geometry(3), target, tilted, source), target)
    # the same series untilted is used (its planes match the target's)
    np.testing.assert_array_equal(partner_volume(_geometry(3), target, _geometry(3), source), source)


def test_shifted_moves_content_and_repeats_the_edge() -> None:
    v = np.arange(2 * 5 * 6, dtype=np.uint8).reshape(2, 5, 6)
    s = shifted(v, 1, -2)  # down one row, left two columns
    np.testing.assert_array_equal(s[:, 1:, :4], v[:, :4, 2:])
    np.testing.assert_array_equal(s[:, 0, :4], v[:, 0, 2:])  # top row repeated
    np.testing.assert_array_equal(shifted(v, 0, 0), v)


def _pngs(root: Path) -> dict[str, np.ndarray]:
    from PIL import Image  # noqa: PLC0415

    return {p.stem: np.asarray(Image.open(p)) for p in sorted((root / "images").rglob("*.png"))}


def test_phase_pair_export_carries_the_other_phase_within_the_jitter_and_keeps_the_grey_crops(tmp_path: Path) -> None:
    from pipeline.imaging import window_u8  # noqa: PLC0415
    from pipeline.phantom import ContrastPhase, render_case, sample_case  # noqa: PLC0415
    from pipeline.train.detector_data import case_options  # noqa: PLC0415

    common = dict(seed=1000, n_cases=2, n_slices=6, negative_fraction=1.0, val_fraction=0.5, crop=256)
    export_dataset(tmp_path / "grey", ExportOptions(**common))
    export_dataset(tmp_path / "pair", ExportOptions(**common, channels=PHASE_PAIR, single_phase_fraction=0.5))
    grey, pair = _pngs(tmp_path / "grey"), _pngs(tmp_path / "pair")
    assert grey.keys() == pair.keys()
    # the partner draws come from their own stream: the crop windows (and so the labels) are the grey ones
    for stem in grey:
        np.testing.assert_array_equal(pair[stem][..., 1], grey[stem][..., 1])
        np.testing.assert_array_equal(pair[stem][..., 0], pair[stem][..., 2])
    labels = {p.name: p.read_text() for p in sorted((tmp_path / "grey" / "labels").rglob("*.txt"))}
    assert labels == {p.name: p.read_text() for p in sorted((tmp_path / "pair" / "labels").rglob("*.txt"))}

    # every series is either alone (R = G) or paired with the other phase shifted by at most 2 px
    opts = ExportOptions(**common)
    kinds = []
    for index in range(2):
        case = render_case(sample_case(1000, index, case_options(opts)))
        vols = {ph: window_u8(case.volumes[ph]) for ph in (ContrastPhase.AP, ContrastPhase.PVP)}
        for phase, vol in vols.items():
            stems = sorted(s for s in pair if s.startswith(f"s1000_c{index:04d}_{phase.value}_"))
            if all(np.array_equal(pair[s][..., 0], pair[s][..., 1]) for s in stems):
                kinds.append("alone")
                continue
            other = vols[other_phase(phase)]
            windows = {s: _window(vol[int(s.split("_")[3][:3])], pair[s][..., 1]) for s in stems}
            for dy, dx in itertools.product(range(-2, 3), repeat=2):
                moved = shifted(other, dy, dx)
                if all(np.array_equal(moved[int(s.split("_")[3][:3]), y0:y0 + 256, x0:x0 + 256], pair[s][..., 0])
                       for s, (y0, x0) in windows.items()):
                    kinds.append((dy, dx))
                    break
            else:
                pytest.fail(f"case {index} {phase.value}: partner is not the other phase within 2 px")
    assert "alone" in kinds and any(k != "alone" for k in kinds), kinds


def _window(image: np.ndarray, crop: np.ndarray) -> tuple[int, int]:
    """Top-left corner of the place ``crop`` was cut from ``image``."""
    h, w = crop.shape
    for y0 in range(image.shape[0] - h + 1):
        for x0 in np.flatnonzero(image[y0, :image.shape[1] - w + 1] == crop[0, 0]):
            if np.array_equal(image[y0:y0 + h, x0:x0 + w], crop):
                return y0, int(x0)
    raise AssertionError("crop not found in its slice")


def test_detector_feeds_the_partner_as_trained_and_refuses_a_mismatched_one(tmp_path: Path) -> None:
    det, seen = recording_detector(tmp_path, PHASE_PAIR)
    own, partner = _random((3, 64, 64), 1), _random((3, 64, 64), 2)
    det.detect(own, 5.0, partner_u8=partner)
    det.detect(own, 5.0)
    # numpy input is BGR to ultralytics: reversed, the image is exactly the training image's RGB
    np.testing.assert_array_equal(seen[1][..., ::-1], slice_rgb(own, 1, PHASE_PAIR, partner_u8=partner))
    np.testing.assert_array_equal(seen[3 + 1][..., ::-1], slice_rgb(own, 1, GREY))
    with pytest.raises(ValueError, match="partner must be uint8"):
        det.detect(own, 5.0, partner_u8=partner[:2])


def test_trainer_manifest_records_how_partners_were_shown(tmp_path: Path) -> None:
    import tomllib  # noqa: PLC0415

    from pipeline.train.detector import write_manifest  # noqa: PLC0415

    (tmp_path / "detector.pt").write_bytes(b"weights")
    for channels in (GREY, PHASE_PAIR):
        write_manifest(tmp_path / "m.toml", weights=tmp_path / "detector.pt", arch="yolov8n", imgsz=512, seed=1,
                       cases=2, command="x", ultra_version="8", metrics={}, epochs_run=1, wall_s=1.0,
                       channels=channels, single_phase_fraction=0.2, partner_jitter_px=2)
        data = tomllib.loads((tmp_path / "m.toml").read_text())["input"]
        assert data["channels"] == channels
        assert (data.get("train_single_phase_fraction"), data.get("train_partner_jitter_px")) == (
            (0.2, 2) if channels == PHASE_PAIR else (None, None))
