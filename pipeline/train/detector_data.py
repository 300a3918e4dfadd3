"""Export a YOLO detection dataset (one class "lesion") from in-memory phantom cases.

Layout: ``<root>/images/{train,val}/*.png`` (RGB, W400/L40 windowed, resized to ``imgsz``),
``<root>/labels/{train,val}/*.txt`` (``0 cx cy w h`` normalised; empty file = negative) and
``<root>/data.yaml`` with absolute paths. Split is by case (the last ``val_fraction`` of cases).

Two image modes:

- resized (``crop=None``): the whole slice resized so its long side is ``imgsz``;
- native crops (``crop=N``): an ``N x N`` window at the source resolution, placed at random
  but so that a randomly chosen lesion box lies fully inside it. The detector then runs on the
  whole slice at native size (manifest ``imgsz`` = slice size): small lesions keep all their
  pixels while each training image costs only ``N^2``. Boxes cut by the window edge are kept
  (clipped) when at least ``min_visible`` of their area is inside, else dropped.
- upsampled crops (``crop=N, upsample=f``): an ``N/f`` native window resized (bilinear) to
  ``N x N``, so the network learns lesions, noise and edges at the scale it will see when the
  whole slice is run at ``f`` times its size (manifest ``imgsz`` = ``f`` x slice size). Small
  lesions then cover ``f^2`` times the pixels at the same training cost per image.

Small lesions (``small_repeats=R``, crop mode, training split only): a slice holding a box whose
long side is under ``small_box_px`` is exported ``R`` more times, each window placed on one of
those small boxes (stems end ``r1``..``rR``); validation keeps one crop per slice.

Hard negatives (``hard_negatives``, crop mode, training split only): one more window per entry,
centred on a place where a trained detector reported a lesion that is not there (stems end
``h0``, ``h1``, ...), labelled with any true lesion inside it.

Input channels (``channels``): grey replicated (``RGB``, as the published detector), slices k-1, k,
k+1 (``adjacent-slices``) or the slice with the other phase at the same position (``phase-pair``);
see ``pipeline.detect.channels``. Crops cut all three alike. In ``phase-pair`` mode each series gets,
from its own random stream (the crop windows of the other modes stay as they were), either no partner
(``single_phase_fraction`` of series: a study with one phase) or the other phase shifted by up to
``partner_jitter_px`` in x and y, so the network does not learn to rely on a registration that
breathing and table motion do not give in real studies.

Tiny lesions: a box whose area at training scale is below ``min_area_px`` (default 4 px)
is dropped from the labels; such slices are still exported (they count as lesion slices,
not negatives).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.detect.channels import GREY, PHASE_PAIR, check_mode, slice_rgb
from pipeline.imaging import window_u8
from pipeline.phantom import CaseOptions, ContrastPhase, LesionBox, render_case, sample_case

log = logging.getLogger(__name__)

PHASES: tuple[ContrastPhase, ...] = (ContrastPhase.AP, ContrastPhase.PVP)


def other_phase(phase: ContrastPhase) -> ContrastPhase:
    """AP for PVP and PVP for AP: a phantom series' partner (one Frame of Reference, one grid, no motion)."""
    return PHASES[1 - PHASES.index(phase)]


@dataclass(frozen=True)
class HardNegative:
    """A place where a trained detector reported a lesion that is not there (``pipeline.train.hard_negatives``)."""

    case: int  # case index within the export seed
    phase: str  # ContrastPhase value
    slice: int
    cx: float  # box centre, source pixels
    cy: float
    confidence: float


@dataclass(frozen=True)
class ExportOptions:
    seed: int = 1000
    n_cases: int = 40
    imgsz: int = 320
    negative_fraction: float = 0.15  # fraction of lesion-free slices kept as negatives
    val_fraction: float = 0.2
    min_area_px: float = 4.0  # at training scale
    n_slices: int = 40
    slice_thickness_mm: float = 5.0
    crop: int | None = None  # native-resolution crop size; None = resize whole slice to imgsz
    min_visible: float = 0.6  # crop mode: fraction of a cut box that must stay inside
    upsample: float = 1.0  # crop mode: the window is crop/upsample native px, resized to crop px
    small_repeats: int = 0  # crop mode, train split: extra crops per slice placed on a box smaller than small_box_px
    small_box_px: float = 16.0  # long side in native px (about 11 mm at 0.71 mm/px)
    hard_negatives: tuple[HardNegative, ...] = ()  # crop mode, train split: an extra window centred on each
    channels: str = GREY  # pipeline.detect.channels mode
    single_phase_fraction: float = 0.2  # phase-pair: series shown without their partner
    partner_jitter_px: int = 2  # phase-pair: largest shift of the partner in x and y (native px)

    def __post_init__(self) -> None:
        check_mode(self.channels)
        if self.upsample < 1.0 or (self.upsample != 1.0 and not self.crop):
            raise ValueError(f"upsample must be >= 1 and needs crop mode, got upsample={self.upsample}, crop={self.crop}")
        if self.small_repeats and not self.crop:
            raise ValueError(f"small_repeats needs crop mode, got small_repeats={self.small_repeats}, crop={self.crop}")
        if self.hard_negatives and not self.crop:
            raise ValueError(f"hard_negatives need crop mode, got crop={self.crop}")

    @property
    def window(self) -> int | None:
        """Native-resolution side of a crop window."""
        return round(self.crop / self.upsample) if self.crop else None


