#!/usr/bin/env python3
"""Montage of one phantom case per lesion class across NC / AP / PVP at W400/L40.

Writes ``docs/img/phantom-montage.png`` (rows: HCC, ICC, MET, FNH, HEM, CYST; columns: phases),
each tile a crop centred on the class's largest lesion on its largest slice, with the ground-truth
box drawn in the PVP column only. Run from the repository root:

    .venv/bin/python tools/phantom_montage.py [--out docs/img/phantom-montage.png] [--seed 0]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.phantom import CaseOptions, ContrastPhase, LesionClass, render_case, sample_case  # noqa: E402

log = logging.getLogger("phantom_montage")

PHASES = (ContrastPhase.NC, ContrastPhase.AP, ContrastPhase.PVP)
MIN_DIAMETER = {LesionClass.MET: 16.0, LesionClass.CYST: 16.0}
CROP = 192  # pixels of the 512 image around the lesion, resampled to the tile size


def textbook(les) -> bool:  # noqa: ANN001 - LesionSpec
    """Prefer lesions that show their class's hallmark (capsule, scar, no flash filling)."""
    app = les.appearance
    if les.cls is LesionClass.HCC:
        return app.capsule is not None and app.necrosis_hu is None
    if les.cls is LesionClass.FNH:
        return app.scar is not None
    if les.cls is LesionClass.HEM:
        return app.fill is not None and app.fill.ap < 0.5
    return True


def window(hu: np.ndarray, level: float = 40.0, width: float = 400.0) -> np.ndarray:
    lo = level - width / 2
    return (np.clip((hu.astype(np.float32) - lo) / width, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def pick_case(cls: LesionClass, seed: int, slices: int, thickness: float):  # noqa: ANN201 - returns (Case, k, id)
    """The first case (from ``seed`` upward) whose ``cls`` lesion is at least moderately large."""
    options = CaseOptions(phases=PHASES, n_slices=slices, slice_thickness_mm=thickness, lesion_classes=(cls,))
    for s in range(seed, seed + 200):
        spec = sample_case(s, 0, options)
        mine = [les for les in spec.lesions if les.cls is cls]
        if not mine:
            continue
        big = max(mine, key=lambda les: max(les.radii_mm))
        if 2 * min(big.radii_mm) < MIN_DIAMETER.get(cls, 28.0) or not textbook(big):
            continue
        case = render_case(spec)
        areas = [(b.area_px, k) for k, bs in enumerate(case.boxes) for b in bs if b.lesion_id == big.lesion_id]
        if areas:
            return case, max(areas)[1], big.lesion_id
    raise RuntimeError(f"no case with a large {cls.value} lesion near seed {seed}")


def tile(case, k: int, lesion_id: int, phase: ContrastPhase, size: int, draw_box: bool) -> Image.Image:  # noqa: ANN001
    img = case.volumes[phase][k]
    box = next(b for b in case.boxes[k] if b.lesion_id == lesion_id)
    cx, cy = (box.x1 + box.x2) // 2, (box.y1 + box.y2) // 2
    half = CROP // 2
    x0 = int(np.clip(cx - half, 0, img.shape[1] - 2 * half))
    y0 = int(np.clip(cy - half, 0, img.shape[0] - 2 * half))
    crop = Image.fromarray(window(img[y0:y0 + 2 * half, x0:x0 + 2 * half])).convert("RGB")
    if draw_box:
        ImageDraw.Draw(crop).rectangle([box.x1 - x0 - 2, box.y1 - y0 - 2, box.x2 - x0 + 1, box.y2 - y0 + 1],
                                       outline=(255, 200, 0))
    return crop.resize((size, size), Image.BILINEAR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/phantom-montage.png"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tile", type=int, default=224, help=f"tile size in pixels (a {CROP} px crop resampled)")
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--thickness", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

    label_w, head_h, t = 64, 22, args.tile
    sheet = Image.new("RGB", (label_w + t * len(PHASES), head_h + t * len(LesionClass)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for j, phase in enumerate(PHASES):
        draw.text((label_w + j * t + t // 2 - 10, 5), phase.value, fill=(255, 255, 255))
    for i, cls in enumerate(LesionClass):
        case, k, lesion_id = pick_case(cls, args.seed, args.slices, args.thickness)
        log.info("class=%s seed=%d slice=%d", cls.value, case.spec.seed, k)
        draw.text((6, head_h + i * t + t // 2 - 6), cls.value, fill=(255, 255, 255))
        for j, phase in enumerate(PHASES):
            sheet.paste(tile(case, k, lesion_id, phase, t, draw_box=phase is ContrastPhase.PVP),
                        (label_w + j * t, head_h + i * t))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    log.info("wrote %s bytes=%d", args.out, args.out.stat().st_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
