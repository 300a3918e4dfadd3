"""How close the detector comes to each small lesion: its best box confidence per lesion; prints a table.

    python bench/small_lesion_scores.py [--weights weights] [--seed 8100] [--cases-per-class 6] \
        [--max-diameter 10] [--conf 0.001]

Renders the phantom cases exactly as ``tools/evaluate_holdout.sh`` writes them (seed, class order and
case indices alike; AP+PVP, 40 x 5 mm), runs the detector with its ``conf`` lowered to ``--conf``,
and for every lesion under ``--max-diameter`` mm prints the best confidence of any box overlapping
it at IoU 0.1 on any slice of either phase. A lesion near 0 is out of reach of any threshold; one
just under the manifest's ``conf`` is a threshold question.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.detect.detector import MANIFEST_NAME, LesionDetector, read_manifest  # noqa: E402
from pipeline.imaging import window_u8  # noqa: E402
from pipeline.lesions import box_iou  # noqa: E402
from pipeline.phantom import CaseOptions, LesionClass, render_case, sample_case  # noqa: E402
from pipeline.train.detector_data import PHASES, other_phase  # noqa: E402

CLASSES = ("HCC", "ICC", "MET", "FNH", "HEM", "CYST")  # evaluate_holdout.sh's order (then the normal cases)


def detector_at(weights: Path, conf: float, work: Path) -> LesionDetector:
    """The detector of ``weights`` with its manifest's ``conf`` replaced (a copy; the sha256 check still runs)."""
    manifest = read_manifest(weights)
    shutil.copyfile(manifest.weights, work / manifest.weights.name)
    text = (weights / MANIFEST_NAME).read_text()
    (work / MANIFEST_NAME).write_text(re.sub(r"(?m)^conf = .*$", f"conf = {conf}", text, count=1))
    return LesionDetector.from_manifest(work, device=None)


def best_confidences(det: LesionDetector, case, lesion_ids: set[int]) -> dict[int, float]:
    """Per lesion, the highest confidence of a box overlapping one of its true boxes at IoU 0.1 (0 if none)."""
    best = dict.fromkeys(lesion_ids, 0.0)
    windowed = {phase: window_u8(case.volumes[phase]) for phase in PHASES}
    for phase in PHASES:
        spacing = case.spec.geometry.slice_spacing_mm
        for k, found in enumerate(det.detect(windowed[phase], spacing, partner_u8=windowed[other_phase(phase)])):
            for b, d in ((b, d) for b in case.boxes[k] if b.lesion_id in best for d in found):
                if box_iou((d.x1, d.y1, d.x2, d.y2), (b.x1, b.y1, b.x2, b.y2)) >= 0.1:
                    best[b.lesion_id] = max(best[b.lesion_id], d.confidence)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", type=Path, default=Path("weights"))
    p.add_argument("--seed", type=int, default=8100, help="phantom seed (default: the validation set)")
    p.add_argument("--cases-per-class", type=int, default=6)
    p.add_argument("--max-diameter", type=float, default=10.0)
    p.add_argument("--conf", type=float, default=0.001)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        det = detector_at(args.weights, args.conf, Path(tmp))
        print(f"detector {det.version}, conf {args.conf}; lesions under {args.max_diameter:g} mm, seed {args.seed}")
        for c, name in enumerate(CLASSES):
            opts = CaseOptions(phases=PHASES, n_slices=40, slice_thickness_mm=5.0,
                               lesion_classes=(LesionClass[name],))
            for index in range(c * args.cases_per_class, (c + 1) * args.cases_per_class):
                case = render_case(sample_case(args.seed, index, opts))
                small = {les.lesion_id for les in case.lesions if max(les.diameters_mm[:2]) < args.max_diameter}
                best = best_confidences(det, case, small) if small else {}
                for les in case.lesions:
                    if les.lesion_id in best:
                        contrast = max(abs(v) for v in les.contrast_hu.values())
                        print(f"{name:4s} case {index:3d} lesion {les.lesion_id}: {max(les.diameters_mm[:2]):4.1f} mm, "
                              f"|contrast| {contrast:3.0f} HU, {len(les.slices)} slice(s), "
                              f"best confidence {best[les.lesion_id]:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
