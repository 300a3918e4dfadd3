"""Hard-negative mining: where a trained detector reports a lesion on training phantoms that have none.

    python -m pipeline.train.hard_negatives --weights weights --seed 1000 --cases 0:60 --out mined.json

Renders the training cases exactly as ``export_dataset`` does (same seed, index and case options),
runs the detector on every AP and PVP slice, and keeps each box of at least ``min_conf`` that
overlaps no true lesion box on its slice (IoU < 0.1). The detector export then adds a training
window centred on each of them (``ExportOptions.hard_negatives``), labelled with whatever true
lesions fall inside it, so the network is shown its own confident mistakes as background.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline.imaging import window_u8
from pipeline.lesions import box_iou
from pipeline.phantom import render_case, sample_case
from pipeline.train.detector_data import PHASES, ExportOptions, HardNegative, case_options, other_phase

log = logging.getLogger(__name__)


def false_boxes(detections, truth_boxes, min_conf: float, max_iou: float = 0.1) -> list:
    """Detections of at least ``min_conf`` that overlap no true box by ``max_iou`` or more."""
    truths = [(b.x1, b.y1, b.x2, b.y2) for b in truth_boxes]
    return [d for d in detections if d.confidence >= min_conf
            and all(box_iou((d.x1, d.y1, d.x2, d.y2), t) < max_iou for t in truths)]


def mine(detector, opts: ExportOptions, cases: range, min_conf: float) -> list[HardNegative]:
    found: list[HardNegative] = []
    for index in cases:
        case = render_case(sample_case(opts.seed, index, case_options(opts)))
        windowed = {phase: window_u8(case.volumes[phase]) for phase in PHASES}
        for phase in PHASES:
            detections = detector.detect(windowed[phase], partner_u8=windowed[other_phase(phase)])
            for k, dets in enumerate(detections):
                for d in false_boxes(dets, case.boxes[k], min_conf):
                    found.append(HardNegative(index, phase.value, k, (d.x1 + d.x2) / 2, (d.y1 + d.y2) / 2,
                                              float(d.confidence)))
        log.info("case %d mined, %d false boxes so far", index, len(found))
    return found


def save(path: Path, found: list[HardNegative], meta: dict) -> None:
    path.write_text(json.dumps({"meta": meta, "hard_negatives": [asdict(h) for h in found]}, indent=1))


def load(path: Path) -> tuple[HardNegative, ...]:
    return tuple(HardNegative(**h) for h in json.loads(Path(path).read_text())["hard_negatives"])


def detector_and_cases(args: argparse.Namespace):
    """What the mining commands share at start: logging, torch threads, the detector of ``--weights``
    and the ``--cases START:STOP`` range."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    from pipeline.detect.detector import LesionDetector

    torch.set_num_threads(args.threads)
    start, stop = (int(v) for v in args.cases.split(":"))
    return LesionDetector.from_manifest(args.weights, device=None), range(start, stop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.train.hard_negatives", description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, required=True, help="folder with detector.pt and its manifest")
    p.add_argument("--seed", type=int, default=1000, help="phantom seed of the detector training cases")
    p.add_argument("--cases", default="0:60", help="case index range START:STOP (training cases only)")
    p.add_argument("--min-conf", type=float, default=0.3)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    detector, cases = detector_and_cases(args)
    found = mine(detector, ExportOptions(seed=args.seed), cases, args.min_conf)
    save(args.out, found, {"weights_sha256": detector.sha256, "seed": args.seed, "cases": args.cases,
                           "min_conf": args.min_conf})
    confs = np.array([h.confidence for h in found])
    log.info("wrote %s: %d hard negatives (median confidence %.2f)", args.out, len(found),
             float(np.median(confs)) if len(confs) else float("nan"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
