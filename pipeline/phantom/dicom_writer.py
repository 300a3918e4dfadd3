"""Write a rendered case as CT Image Storage series (one file per slice), optionally compressed."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from .dicom_headers import (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, OutputSyntax, WriteOptions,
                            add_contrast_module, add_ct_acquisition, add_pixel_description, common_dataset, ds_str,
                            instance_number, slice_time_s, stored_pixels, study_uids, tm)
from .render import Case
from .spec import ContrastPhase, PhaseAcquisition

log = logging.getLogger(__name__)

TRANSFER_SYNTAX = {
    OutputSyntax.EXPLICIT: ExplicitVRLittleEndian,
    OutputSyntax.RLE: RLELossless,
    OutputSyntax.J2K: JPEG2000Lossless,
}


class PhantomWriteError(Exception):
    """A phantom study could not be written (encoder missing, file system error)."""


@dataclass(frozen=True)
class WrittenInstance:
    sop_instance_uid: str
    instance_number: int
    slice_index: int  # index into the case's volume (0 = most inferior)
    frame_index: int  # 0 for single-frame instances; the frame (0-based) for Enhanced CT
    path: str  # relative to the study folder


@dataclass(frozen=True)
class WrittenSeries:
    series_instance_uid: str
    series_number: int
    phase: ContrastPhase
    series_description: str
    sop_class_uid: str
    transfer_syntax_uid: str
    delay_s: float
    instances: tuple[WrittenInstance, ...]


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def encode_pixels(ds: Dataset, arr: np.ndarray, syntax: OutputSyntax) -> None:
    """Set PixelData from ``arr`` in the requested transfer syntax (lossless only)."""
    if syntax is OutputSyntax.EXPLICIT:
        ds.PixelData = arr.tobytes()
        return
    last: Exception | None = None
    for plugin in ("pylibjpeg", ""):  # pylibjpeg when installed, else whatever pydicom has (RLE: numpy, GDCM)
        try:
            ds.compress(TRANSFER_SYNTAX[syntax], arr, encoding_plugin=plugin, generate_instance_uid=False)
            return
        except (RuntimeError, ValueError, ImportError) as exc:
            last = exc
    raise PhantomWriteError(f"cannot encode {syntax.value}: {last}") from last


def _slice_dataset(case: Case, acq: PhaseAcquisition, base: Dataset, k: int) -> Dataset:
    spec = case.spec
    g = spec.geometry
    ds = Dataset()
    ds.update(base)
    uids = study_uids(spec)
    ds.SOPInstanceUID = uids.instance(acq.series_number, k)
    t = slice_time_s(spec, acq, k)
    ds.AcquisitionTime = tm(t)
    ds.ContentTime = tm(t + 0.5)
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance_number(spec, k)
    ds.ImagePositionPatient = [ds_str(v) for v in g.position(k)]
    ds.SliceLocation = ds_str(g.z_mm(k))
    return ds


def _series_base(case: Case, acq: PhaseAcquisition) -> Dataset:
    spec = case.spec
    g, h = spec.geometry, spec.header
    ds = common_dataset(spec, acq, CTImageStorage)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    add_contrast_module(ds, spec, acq)
    add_ct_acquisition(ds, spec, acq)
    ds.SliceThickness = ds_str(g.slice_thickness_mm)
    ds.ImagesInAcquisition = g.n_slices
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [ds_str(g.pixel_spacing_mm), ds_str(g.pixel_spacing_mm)]
    add_pixel_description(ds, spec)
    ds.BurnedInAnnotation = "NO"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.WindowCenterWidthExplanation = "ABDOMEN"
    ds.RescaleIntercept = ds_str(h.rescale_intercept)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.LossyImageCompression = "00"
    return ds


def write_series(case: Case, acq: PhaseAcquisition, study_dir: Path, options: WriteOptions) -> WrittenSeries:
    """Write one phase of ``case`` as single-frame CT instances under ``study_dir``."""
    spec = case.spec
    base = _series_base(case, acq)
    folder = f"S{acq.series_number:04d}"
    (study_dir / folder).mkdir(parents=True, exist_ok=True)
    ts = TRANSFER_SYNTAX[options.syntax]
    written: list[WrittenInstance] = []
    order = sorted(range(spec.geometry.n_slices), key=lambda k: instance_number(spec, k))
    for k in order:
        ds = _slice_dataset(case, acq, base, k)
        ds.file_meta = file_meta(CTImageStorage, ds.SOPInstanceUID, ExplicitVRLittleEndian)
        encode_pixels(ds, stored_pixels(spec, case.volumes[acq.phase][k]), options.syntax)
        ds.file_meta.TransferSyntaxUID = ts
        rel = f"{folder}/IM{ds.InstanceNumber:05d}.dcm"
        try:
            ds.save_as(study_dir / rel, enforce_file_format=True)
        except OSError as exc:
            raise PhantomWriteError(f"cannot write {study_dir / rel}: {exc}") from exc
        written.append(WrittenInstance(ds.SOPInstanceUID, int(ds.InstanceNumber), k, 0, rel))
    log.debug("wrote series number=%d phase=%s instances=%d", acq.series_number, acq.phase.value, len(written))
    return WrittenSeries(series_instance_uid=base.SeriesInstanceUID, series_number=acq.series_number, phase=acq.phase,
                         series_description=acq.series_description, sop_class_uid=CTImageStorage,
                         transfer_syntax_uid=ts, delay_s=acq.delay_s, instances=tuple(written))
