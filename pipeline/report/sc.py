"""Secondary Capture images (highdicom SCImage, RGB 8-bit) of the key slices, burned-in results.

Per lesion: the key slice (caller gives it windowed W400/L40 as uint8), the Grad-CAM heatmap blended
over the classifier's crop box, the lesion box, class label and probability. Per case: the key slice
of the largest lesion with every lesion's box on that slice and a text panel. Each carries a visible
"AI result - not for diagnostic use" mark and Burned In Annotation YES on purpose; no patient name,
ID or date is ever drawn. The images go into the source study, in their own series, with the
Source Image Sequence pointing at the source slice.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence

from ..classify.preprocess import crop_side
from ..hierarchy import Decision
from ..lesions import Box2D
from ..result import LesionResult, StudyResult
from .source_header import patient_orientation, reference_header

MARK = "AI result - not for diagnostic use"
MIN_SIDE = 512  # upscale small slices so the text stays legible
SC_SERIES_NUMBER = 902
SERIES_DESCRIPTION_SC = "AI result - key images (not for diagnostic use)"
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
)
BOX_COLOURS = ((255, 64, 64), (64, 200, 255), (255, 210, 0), (120, 255, 120), (255, 120, 255))


class SCBuildError(ValueError):
    """Inputs that cannot make a Secondary Capture image."""


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVuSans from the system or matplotlib's bundled copy; PIL's bitmap font otherwise."""
    paths = list(FONT_CANDIDATES)
    try:
        import matplotlib

        paths.append(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"))
    except ImportError:
        pass
    for p in paths:
        if Path(p).is_file():
            return ImageFont.truetype(p, size)
    return ImageFont.load_default()


def heatmap_box(box: Box2D) -> tuple[int, int, int]:
    """(left, top, side) of the classifier crop around the box: where a 224 Grad-CAM map lies."""
    side = crop_side(box.x2 - box.x1, box.y2 - box.y1)
    cx, cy = (box.x1 + box.x2) / 2.0, (box.y1 + box.y2) / 2.0
    return math.floor(cx - side / 2.0 + 0.5), math.floor(cy - side / 2.0 + 0.5), side


def _colormap(v: np.ndarray) -> np.ndarray:
    """Jet-like colours for v in [0, 1] -> [..., 3] float in [0, 255]."""
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.stack([r, g, b], axis=-1) * 255.0


def _blend_heatmap(rgb: np.ndarray, heatmap: np.ndarray, box: Box2D, alpha: float = 0.45) -> np.ndarray:
    hm = np.asarray(heatmap, dtype=np.float32)
    if hm.ndim != 2 or not np.all(np.isfinite(hm)):
        raise SCBuildError("heatmap must be a finite 2-D array")
    left, top, side = heatmap_box(box)
    hm = np.asarray(Image.fromarray(np.clip(hm, 0, 1)).resize((side, side), Image.BILINEAR))
    h, w = rgb.shape[:2]
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + side, h), min(left + side, w)
    if y1 <= y0 or x1 <= x0:
        return rgb
    part = hm[y0 - top:y1 - top, x0 - left:x1 - left]
    a = (alpha * part)[..., None]
    out = rgb.astype(np.float32)
    out[y0:y1, x0:x1] = (1 - a) * out[y0:y1, x0:x1] + a * _colormap(part)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _canvas(slice_u8: np.ndarray, heatmap: np.ndarray | None = None, box: Box2D | None = None
            ) -> tuple[Image.Image, float]:
    s = np.asarray(slice_u8)
    if s.ndim != 2 or s.dtype != np.uint8:
        raise SCBuildError("slice must be a 2-D uint8 array (windowed W400/L40)")
    rgb = np.repeat(s[..., None], 3, axis=2)
    if heatmap is not None and box is not None:
        rgb = _blend_heatmap(rgb, heatmap, box)
    scale = max(1.0, MIN_SIDE / min(s.shape))
    img = Image.fromarray(rgb, "RGB")
    if scale > 1.0:
        img = img.resize((round(s.shape[1] * scale), round(s.shape[0] * scale)), Image.BILINEAR)
    return img, scale


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int,
           fill=(255, 255, 255)) -> None:
    f = font(size)
    l, t, r, b = draw.textbbox(xy, text, font=f)
    draw.rectangle((l - 3, t - 2, r + 3, b + 2), fill=(0, 0, 0))
    draw.text(xy, text, font=f, fill=fill)