@dataclass(frozen=True)
class ExportSummary:
    root: Path
    data_yaml: Path
    n_train: int
    n_val: int
    n_boxes: int
    n_dropped_tiny: int


def case_options(opts: ExportOptions) -> CaseOptions:
    return CaseOptions(phases=PHASES, n_slices=opts.n_slices, slice_thickness_mm=opts.slice_thickness_mm)


def yolo_lines(boxes: Sequence[LesionBox], width: int, height: int, scale: float,
               min_area_px: float) -> tuple[list[str], int]:
    """Label lines ``0 cx cy w h`` (normalised by the source width/height) and the number dropped.

    ``scale`` is training size / source size, used only for the tiny-box threshold.
    """
    lines: list[str] = []
    dropped = 0
    for b in boxes:
        w, h = b.x2 - b.x1, b.y2 - b.y1
        if w * h * scale * scale < min_area_px:
            dropped += 1
            continue
        cx, cy = (b.x1 + b.x2) / 2.0 / width, (b.y1 + b.y2) / 2.0 / height
        lines.append(f"0 {cx:.6f} {cy:.6f} {w / width:.6f} {h / height:.6f}")
    return lines, dropped


def crop_window(boxes: Sequence[LesionBox], width: int, height: int, crop: int,
                rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a ``crop`` window holding one randomly chosen box (any place if none)."""
    max_x, max_y = max(0, width - crop), max(0, height - crop)
    if not boxes:
        return int(rng.integers(0, max_x + 1)), int(rng.integers(0, max_y + 1))
    b = boxes[int(rng.integers(0, len(boxes)))]
    # window must start at or before the box start and end at or after the box end
    lo_x, hi_x = max(0, int(np.ceil(b.x2)) - crop), min(max_x, int(b.x1))
    lo_y, hi_y = max(0, int(np.ceil(b.y2)) - crop), min(max_y, int(b.y1))
    x0 = int(rng.integers(lo_x, hi_x + 1)) if hi_x >= lo_x else min(max_x, max(0, int(b.x1)))
    y0 = int(rng.integers(lo_y, hi_y + 1)) if hi_y >= lo_y else min(max_y, max(0, int(b.y1)))
    return x0, y0


def boxes_in_window(boxes: Sequence[LesionBox], x0: int, y0: int, crop: int,
                    min_visible: float) -> tuple[list[LesionBox], int]:
    """Boxes shifted into window coordinates and clipped; those mostly outside are dropped (counted)."""
    kept: list[LesionBox] = []
    dropped = 0
    for b in boxes:
        x1, y1 = max(b.x1 - x0, 0.0), max(b.y1 - y0, 0.0)
        x2, y2 = min(b.x2 - x0, float(crop)), min(b.y2 - y0, float(crop))
        area = (b.x2 - b.x1) * (b.y2 - b.y1)
        if x2 <= x1 or y2 <= y1 or area <= 0:
            continue  # wholly outside: this crop simply does not show it
        if (x2 - x1) * (y2 - y1) < min_visible * area:
            dropped += 1
            continue
        kept.append(replace(b, x1=x1, y1=y1, x2=x2, y2=y2))
    return kept, dropped


def centred_window(cx: float, cy: float, width: int, height: int, crop: int) -> tuple[int, int]:
    """Top-left corner of a ``crop`` window centred on (cx, cy), moved inside the image."""
    x0 = int(np.clip(round(cx - crop / 2), 0, max(0, width - crop)))
    y0 = int(np.clip(round(cy - crop / 2), 0, max(0, height - crop)))
    return x0, y0


def shifted(volume: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """[N, H, W] moved by (dy, dx) pixels, edges repeated into the uncovered border."""
    h, w = volume.shape[1:]
    padded = np.pad(volume, ((0, 0), (abs(dy), abs(dy)), (abs(dx), abs(dx))), mode="edge")
    return padded[:, abs(dy) - dy:abs(dy) - dy + h, abs(dx) - dx:abs(dx) - dx + w]


def partners(volumes: dict[ContrastPhase, np.ndarray], opts: ExportOptions,
             rng: np.random.Generator) -> dict[ContrastPhase, np.ndarray | None]:
    """Per phase of one case, the partner stack its ``phase-pair`` images carry (None: no partner)."""
    out: dict[ContrastPhase, np.ndarray | None] = {}
    for phase in PHASES:
        other = volumes[other_phase(phase)]
        if rng.random() < opts.single_phase_fraction:
            out[phase] = None
        else:
            j = opts.partner_jitter_px
            out[phase] = shifted(other, int(rng.integers(-j, j + 1)), int(rng.integers(-j, j + 1)))
    return out


def _view(image: np.ndarray, boxes: Sequence[LesionBox], target: Sequence[LesionBox], opts: ExportOptions,
          rng: np.random.Generator, centre: tuple[float, float] | None = None,
          ) -> tuple[np.ndarray, Sequence[LesionBox], int]:
    """The whole slice, or (crop mode) a window holding one of ``target`` or centred on ``centre``:
    (pixels, boxes in it, boxes cut). ``image`` is [H, W, 3]."""
    if not opts.crop:
        return image, boxes, 0
    height, width = image.shape[:2]
    if centre is None:
        x0, y0 = crop_window(target, width, height, opts.window, rng)
    else:
        x0, y0 = centred_window(*centre, width, height, opts.window)
    kept, cut = boxes_in_window(boxes, x0, y0, opts.window, opts.min_visible)
    return image[y0:y0 + opts.window, x0:x0 + opts.window], kept, cut


def _write_sample(image_path: Path, label_path: Path, pixels: np.ndarray, boxes: Sequence[LesionBox],
                  scale: float, opts: ExportOptions) -> tuple[int, int]:
    """One training image (resized by ``scale``) and its YOLO label file; (boxes written, boxes dropped)."""
    out_h, out_w = pixels.shape[:2]
    lines, dropped = yolo_lines(boxes, out_w, out_h, scale, opts.min_area_px)
    img = Image.fromarray(np.ascontiguousarray(pixels))
    if scale != 1.0:
        img = img.resize((round(out_w * scale), round(out_h * scale)), Image.BILINEAR)
    img.save(image_path, compress_level=1)
    label_path.write_text("".join(x + "\n" for x in lines))
    return len(lines), dropped


def export_dataset(root: Path, opts: ExportOptions) -> ExportSummary:
    root = Path(root).resolve()
    n_val = max(1, round(opts.n_cases * opts.val_fraction))
    rng = np.random.default_rng([opts.seed, 77])
    pair_rng = np.random.default_rng([opts.seed, 78])
    counts = {"train": 0, "val": 0}
    n_boxes = n_dropped = 0
    for split in counts:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    hard_by_slice: dict[tuple[int, str, int], list[HardNegative]] = {}
    for hard in opts.hard_negatives:
        hard_by_slice.setdefault((hard.case, hard.phase, hard.slice), []).append(hard)
    for index in range(opts.n_cases):
        split = "val" if index >= opts.n_cases - n_val else "train"
        case = render_case(sample_case(opts.seed, index, case_options(opts)))
        volumes = {phase: window_u8(case.volumes[phase]) for phase in PHASES}
        partner = partners(volumes, opts, pair_rng) if opts.channels == PHASE_PAIR else {}
        for phase in PHASES:
            vol = volumes[phase]
            _, height, width = vol.shape
            scale = opts.upsample if opts.crop else opts.imgsz / max(height, width)
            for k in range(vol.shape[0]):
                boxes = case.boxes[k]
                stem = f"s{opts.seed}_c{index:04d}_{phase.value}_{k:03d}"

                def emit(suffix: str, view: tuple[np.ndarray, Sequence[LesionBox], int]) -> None:
                    nonlocal n_boxes, n_dropped
                    pixels, kept, cut = view
                    written, dropped = _write_sample(root / "images" / split / f"{stem}{suffix}.png",
                                                     root / "labels" / split / f"{stem}{suffix}.txt", pixels, kept,
                                                     scale, opts)
                    n_boxes += written
                    n_dropped += cut + dropped
                    counts[split] += 1

                image = slice_rgb(vol, k, opts.channels, partner_u8=partner.get(phase))
                # the detector's own confident mistakes, shown as background (labelled with any true lesion there)
                for j, hard in enumerate(hard_by_slice.get((index, phase.value, k), []) if split == "train" else []):
                    emit(f"h{j}", _view(image, boxes, boxes, opts, rng, (hard.cx, hard.cy)))
                if not boxes and rng.random() >= opts.negative_fraction:
                    continue
                small = [b for b in boxes if max(b.x2 - b.x1, b.y2 - b.y1) < opts.small_box_px]
                repeats = opts.small_repeats if small and split == "train" else 0
                for rep in range(1 + repeats):
                    # repeats place the window on a small lesion: more looks at the lesions most often missed
                    emit(f"r{rep}" if rep else "", _view(image, boxes, small if rep else boxes, opts, rng))
        log.info("case %d/%d exported (%s)", index + 1, opts.n_cases, split)
    data_yaml = root / "data.yaml"
    data_yaml.write_text(f"path: {root}\ntrain: {root / 'images' / 'train'}\nval: {root / 'images' / 'val'}\n"
                         "nc: 1\nnames:\n  0: lesion\n")
    return ExportSummary(root, data_yaml, counts["train"], counts["val"], n_boxes, n_dropped)
