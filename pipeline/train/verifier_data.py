"""Training crops for the lesion verifier: a trained detector's candidates on phantoms it never saw.

    python -m pipeline.train.verifier_data --weights weights --seed 1000 --cases 240:300 --out part1.npz

Renders phantom cases exactly as the detector export does (``pipeline.train.detector_data``; pick
case indices past the detector's training cases), runs the detector on every AP and PVP slice at
``min_conf`` and cuts one (AP, PVP) phase pair per sample, the input of a ``phase-pair`` model:

- negatives: every detection that overlaps no true lesion box on its slice (IoU < 0.1), the
  detector's own mistakes at the confidences the pipeline will ask the verifier about;
- positives: every true lesion cross-section of at least ``min_side`` px (at most ``max_slices``
  per lesion), its box jittered as the classifier training data is, so the verifier also learns
  the small and faint lesions the detector is unsure of.

The other phase's window is cut at the same place (the phantom's phases share one grid), moved by
up to 3 px as a second detection would be. Labels use ``CropSet.cls``: ``BACKGROUND`` or the
lesion's class index.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from pipeline.classify.preprocess import crop_around_box
from pipeline.imaging import window_u8
from pipeline.phantom import render_case, sample_case
from pipeline.train.classifier_data import ALL_CLASSES, BACKGROUND, PAIRED, CropSet, jitter_box, shift_box
from pipeline.train.detector_data import PHASES, ExportOptions, case_options, other_phase
from pipeline.train.hard_negatives import detector_and_cases, false_boxes

log = logging.getLogger(__name__)


def _pair(windowed: dict, phase_index: int, slice_index: int, box, moved) -> np.ndarray:
    """(AP, PVP) windows: ``box`` in the phase it was found in, ``moved`` in the other."""
    boxes = (box, moved) if phase_index == 0 else (moved, box)
    return np.stack([crop_around_box(windowed[ph][slice_index], b) for ph, b in zip(PHASES, boxes)])


def case_samples(case, index: int, detector, rng: np.random.Generator, *, min_conf: float, min_side: float,
                 max_slices: int, pair_shift_px: float = 3.0) -> tuple[list[np.ndarray], list[tuple[int, int, int, int]]]:
    """Crops and (cls, lesion key, phase, case) rows of one rendered case."""
    windowed = {ph: window_u8(case.volumes[ph]) for ph in PHASES}
    crops, meta = [], []
    for p, phase in enumerate(PHASES):
        for k, dets in enumerate(detector.detect(windowed[phase], partner_u8=windowed[other_phase(phase)])):
            for d in false_boxes(dets, case.boxes[k], min_conf):
                box = (d.x1, d.y1, d.x2, d.y2)
                crops.append(_pair(windowed, p, k, box, shift_box(box, rng, pair_shift_px)))
                meta.append((BACKGROUND, -1, PAIRED, index))
    per_lesion: dict[int, list] = {}
    for slice_boxes in case.boxes:
        for b in slice_boxes:
            if max(b.x2 - b.x1, b.y2 - b.y1) >= min_side:
                per_lesion.setdefault(b.lesion_id, []).append(b)
    for lesion_id, boxes in per_lesion.items():
        boxes.sort(key=lambda bb: bb.slice_index)
        if len(boxes) > max_slices:
            boxes = [boxes[i] for i in np.linspace(0, len(boxes) - 1, max_slices).round().astype(int)]
        for b in boxes:
            box = jitter_box((float(b.x1), float(b.y1), float(b.x2), float(b.y2)), rng)
            crops.append(_pair(windowed, int(rng.integers(2)), b.slice_index, box, shift_box(box, rng, pair_shift_px)))
            meta.append((ALL_CLASSES.index(b.cls), index * 1000 + lesion_id, PAIRED, index))
    return crops, meta


def build(detector, seed: int, cases: range, *, min_conf: float = 0.1, min_side: float = 6.0,
          max_slices: int = 4) -> CropSet:
    opts = ExportOptions(seed=seed)
    rng = np.random.default_rng([seed, cases.start])
    crops, meta = [], []
    for index in cases:
        case = render_case(sample_case(seed, index, case_options(opts)))
        c, m = case_samples(case, index, detector, rng, min_conf=min_conf, min_side=min_side, max_slices=max_slices)
        crops += c
        meta += m
        negatives = sum(row[0] == BACKGROUND for row in meta)
        log.info("case %d: %d samples so far (%d candidates that are not lesions)", index, len(meta), negatives)
    if not crops:
        raise RuntimeError("no verifier samples were produced")
    m = np.asarray(meta, dtype=np.int64)
    # each negative is its own "lesion" key, so per-lesion scoring counts it once
    m[m[:, 1] < 0, 1] = -np.arange(1, int((m[:, 1] < 0).sum()) + 1) - m[m[:, 1] < 0, 3] * 100000
    return CropSet(np.stack(crops).astype(np.uint8), m[:, 0], m[:, 1], m[:, 2], m[:, 3])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.train.verifier_data", description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, required=True, help="folder with detector.pt and its manifest")
    p.add_argument("--seed", type=int, default=1000, help="phantom seed (the detector export's)")
    p.add_argument("--cases", default="240:300", help="case index range START:STOP, past the detector's training cases")
    p.add_argument("--min-conf", type=float, default=0.1, help="at or above the detector manifest's conf")
    p.add_argument("--out", type=Path, required=True, help=".npz to write")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    detector, cases = detector_and_cases(args)
    data = build(detector, args.seed, cases, min_conf=args.min_conf)
    data.save(args.out)
    log.info("wrote %s: %d samples, %d negatives", args.out, len(data), int((data.cls == BACKGROUND).sum()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
