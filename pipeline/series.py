"""Read one CT series from disk into a HU volume with its patient-coordinate geometry.

Slices are sorted by position along the slice normal (not by InstanceNumber, which scanners
number either way). Compressed transfer syntaxes decode through pydicom's pylibjpeg plugins.
Irregular input is refused with a specific reason (``SeriesError``) or, when analysis is still
sound slice by slice, kept with a note (``LoadedSeries.notes``): missing slices, localizers mixed in.
"""
from __future__ import annotations

import errno
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from .header_values import functional_group
from .modality_lut import to_hu

log = logging.getLogger(__name__)

# The machine, not the file: out of descriptors or memory. Such an error reaches the caller (the node
# retries the study later) instead of dropping the file as unreadable and analysing the rest.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
AXIAL_TOLERANCE = 0.95  # |normal . z| at least this: within ~18 degrees of a true axial plane


class SeriesError(Exception):
    """The series cannot be analysed; the message says why (no patient data in it)."""


@dataclass(frozen=True)
class Geometry:
    """Maps (slice, row, column) indices to patient coordinates in mm (DICOM LPS)."""

    origins: np.ndarray  # [S, 3] ImagePositionPatient of each sorted slice
    row_direction: np.ndarray  # [3] direction of increasing column index (IOP first triplet)
    column_direction: np.ndarray  # [3] direction of increasing row index (IOP second triplet)
    pixel_spacing: tuple[float, float]  # (between rows, between columns) in mm
    frame_of_reference_uid: str | None

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_direction, self.column_direction)

    @property
    def positions(self) -> np.ndarray:
        return self.origins @ self.normal

    @property
    def slice_spacing(self) -> float:
        pos = self.positions
        return float(np.median(np.diff(pos))) if len(pos) > 1 else 0.0

    def to_patient(self, slice_index: float, row: float, column: float) -> np.ndarray:
        """Patient coordinates (mm) of a pixel centre; fractional indices interpolate."""
        i0 = int(np.clip(np.floor(slice_index), 0, len(self.origins) - 1))
        i1 = min(i0 + 1, len(self.origins) - 1)
        t = float(slice_index) - i0
        origin = self.origins[i0] * (1 - t) + self.origins[i1] * t
        return (origin + column * self.pixel_spacing[1] * self.row_direction
                + row * self.pixel_spacing[0] * self.column_direction)

    def to_index(self, point_mm) -> tuple[int, float, float] | None:
        """(nearest slice, row, column) of a patient point, or None when it lies more than one slice
        spacing beyond the volume. Row and column are pixel-centre indices (fractional)."""
        positions = self.positions
        along = float(np.dot(point_mm, self.normal))
        i = int(np.argmin(np.abs(positions - along)))
        if abs(positions[i] - along) > max(abs(self.slice_spacing), 1e-3):
            return None
        d = np.asarray(point_mm, dtype=np.float64) - self.origins[i]
        return (i, float(d @ self.column_direction) / self.pixel_spacing[0],
                float(d @ self.row_direction) / self.pixel_spacing[1])


@dataclass(frozen=True)
class LoadedSeries:
    series_uid: str
    hu: np.ndarray  # [S, rows, columns] float32, sorted by position along the normal
    geometry: Geometry
    sop_instance_uids: tuple[str, ...]  # per sorted slice (repeated for the frames of one multi-frame file)
    frame_numbers: tuple[int | None, ...]  # 1-based frame per sorted slice for multi-frame instances
    sop_class_uid: str
    description: str
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class _Slice:
    sop_instance_uid: str
    frame: int | None
    origin: np.ndarray
    orientation: tuple[float, ...]
    spacing: tuple[float, float]
    pixels: np.ndarray  # HU


def _hu(ds: Dataset) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as exc:  # noqa: BLE001 - decoders fail on bad data with anything: StopIteration on
        # truncated frames, a Rust panic (a BaseException) from pylibjpeg-rle on corrupt RLE
        if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
            raise
        raise SeriesError(f"pixel data cannot be decoded ({type(exc).__name__}; transfer syntax "
                          f"{ds.file_meta.get('TransferSyntaxUID', '?')})") from None
    try:
        return to_hu(ds, pixels)
    except ValueError as exc:  # a non-finite rescale would turn every pixel into NaN
        raise SeriesError(str(exc)) from None


def _vector(value, n: int) -> np.ndarray:
    """A position (3) or orientation (6) as floats; another count is malformed (ValueError)."""
    v = np.array([float(x) for x in value], dtype=float)
    if v.shape != (n,):
        raise ValueError(f"{n} values expected, got {v.size}")
    return v


