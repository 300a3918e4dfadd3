"""A classical second proposer for the lesions the detector never proposes, measured on phantoms.
Tried and not shipped (weights/README.md, "A hypodense-spot filter"): kept to reproduce that figure.

    .venv/bin/python bench/spot_filter.py TRUTH_DIR [TRUTH_DIR ...] [--results RESULTS_DIR] [--jobs 2]

TRUTH_DIR: phantom studies as ``tools/evaluate_holdout.sh`` writes them (``labels.json`` and ``dicom/`` per
case). RESULTS_DIR: a ``liver-node run`` of the same studies; a lesion that no detector track from
confidence 0.1 touches (IoU 0.1) counts as never proposed. Prints, per score bar, the lesions the
filter reaches (all, under 10 mm, never proposed) and its false spots per case farther than 10 mm from
every true lesion (nearer ones would merge with the lesion's own detector candidate).

The filter: on PVP the detector misses metastases under about 10 mm at low contrast, which on PVP are
small discs darker than the parenchyma around them. Per slice, the mean HU in a disc (radius 2.5, 3.5
or 5 mm) is compared with the mean of a ring around it (1.5 to 6 mm beyond); the ring-minus-disc
difference over its robust spread across the liver, at that radius, is the score (noise units). The
disc must lie inside the liver and hold no fat or fluid (a fat fissure, the stomach beside the liver);
the ring counts only voxels at liver density that are not enhanced vessels (else the liver between
portal branches reads dark). Spots are local maxima at least 10 mm apart in a slice, 3 mm inside the
liver's edge, on slices where the liver goes on above and below (partial volume with fat reads dark).
The liver is found without a trained model: the dominant enhanced soft-tissue density, the largest
region of it after an in-plane erosion that cuts bridges to the organs it touches, closed and
hole-filled per slice.
"""
from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.evaluate import (at_lesion_conf, image_key, load_phantom_truth, load_results,  # noqa: E402
                               touched_lesions)
from pipeline.series import load_series  # noqa: E402

RADII_MM = (2.5, 3.5, 5.0)
RING_GAP_MM, RING_OUT_MM = 1.5, 6.0
LIVER_MIN_HU, LIVER_MAX_HU = 76.0, 200.0  # enhanced liver; below: muscle, above: kidney cortex, vessels
LIVER_BAND_HU = 22.0  # smoothed HU within this of the liver's density count as liver
VESSEL_HU = 30.0  # smoothed HU this far above the liver: an enhanced vessel, not parenchyma
# below this (1 mm smoothing): fat, air or fluid (bowel content, bile, water). No solid lesion holds any; a
# fat fissure or the stomach beside the liver does. Cysts are left to the detector, which reaches all of them
FAT_HU = 30.0
CUT_MM = 5.0  # in-plane erosion that separates the liver from organs it touches
CLOSE_MM = 5.0
RING_LIVER = 0.5  # at least this share of the ring at liver density (more loses lesions beside vessels)
EDGE_MM = 3.0  # left out along the liver's edge, where partial volume with fat looks dark
PEAK_MM = 10.0  # one spot per this neighbourhood


@dataclass(frozen=True)
class Spot:
    slice_index: int
    row: float
    column: float
    radius_px: float
    score: float  # ring minus disc, in robust standard deviations over the liver


def _image(volume: np.ndarray, spacing_rc: tuple[float, float], slice_mm: float) -> sitk.Image:
    img = sitk.GetImageFromArray(volume)
    img.SetSpacing((float(spacing_rc[1]), float(spacing_rc[0]), float(slice_mm)))
    return img


def _in_plane(radius_mm: float, spacing_rc: tuple[float, float]) -> list[int]:
    return [max(1, round(radius_mm / spacing_rc[1])), max(1, round(radius_mm / spacing_rc[0])), 0]


def _fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for k in range(mask.shape[0]):  # per slice: a lesion open to the edge in 3D is enclosed in its own plane
        if out[k].any():
            out[k] = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(out[k].astype(np.uint8)))) > 0
    return out


