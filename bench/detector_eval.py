"""Held-out evaluation of the lesion detector on phantom slices; prints figures.

    python bench/detector_eval.py [--seed 9000] [--cases 10] [--weights weights] [--threads 1]

Box-level: recall = GT boxes matched by a detection (greedy by confidence, IoU >= t) / GT boxes;
precision = matched detections / detections; over all AP+PVP slices (lesion and lesion-free).
Slice-level: lesion-slice recall (>= 1 GT matched), false-positive rate on lesion-free slices.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.detect.detector import Detection, LesionDetector  # noqa: E402
from pipeline.imaging import window_u8  # noqa: E402
from pipeline.lesions import box_iou  # noqa: E402
from pipeline.phantom import CaseOptions, ContrastPhase, LesionBox, render_case, sample_case  # noqa: E402

PHASES = (ContrastPhase.AP, ContrastPhase.PVP)
IOUS = (0.1, 0.3, 0.5)


def iou(d: Detection, b: LesionBox) -> float:
    return box_iou((d.x1, d.y1, d.x2, d.y2), (b.x1, b.y1, b.x2, b.y2))


def match(dets: list[Detection], boxes: tuple[LesionBox, ...], t: float) -> tuple[int, set[int]]:
    """Greedy by confidence; returns (matched detections, indices of matched GT boxes)."""
    used: set[int] = set()
    tp = 0
    for d in sorted(dets, key=lambda x: -x.confidence):
        best, best_i = t, -1
        for i, b in enumerate(boxes):
            if i not in used and (v := iou(d, b)) >= best:
                best, best_i = v, i
        if best_i >= 0:
            used.add(best_i)
            tp += 1
    return tp, used


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=9000)
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--weights", type=Path, default=Path(__file__).resolve().parents[1] / "weights")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-area", type=int, default=16, help="px at 512; smaller GT boxes reported separately")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    det = LesionDetector.from_manifest(args.weights, device="cpu", batch_size=16)
    torch.set_num_threads(args.threads)
    print(f"detector {det.name} {det.version} sha256 {det.sha256[:16]} threads {args.threads}")
    opts = CaseOptions(phases=PHASES, n_slices=40, slice_thickness_mm=5.0)
    slices: list[np.ndarray] = []
    truth: list[tuple[LesionBox, ...]] = []
    for index in range(args.cases):
        case = render_case(sample_case(args.seed, index, opts))
        for phase in PHASES:
            for k in range(case.volumes[phase].shape[0]):
                slices.append(window_u8(case.volumes[phase][k]))
                truth.append(case.boxes[k])
    stack = np.stack(slices)
    t0 = time.perf_counter()
    preds = det.detect(stack)
    t_all = time.perf_counter() - t0
    n_les = sum(1 for b in truth if b)
    print(f"slices {len(stack)} ({n_les} with lesions), GT boxes {sum(len(b) for b in truth)}")
    for t in IOUS:
        for label, keep in (("all", lambda b: True), (f">={args.min_area}px", lambda b: b.area_px >= args.min_area)):
            n_gt = n_det = tp_det = tp_gt = 0
            for dets, boxes in zip(preds, truth):
                tp, used = match(dets, boxes, t)
                n_det += len(dets)
                tp_det += tp
                n_gt += sum(1 for b in boxes if keep(b))
                tp_gt += sum(1 for i in used if keep(boxes[i]))
            print(f"IoU>={t:.1f} GT {label:>7}: box recall {tp_gt / max(n_gt, 1):.3f} ({tp_gt}/{n_gt})"
                  f"  box precision {tp_det / max(n_det, 1):.3f} ({tp_det}/{n_det})")
        hit = sum(1 for dets, boxes in zip(preds, truth) if boxes and match(dets, boxes, t)[1])
        print(f"IoU>={t:.1f} lesion-slice recall {hit / max(n_les, 1):.3f} ({hit}/{n_les})")
    neg = [dets for dets, boxes in zip(preds, truth) if not boxes]
    fp_slices = sum(1 for d in neg if d)
    print(f"lesion-free slices with any detection: {fp_slices}/{len(neg)} = {fp_slices / max(len(neg), 1):.3f}")
    print(f"batch 16 over all slices: {1000 * t_all / len(stack):.1f} ms/slice")
    for bs in (1, 16):
        det.batch_size = bs
        det.detect(stack[:bs])  # warm-up
        n = 48
        t0 = time.perf_counter()
        det.detect(stack[:n])
        print(f"batch {bs:>2}: {1000 * (time.perf_counter() - t0) / n:.1f} ms/slice (512x512 input, imgsz from manifest)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