def _frames(ds: Dataset) -> list[_Slice]:
    """One _Slice per frame: classic single-frame CT or Enhanced CT with per-frame positions."""
    uid = str(ds.SOPInstanceUID)
    if int(ds.get("NumberOfFrames", 1) or 1) == 1 and "ImagePositionPatient" in ds:
        return [_Slice(uid, None, _vector(ds.ImagePositionPatient, 3), tuple(_vector(ds.ImageOrientationPatient, 6)),
                       (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])), _hu(ds))]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        raise SeriesError("multi-frame instance without per-frame functional groups")
    volume = _hu(ds)
    if volume.ndim == 2:
        volume = volume[None]
    out = []
    for i in range(len(per_frame)):
        def group(name: str) -> Dataset:
            item = functional_group(ds, name, i)
            if item is None:
                raise SeriesError(f"multi-frame instance lacks {name}")
            return item

        measures = group("PixelMeasuresSequence")
        out.append(_Slice(uid, i + 1, _vector(group("PlanePositionSequence").ImagePositionPatient, 3),
                          tuple(_vector(group("PlaneOrientationSequence").ImageOrientationPatient, 6)),
                          (float(measures.PixelSpacing[0]), float(measures.PixelSpacing[1])), volume[i]))
    return out


def read_datasets(paths: Iterable[Path]) -> tuple[list[Dataset], list[str]]:
    """Read DICOM files, skipping files that are not DICOM (with a note, not an error)."""
    datasets, notes = [], []
    skipped = 0
    for p in paths:
        try:
            datasets.append(pydicom.dcmread(p))
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                raise
            skipped += 1
        except Exception:  # noqa: BLE001 - a truncated header raises struct.error, BytesLengthException...
            skipped += 1
    if skipped:
        notes.append(f"{skipped} non-DICOM or unreadable files skipped")
    return datasets, notes


def is_localizer(ds: Dataset) -> bool:
    """A scout image inside a series: never a slice of the volume."""
    return "LOCALIZER" in [str(v).upper() for v in ds.get("ImageType", [])]


def load_series(paths: Sequence[Path], *, gap_factor: float = 1.5) -> LoadedSeries:
    datasets, notes = read_datasets(paths)
    if not datasets:
        raise SeriesError("no readable DICOM instance in the series")
    images = []
    localizers = 0
    for ds in datasets:
        if is_localizer(ds):
            localizers += 1
            continue
        if "PixelData" not in ds:
            continue
        try:
            images.extend(_frames(ds))
        except (AttributeError, IndexError, TypeError, ValueError) as exc:
            raise SeriesError(f"image plane attributes missing or malformed ({type(exc).__name__})") from None
    if localizers:
        notes.append(f"{localizers} localizer images excluded")
    if not images:
        raise SeriesError("no image slices in the series")

    orientation, _ = Counter(s.orientation for s in images).most_common(1)[0]
    odd = [s for s in images if not np.allclose(s.orientation, orientation, atol=1e-3)]
    if odd:
        raise SeriesError(f"inconsistent orientation: {len(odd)} of {len(images)} slices differ")
    shapes = {s.pixels.shape for s in images}
    if len(shapes) > 1:
        raise SeriesError(f"inconsistent image sizes: {sorted(shapes)}")
    spacings = {s.spacing for s in images}
    if len(spacings) > 1:
        raise SeriesError("inconsistent pixel spacing across slices")
    row_dir = np.array(orientation[:3])
    col_dir = np.array(orientation[3:])
    normal = np.cross(row_dir, col_dir)
    if abs(normal[2]) < AXIAL_TOLERANCE:
        raise SeriesError("not an axial series (slice normal is not along the patient z axis)")

    images.sort(key=lambda s: float(s.origin @ normal))
    positions = np.array([float(s.origin @ normal) for s in images])
    if len(positions) > 1:
        steps = np.diff(positions)
        if np.any(steps < 1e-3):
            raise SeriesError("two or more slices share one position (duplicate or overlapping slices)")
        median = float(np.median(steps))
        gaps = int(np.sum(steps > gap_factor * median))
        if gaps:
            notes.append(f"missing slices: {gaps} gaps larger than {gap_factor:g} x the {median:.2f} mm spacing")
        if np.max(steps) - np.min(steps) > 0.1 * median and not gaps:
            notes.append("irregular slice spacing")
    first = datasets[0]
    return LoadedSeries(
        series_uid=str(first.get("SeriesInstanceUID", "")),
        hu=np.stack([s.pixels for s in images]).astype(np.float32),
        geometry=Geometry(
            origins=np.stack([s.origin for s in images]),
            row_direction=row_dir,
            column_direction=col_dir,
            pixel_spacing=images[0].spacing,
            frame_of_reference_uid=str(first.FrameOfReferenceUID) if "FrameOfReferenceUID" in first else None,
        ),
        sop_instance_uids=tuple(s.sop_instance_uid for s in images),
        frame_numbers=tuple(s.frame for s in images),
        sop_class_uid=str(first.get("SOPClassUID", "")),
        description=str(first.get("SeriesDescription", "") or ""),
        notes=tuple(notes),
    )
