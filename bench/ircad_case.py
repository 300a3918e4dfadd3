"""The shipped model on the real IRCAD case (3D-IRCADb-01, IRCAD France; CC BY-NC-ND 4.0), scored
against its tumour masks. Read-only use of ``../shared/realdata/3dircadb1.1``: the mask archive
is read in memory, nothing converted is written. No tuning happens here; it only reports.

    .venv/bin/python bench/ircad_case.py [--weights weights] [--iou 0.1]

Per mask (livertumor01..07, liverkyst): found when any predicted box on one of its slices
overlaps the mask's bounding box on that slice at IoU >= --iou. Per predicted lesion: true when
any of its boxes does so for some mask, otherwise a false positive.
"""
from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402

from pipeline.analyzer import Analyzer  # noqa: E402
from pipeline.batch import scan_studies, study_inputs  # noqa: E402
from pipeline.lesions import box_iou  # noqa: E402
from pipeline.phases import PhaseRules  # noqa: E402

CASE = REPO.parent / "shared" / "realdata" / "3dircadb1.1"
MASKS = ("livertumor01", "livertumor02", "livertumor03", "livertumor04", "livertumor05", "livertumor06",
         "livertumor07", "liverkyst")


def mask_boxes(case: Path) -> dict[str, dict[int, tuple[float, float, float, float]]]:
    """mask name -> {slice number N of image_N: bounding box (x1, y1, x2, y2) in pixels}."""
    out: dict[str, dict[int, tuple]] = {m: {} for m in MASKS}
    with zipfile.ZipFile(case / "MASKS_DICOM.zip") as z:
        for name in z.namelist():
            parts = name.split("/")
            if len(parts) != 3 or parts[1] not in out or not parts[2].startswith("image_"):
                continue
            arr = pydicom.dcmread(io.BytesIO(z.read(name))).pixel_array
            ys, xs = np.nonzero(arr)
            if len(xs):
                out[parts[1]][int(parts[2].split("_")[1])] = (float(xs.min()), float(ys.min()),
                                                              float(xs.max() + 1), float(ys.max() + 1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=REPO / "weights")
    ap.add_argument("--iou", type=float, default=0.1)
    args = ap.parse_args(argv)
    if not (CASE / "PATIENT_DICOM").is_dir():
        print(f"IRCAD case not found at {CASE}", file=sys.stderr)
        return 2
    sop_to_slice = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): int(p.name.split("_")[1])
                    for p in (CASE / "PATIENT_DICOM").iterdir()}
    truth = mask_boxes(CASE)
    ((study_uid, series),) = scan_studies(CASE / "PATIENT_DICOM").items()
    analyzer = Analyzer.from_weights(args.weights)
    result = analyzer.run_study(study_uid, study_inputs(series, PhaseRules())).to_dict()
    print(f"status={result['status']} phase_mode={result['phase_mode']} reason={result['reason']} "
          f"lesions={len(result['lesions'])} case={result['case']['class']}")
    found: dict[str, str] = {}
    false_positives = 0
    for les in result["lesions"]:
        hits = set()
        for view in les["views"]:
            for b in view["boxes"]:
                n = sop_to_slice.get(b["sop_instance_uid"])
                for mask, boxes in truth.items():
                    if n in boxes and box_iou(b["xyxy"], boxes[n]) >= args.iou:
                        hits.add(mask)
        for mask in hits:
            found.setdefault(mask, les["class"])
        false_positives += not hits
        print(f"  lesion {les['index']}: class={les['class']} p_malignant={les['p_malignant']} "
              f"long_axis_mm={les['long_axis_mm']} matches={sorted(hits) or 'none (false positive)'}")
    for mask in MASKS:
        print(f"  {mask}: {'found, called ' + found[mask] if mask in found else 'missed'} "
              f"(slices {min(truth[mask])}-{max(truth[mask])})")
    print(f"masks found {len(found)}/{len(MASKS)} at IoU {args.iou}; false-positive lesions {false_positives}; "
          f"timings_s {result['timings_s']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