def _box(draw: ImageDraw.ImageDraw, box: Box2D, scale: float, colour, width: int = 3) -> tuple[float, float, float, float]:
    xy = (box.x1 * scale, box.y1 * scale, box.x2 * scale, box.y2 * scale)
    draw.rectangle(xy, outline=colour, width=width)
    return xy


def _mark(draw: ImageDraw.ImageDraw, img: Image.Image) -> None:
    size = max(14, img.width // 32)
    _label(draw, (8, img.height - size - 10), MARK, size, fill=(255, 220, 0))


def _sc(pixels: np.ndarray, ref: Dataset, series_uid: str, series_number: int, sop_uid: str,
        instance_number: int, manufacturer: str, description: str, frame: int | None = None,
        heatmap: bool = False) -> hd.sc.SCImage:
    ref = reference_header(ref)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        patient_orientation=patient_orientation(ref),  # the source's pixel grid, drawn unturned
        series_description=SERIES_DESCRIPTION_SC,
    )
    sc.copy_patient_and_study_information(ref)  # all of both modules (issuer of patient ID...), as the SR
    if "Laterality" not in sc:
        sc.Laterality = ""  # type 2C in General Series; present and empty (dciodvfy errs on absent)
    sc.BurnedInAnnotation = "YES"  # deliberately: results are drawn, no patient identifiers
    src = Dataset()
    src.ReferencedSOPClassUID = ref.SOPClassUID
    src.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    if frame is not None:  # the key image is one frame of a multi-frame (Enhanced CT) instance
        src.ReferencedFrameNumber = frame
    sc.SourceImageSequence = DicomSequence([src])
    sc.ImageComments = f"{description}. {MARK}."[:10240]
    drawn = "AI results and class-activation heatmap" if heatmap else "AI results"
    sc.DerivationDescription = f"Key slice, W400/L40, with {drawn} burned in"
    return sc


def _probability_line(d: Decision) -> str:
    return f"{d.cls} p={d.probabilities.get(d.cls, 0.0):.2f}  p(malignant)={d.p_malignant:.2f}"


