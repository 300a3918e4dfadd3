"""Hard-negative mining and the extra training windows it adds to the detector export."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from pipeline.detect.detector import Detection as Det
from pipeline.phantom import render_case, sample_case
from pipeline.train.detector_data import ExportOptions, HardNegative, case_options, export_dataset
from pipeline.train.hard_negatives import false_boxes, load, mine, save


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float


def test_false_boxes_are_confident_and_off_every_true_lesion():
    truth = [Box(100, 100, 130, 130)]
    dets = [Det(102, 101, 128, 131, 0.9),  # the true lesion
            Det(300, 300, 320, 320, 0.8),  # a mistake
            Det(400, 400, 420, 420, 0.2)]  # a mistake below min_conf
    assert false_boxes(dets, truth, min_conf=0.3) == [dets[1]]
    assert false_boxes(dets, [], min_conf=0.1) == dets


class FixedDetector:
    """Reports one box at a fixed place on every slice."""

    def __init__(self) -> None:
        self.shown: list[tuple] = []

    def detect(self, slices_u8, slice_spacing_mm=None, partner_u8=None):
        self.shown.append((slices_u8, partner_u8))
        return [[Det(20, 20, 40, 40, 0.7)] for _ in slices_u8]


def test_mining_finds_the_fixed_false_box_on_every_slice(tmp_path):
    opts = ExportOptions(seed=5, n_slices=6)
    detector = FixedDetector()
    found = mine(detector, opts, range(1), min_conf=0.5)
    (ap, ap_partner), (pvp, pvp_partner) = detector.shown  # a phase-pair detector sees each with the other
    assert ap_partner is pvp and pvp_partner is ap and not (ap == pvp).all()
    assert len(found) == 2 * 6  # AP and PVP, every slice: (20..40, 20..40) is air, never a lesion
    assert {h.phase for h in found} == {"AP", "PVP"} and all((h.cx, h.cy) == (30, 30) for h in found)
    save(tmp_path / "m.json", found, {"seed": 5})
    assert load(tmp_path / "m.json") == tuple(found)


def test_export_adds_a_centred_window_per_hard_negative_in_training_cases_only(tmp_path):
    base = dict(seed=7, n_cases=2, n_slices=8, crop=128, val_fraction=0.5, negative_fraction=0.0)
    case = render_case(sample_case(7, 0, case_options(ExportOptions(**base))))
    k = next(i for i, b in enumerate(case.boxes) if not b)  # a lesion-free slice
    hard = (HardNegative(0, "AP", k, 300.0, 260.0, 0.8), HardNegative(1, "AP", k, 300.0, 260.0, 0.8))
    plain = export_dataset(tmp_path / "plain", ExportOptions(**base))
    mined = export_dataset(tmp_path / "mined", ExportOptions(**base, hard_negatives=hard))
    assert mined.n_train == plain.n_train + 1 and mined.n_val == plain.n_val  # case 1 is validation
    stem = f"s7_c0000_AP_{k:03d}h0"
    label = tmp_path / "mined" / "labels" / "train" / f"{stem}.txt"
    assert label.read_text() == ""  # a lesion-free slice: pure background
    from PIL import Image

    image = np.asarray(Image.open(tmp_path / "mined" / "images" / "train" / f"{stem}.png"))
    assert image.shape[:2] == (128, 128)
    from pipeline.imaging import window_u8

    expected = window_u8(case.volumes[next(p for p in case.volumes if p.value == "AP")][k])[196:324, 236:364]
    assert np.array_equal(image[..., 0], expected)  # centred on (300, 260)
    with pytest.raises(ValueError, match="crop mode"):
        ExportOptions(seed=7, hard_negatives=hard)