def liver_mask(hu: np.ndarray, spacing_rc: tuple[float, float], slice_mm: float
               ) -> tuple[np.ndarray, np.ndarray, float]:
    """The liver of a contrast-enhanced volume [S, R, C]: (organ, band, density). ``organ`` is the liver
    with whatever it encloses in each slice (lesions, vessels); ``band`` the voxels at liver density.
    Found at half resolution in-plane (2 mm smoothing leaves nothing finer to see)."""
    half = hu[:, ::2, ::2].astype(np.float32)
    spacing2 = (2 * spacing_rc[0], 2 * spacing_rc[1])
    smooth = sitk.SmoothingRecursiveGaussian(_image(half, spacing2, slice_mm), [2.0, 2.0, 0.01])
    s = sitk.GetArrayFromImage(smooth)
    soft = s[(s > LIVER_MIN_HU) & (s < LIVER_MAX_HU)]
    empty = np.zeros(hu.shape, bool)
    if soft.size == 0:
        return empty, empty, float("nan")
    counts, edges = np.histogram(soft, bins=np.arange(LIVER_MIN_HU, LIVER_MAX_HU + 2, 2))
    liver_hu = float(edges[int(np.argmax(counts))] + 1.0)
    band = sitk.BinaryThreshold(smooth, liver_hu - LIVER_BAND_HU, liver_hu + LIVER_BAND_HU, 1, 0)
    core = sitk.BinaryErode(band, _in_plane(CUT_MM, spacing2))
    parts = sitk.RelabelComponent(sitk.ConnectedComponent(core), sortByObjectSize=True)
    largest = sitk.BinaryThreshold(parts, 1, 1, 1, 0)
    liver = sitk.And(sitk.BinaryDilate(largest, _in_plane(CUT_MM, spacing2)), band)
    # closed first: a lesion beside a vessel that runs out of the liver is not a hole until it is
    liver = sitk.BinaryMorphologicalClosing(liver, _in_plane(CLOSE_MM, spacing2))
    organ = _fill_holes_per_slice(sitk.GetArrayFromImage(liver) > 0)
    band_arr = sitk.GetArrayFromImage(band) > 0

    def full(mask: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(mask, 2, axis=1), 2, axis=2)[:, :hu.shape[1], :hu.shape[2]]
    return full(organ), full(band_arr & organ), liver_hu


def _disc(radius_px: float, inner_px: float = -1.0) -> np.ndarray:
    n = int(np.ceil(radius_px))
    y, x = np.mgrid[-n:n + 1, -n:n + 1]
    d2 = x * x + y * y
    return ((d2 <= radius_px ** 2) & (d2 > inner_px ** 2)).astype(np.float32)