def render_lesion(slice_u8: np.ndarray, r: LesionResult, heatmap: np.ndarray | None = None) -> np.ndarray:
    box = r.lesion.primary.key
    img, scale = _canvas(slice_u8, heatmap, box)
    draw = ImageDraw.Draw(img)
    x1, y1, x2, y2 = _box(draw, box, scale, BOX_COLOURS[(r.lesion.index - 1) % len(BOX_COLOURS)])
    size = max(14, img.width // 28)
    label = f"Lesion {r.lesion.index}: {_probability_line(r.decision)}"
    ty = y1 - size - 8 if y1 - size - 8 > 0 else y2 + 6
    _label(draw, (max(4.0, min(x1, img.width - draw.textlength(label, font=font(size)) - 8)), ty), label, size)
    v = r.lesion.primary
    _label(draw, (8, 8), f"{v.phase}  long {v.long_axis_mm:.1f} mm  short {v.short_axis_mm:.1f} mm"
                         + ("  heatmap: Grad-CAM" if heatmap is not None else ""), max(12, size - 4))
    _mark(draw, img)
    return np.asarray(img, dtype=np.uint8)


def lead_lesion(result: StudyResult) -> LesionResult:
    """The lesion whose key image the case summary shows: the largest, in mm2."""
    return max(result.lesions, key=lambda r: r.lesion.primary.key_area_mm2)


def render_case_summary(slice_u8: np.ndarray, result: StudyResult) -> np.ndarray:
    key_image = lead_lesion(result).lesion.primary.key_image
    img, scale = _canvas(slice_u8)
    draw = ImageDraw.Draw(img)
    for r in result.lesions:
        for v in r.lesion.views:
            for b, image in zip(v.boxes, v.box_images):
                if image == key_image:
                    x1, y1, _, _ = _box(draw, b, scale, BOX_COLOURS[(r.lesion.index - 1) % len(BOX_COLOURS)])
                    _label(draw, (x1, max(0.0, y1 - 22)), str(r.lesion.index), 16)
    panel_w = max(360, img.width // 2)
    out = Image.new("RGB", (img.width + panel_w, img.height), (0, 0, 0))
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    size = max(14, img.height // 30)
    f = font(size)
    lines = []
    if result.case is not None:
        c = result.case
        lines += [f"Case: {c.cls} ({'malignant' if c.malignant else 'benign'})", f"p(malignant) = {c.p_malignant:.2f}"]
    lines += [f"Phases: {result.phase_mode}", f"Lesions: {len(result.lesions)}"]
    # What fits above the mark; the rest is named, the SR lists every lesion.
    room = (out.height - 12 - (max(14, out.width // 32) + 10) - 8) // (size + 8) - len(lines)
    shown = result.lesions if len(result.lesions) <= room else result.lesions[:max(room - 1, 0)]
    for r in shown:
        v = r.lesion.primary
        lines.append(f" {r.lesion.index}: {r.decision.cls} p={r.decision.probabilities.get(r.decision.cls, 0):.2f}"
                     f"  {v.long_axis_mm:.0f} mm")
    if len(shown) < len(result.lesions):
        lines.append(f" ... and {len(result.lesions) - len(shown)} more (see the SR)")
    y = 12
    for line in lines:
        draw.text((img.width + 12, y), line, font=f, fill=(255, 255, 255))
        y += size + 8
    _mark(draw, out)
    return np.asarray(out, dtype=np.uint8)


def build_lesion_sc(r: LesionResult, source: Dataset, slice_u8: np.ndarray, *, series_instance_uid: str,
                    sop_instance_uid: str, instance_number: int, heatmap: np.ndarray | None = None,
                    series_number: int = SC_SERIES_NUMBER, manufacturer: str = "liver-node") -> hd.sc.SCImage:
    """SC of one lesion's key slice; ``source`` is the key slice's header, ``heatmap`` a map
    (any square size, values in [0, 1]) aligned with the classifier crop box (``heatmap_box``)."""
    if source.SOPInstanceUID != r.lesion.primary.key_sop_instance_uid:
        raise SCBuildError("source dataset is not the lesion's key slice")
    pixels = render_lesion(slice_u8, r, heatmap)
    return _sc(pixels, source, series_instance_uid, series_number, sop_instance_uid, instance_number,
               manufacturer, f"Lesion {r.lesion.index}: {r.decision.cls}", r.lesion.primary.key_frame_number,
               heatmap is not None)


def build_case_summary_sc(result: StudyResult, source: Dataset, slice_u8: np.ndarray, *, series_instance_uid: str,
                          sop_instance_uid: str, instance_number: int, series_number: int = SC_SERIES_NUMBER,
                          manufacturer: str = "liver-node") -> hd.sc.SCImage:
    """Case summary on the key slice of the largest lesion (``source`` is that slice's header)."""
    if not result.lesions:
        raise SCBuildError("a case summary image needs at least one lesion")
    pixels = render_case_summary(slice_u8, result)
    d = result.case
    return _sc(pixels, source, series_instance_uid, series_number, sop_instance_uid, instance_number,
               manufacturer, f"Case summary: {d.cls if d else 'n/a'}", lead_lesion(result).lesion.primary.key_frame_number)
