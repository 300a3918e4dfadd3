"""Turn a StudyResult into DICOM result files on disk (SR, then SCs), for the worker and `run`.

Gathers what the report builders need from the source series: the key slices' headers and
windowed pixels, and a Grad-CAM map per lesion when a heatmap function is given.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from .analyzer import SeriesInput
from .hierarchy import Decision
from .imaging import window_u8
from .modality_lut import to_hu
from .report import build_result_objects
from .result import StudyResult
from .series import is_localizer

log = logging.getLogger(__name__)

# crop (224x224 uint8) and the lesion's decision -> map in [0, 1] aligned with the crop
HeatmapFn = Callable[[np.ndarray, Decision], np.ndarray]


EVIDENCE_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "ImageType", "Rows"]
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # our own overlays, if a PACS routes them back


def _sources(result: StudyResult, series: Sequence[SeriesInput]) -> dict[str, tuple[Path, Dataset]]:
    """SOP Instance UID -> (file, its UIDs only) for every image of the series the analysis used, localizers
    left out as ``pipeline.series`` leaves them out: the SR lists them all as its evidence (TID 1500: the
    instances the report was made from). One header parse each; full headers are read only where needed."""
    used = {u.series_uid for u in result.series if u.used} or {s.series_uid for s in series}
    found: dict[str, tuple[Path, Dataset]] = {}
    for s in series:
        if s.series_uid not in used:
            continue
        for path in s.paths:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=EVIDENCE_TAGS)
                sop, sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
            except (pydicom.errors.InvalidDicomError, OSError, AttributeError, EOFError):
                continue
            if "Rows" not in ds or sop_class.startswith(SECONDARY_CAPTURE_PREFIX) or is_localizer(ds):
                continue
            found.setdefault(sop, (path, ds))
    return found


def write_result_objects(result: StudyResult, series: Sequence[SeriesInput], out_dir: Path, *, revision: int = 1,
                         predecessor_sr: Path | None = None, heatmap: HeatmapFn | None = None,
                         uid_salt: str = "") -> list[Path]:
    """Build and write the result objects; returns their paths, SR first (``uid_salt``: pipeline.report)."""
    from .classify.preprocess import crop_around_box

    sources = _sources(result, series)
    key_images = {r.lesion.primary.key_image for r in result.lesions}
    key_sops = {sop for sop, _ in key_images}
    # full headers: the key slices (with pixels), or without them the one the SR takes its patient from
    full = key_sops or set(sorted(sources)[:1])
    headers: dict[str, Dataset] = {sop: uids for sop, (_, uids) in sources.items() if sop not in full}
    slices: dict[tuple[str, int | None], np.ndarray] = {}
    for sop, (path, _) in sources.items():
        if sop not in full:
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=sop not in key_sops)
        if "PixelData" in ds:
            hu = to_hu(ds, ds.pixel_array)
            for image_sop, frame in key_images:
                if image_sop == sop:
                    slices[sop, frame] = window_u8(hu if frame is None else hu.reshape(-1, *hu.shape[-2:])[frame - 1])
            del ds.PixelData
        headers[sop] = ds
    maps: dict[int, np.ndarray] = {}
    if heatmap is not None:
        for r in result.lesions:
            key = r.lesion.primary.key
            image = slices.get(r.lesion.primary.key_image)
            if image is not None:
                maps[r.lesion.index] = heatmap(crop_around_box(image, (key.x1, key.y1, key.x2, key.y2)), r.decision)
    predecessor = pydicom.dcmread(predecessor_sr) if predecessor_sr and predecessor_sr.exists() else None
    objects = build_result_objects(result, headers, slices, maps, revision=revision, predecessor_sr=predecessor,
                                   uid_salt=uid_salt)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(objects):
        name = "sr.dcm" if i == 0 else f"sc-{i:03d}.dcm"
        tmp = out_dir / (name + ".tmp")
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, out_dir / name)
        paths.append(out_dir / name)
    return paths