class _Convolver:
    """Same-size 2D convolutions of [S, R, C] stacks by FFT, zero outside the images; each stack and
    each kernel is transformed once."""

    def __init__(self, shape: tuple[int, int, int], largest_kernel: int) -> None:
        self.shape = shape
        self.n = largest_kernel // 2
        self.size = (shape[1] + 2 * self.n, shape[2] + 2 * self.n)

    def spectrum(self, images: np.ndarray) -> torch.Tensor:
        return torch.fft.rfft2(torch.from_numpy(images.astype(np.float32)), s=self.size)

    def __call__(self, spectrum: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
        k = kernel.shape[0] // 2
        full = torch.fft.irfft2(spectrum * torch.fft.rfft2(torch.from_numpy(kernel), s=self.size), s=self.size)
        return full[:, k:k + self.shape[1], k:k + self.shape[2]]


def score_map(hu: np.ndarray, organ: np.ndarray, parenchyma: np.ndarray, fat: np.ndarray, inside: np.ndarray,
              pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Per voxel, the best score over the radii and the radius (px) that gave it; 0 outside ``inside``.
    The disc must lie in the organ and hold no fat (no liver lesion is fat; fat between the liver and
    the kidney, enclosed in a slice, is); the ring counts liver-density voxels only."""
    kernels = [(r_mm / pixel_mm, _disc(r_mm / pixel_mm),
                _disc((r_mm + RING_OUT_MM) / pixel_mm, (r_mm + RING_GAP_MM) / pixel_mm)) for r_mm in RADII_MM]
    conv = _Convolver(hu.shape, max(ring.shape[0] for _, _, ring in kernels))
    hu32 = hu.astype(np.float32)
    organ_f, paren_f = conv.spectrum(organ), conv.spectrum(parenchyma)
    organ_hu_f, paren_hu_f, fat_f = conv.spectrum(hu32 * organ), conv.spectrum(hu32 * parenchyma), conv.spectrum(fat)
    best = torch.zeros(hu.shape)
    best_radius = torch.zeros(hu.shape)
    inside_t = torch.from_numpy(inside)
    for r, disc, ring in kernels:
        d_n, r_n = conv(organ_f, disc), conv(paren_f, ring)
        d_mean = conv(organ_hu_f, disc) / d_n.clamp(min=1.0)
        r_mean = conv(paren_hu_f, ring) / r_n.clamp(min=1.0)
        no_fat = conv(fat_f, disc) < 0.5
        valid = inside_t & no_fat & (d_n > 0.95 * disc.sum()) & (r_n > RING_LIVER * ring.sum())
        diff = torch.where(valid, r_mean - d_mean, torch.zeros(()))
        sample = diff[valid]
        if sample.numel() < 100:
            continue
        spread = 1.4826 * (sample - sample.median()).abs().median()
        z = diff / spread.clamp(min=1e-3)
        better = z > best
        best = torch.where(better, z, best)
        best_radius = torch.where(better, torch.full((), r), best_radius)
    return best.numpy(), best_radius.numpy()


def find_spots(hu: np.ndarray, spacing_rc: tuple[float, float], slice_mm: float, min_score: float) -> list[Spot]:
    """Hypodense spots in the liver of a PVP volume [S, R, C] (HU) scoring at least ``min_score``."""
    organ, band, liver_hu = liver_mask(hu, spacing_rc, slice_mm)
    if not organ.any():
        return []
    rows = np.flatnonzero(organ.any(axis=(0, 2)))
    cols = np.flatnonzero(organ.any(axis=(0, 1)))
    pad = int(np.ceil((max(RADII_MM) + RING_OUT_MM) / min(spacing_rc))) + 1
    r0, r1 = max(0, rows[0] - pad), min(hu.shape[1], rows[-1] + pad + 1)
    c0, c1 = max(0, cols[0] - pad), min(hu.shape[2], cols[-1] + pad + 1)
    crop = hu[:, r0:r1, c0:c1].astype(np.float32)
    organ, band = organ[:, r0:r1, c0:c1], band[:, r0:r1, c0:c1]
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(_image(crop, spacing_rc, slice_mm),
                                                                    [1.0, 1.0, 0.01]))
    vessel = sitk.GetImageFromArray((smooth > liver_hu + VESSEL_HU).astype(np.uint8))
    vessel = sitk.GetArrayFromImage(sitk.BinaryDilate(vessel, [1, 1, 0])) > 0
    fat = sitk.GetImageFromArray((smooth < FAT_HU).astype(np.uint8))
    fat = sitk.GetArrayFromImage(sitk.BinaryDilate(fat, [1, 1, 0])) > 0
    edge = _in_plane(EDGE_MM, spacing_rc)
    inner = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray(organ.astype(np.uint8)), edge)) > 0
    # the liver must go on above and below: at its dome and tip, partial volume with fat reads as dark
    above, below = np.roll(organ, -1, axis=0), np.roll(organ, 1, axis=0)
    above[-1], below[0] = organ[-1], organ[0]
    inner &= above & below
    pixel_mm = float(np.mean(spacing_rc))
    z, radius = score_map(crop, organ, band & ~vessel, fat, inner, pixel_mm)
    h = int(round(PEAK_MM / pixel_mm)) // 2
    spots = []
    for s, r, c in np.argwhere(z >= min_score):  # few: the local maxima among them are the spots
        if z[s, r, c] >= z[s, max(0, r - h):r + h + 1, max(0, c - h):c + h + 1].max():
            spots.append(Spot(int(s), float(r + r0), float(c + c0), float(radius[s, r, c]), float(z[s, r, c])))
    return spots


def _case(case_dir: Path, min_score: float) -> dict:
    """The filter on one study's PVP: the best spot score on each true lesion, and the false spots."""
    labels = json.loads((case_dir / "labels.json").read_text())
    pvp = next(s for s in labels["series"] if s["phase"] == "PVP")
    series = load_series([case_dir / "dicom" / i["path"] for i in pvp["instances"]])
    g = series.geometry
    truth_boxes = load_phantom_truth(case_dir)[labels["study_instance_uid"]].boxes
    images = [image_key(sop, frame) for sop, frame in zip(series.sop_instance_uids, series.frame_numbers)]
    best: dict[int, float] = {}
    false = []
    for s in find_spots(series.hu, g.pixel_spacing, g.slice_spacing, min_score):
        hit = [lid for lid, (x1, y1, x2, y2) in truth_boxes.get(images[s.slice_index], [])
               if x1 - 2 <= s.column <= x2 + 2 and y1 - 2 <= s.row <= y2 + 2]
        for lid in hit:
            best[lid] = max(best.get(lid, 0.0), s.score)
        if not hit:
            p = g.to_patient(s.slice_index, s.row, s.column)
            gap = min((float(np.linalg.norm(np.subtract(p, les["centre_mm"]))) - max(les["diameters_mm"]) / 2
                       for les in labels["lesions"]), default=float("inf"))
            false.append((s.score, gap))
    return {"study": labels["study_instance_uid"], "false": false,
            "lesions": [{"id": les["lesion_id"], "diameter": max(les["diameters_mm"][:2]),
                         "score": best.get(les["lesion_id"], 0.0)}
                        for les in labels["lesions"] if les.get("contrast_hu", {}).get("PVP") is not None]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("truth", type=Path, nargs="+")
    ap.add_argument("--results", type=Path, help="a liver-node run of the same studies (marks never-proposed lesions)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--min-score", type=float, default=4.5)
    args = ap.parse_args()
    cases = sorted({p.parent for t in args.truth for p in t.rglob("labels.json")})
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(_case, cases, [args.min_score] * len(cases)))
    unproposed: set[tuple[str, int]] = set()
    if args.results:
        results = at_lesion_conf(load_results(args.results), 0.1)
        for t in args.truth:
            for uid, truth in load_phantom_truth(t).items():
                found = results.get(uid, {}).get("lesions", [])
                touched = set().union(*(touched_lesions(les, truth, 0.1) for les in found))
                unproposed |= {(uid, lid) for lid in truth.lesion_contrast_hu if lid not in touched}
    lesions = [(r["study"], les) for r in rows for les in r["lesions"]]
    small = [les for _, les in lesions if les["diameter"] < 10]
    missed = [les for uid, les in lesions if (uid, les["id"]) in unproposed]
    print(f"{len(rows)} studies, {len(lesions)} lesions, {len(small)} under 10 mm"
          + (f", {len(missed)} never proposed by the detector" if args.results else ""))
    print("bar   lesions  <10 mm   never proposed   false spots > 10 mm from a lesion (per case)")
    for bar in np.arange(max(5.0, args.min_score), 10.01, 0.5):
        far = sum(score >= bar and gap > 10 for r in rows for score, gap in r["false"])
        reached = [sum(les["score"] >= bar for les in group) for group in ([les for _, les in lesions], small, missed)]
        print(f"{bar:4.1f}  {reached[0]:4d}  {reached[1]:4d}      {reached[2]:4d}"
              f"             {far:4d} ({far / len(rows):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
