"""DICOM attributes shared by the single-frame and Enhanced CT writers (patient, study, series,
equipment, frame of reference, contrast/bolus, timing). All values are synthetic."""
from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.valuerep import format_number_as_ds

from .spec import CaseSpec, ContrastPhase, PhaseAcquisition
from .uids import StudyUids

IMPLEMENTATION_CLASS_UID = "2.25.251645563526939598432624218216931049873"
IMPLEMENTATION_VERSION = "LIVERNODE_PH_1"
MANUFACTURER = "LIVER-NODE PHANTOM"
SOFTWARE_VERSION = "liver-node-phantom 1.0"


class OutputSyntax(str, enum.Enum):
    EXPLICIT = "explicit"  # Explicit VR Little Endian, uncompressed
    RLE = "rle"  # RLE Lossless
    J2K = "j2k"  # JPEG 2000 Lossless


@dataclass(frozen=True)
class WriteOptions:
    syntax: OutputSyntax = OutputSyntax.EXPLICIT
    enhanced: bool = False  # one Enhanced CT (multi-frame) instance per series


def ds_str(value: float) -> str:
    """A DS string of at most 16 characters."""
    return format_number_as_ds(float(value))


def tm(seconds: float) -> str:
    """TM from seconds after midnight (clamped to the day), with centiseconds."""
    seconds = min(max(seconds, 0.0), 86399.99)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}{int(m):02d}{s:05.2f}"


def options_fingerprint(spec: CaseSpec) -> str:
    o = spec.options
    phases = ",".join(p.value for p in o.phases)
    return f"{phases}|{o.n_slices}|{o.slice_thickness_mm}|{o.rows}x{o.cols}|{o.lesion_classes}|{o.noise_scale}"


def study_uids(spec: CaseSpec) -> StudyUids:
    return StudyUids(spec.seed, spec.index, options_fingerprint(spec))


def series_start_s(spec: CaseSpec, acq: PhaseAcquisition) -> float:
    return spec.header.bolus_start_s + acq.delay_s


def slice_time_s(spec: CaseSpec, acq: PhaseAcquisition, k: int) -> float:
    """Acquisition time of slice k: the table moves head to feet, so the top slice comes first."""
    n = spec.geometry.n_slices
    frac = (n - 1 - k) / max(1, n - 1)
    return series_start_s(spec, acq) + frac * spec.header.scan_duration_s


def instance_number(spec: CaseSpec, k: int) -> int:
    n = spec.geometry.n_slices
    return (n - k) if spec.header.instances_head_first else (k + 1)


def stored_pixels(spec: CaseSpec, hu: np.ndarray) -> np.ndarray:
    """HU (int16) to stored values under this case's pixel representation and intercept."""
    h = spec.header
    values = hu.astype(np.int32) - int(h.rescale_intercept)
    if h.pixel_representation == 0:
        return np.clip(values, 0, (1 << h.bits_stored) - 1).astype(np.uint16)
    return np.clip(values, -(1 << (h.bits_stored - 1)), (1 << (h.bits_stored - 1)) - 1).astype(np.int16)


def common_dataset(spec: CaseSpec, acq: PhaseAcquisition, sop_class_uid: str) -> Dataset:
    """Patient, study, series, equipment, frame of reference and contrast attributes of a series."""
    h = spec.header
    uids = study_uids(spec)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.InstanceCreationDate = h.study_date
    ds.InstanceCreationTime = tm(series_start_s(spec, acq) + h.scan_duration_s + 20.0)
    ds.StudyDate = h.study_date
    ds.SeriesDate = h.study_date
    ds.AcquisitionDate = h.study_date
    ds.ContentDate = h.study_date
    ds.StudyTime = tm(h.nc_start_s - 30.0)
    ds.SeriesTime = tm(series_start_s(spec, acq))
    ds.AccessionNumber = h.accession
    ds.Modality = "CT"
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = "Phantom Institute"
    ds.ReferringPhysicianName = ""
    ds.StationName = h.station
    ds.StudyDescription = "CT ABDOMEN LIVER MULTIPHASE"
    if acq.series_description:
        ds.SeriesDescription = acq.series_description
    ds.ManufacturerModelName = h.manufacturer_model
    ds.PatientName = h.patient_name
    ds.PatientID = h.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = h.patient_sex
    ds.PatientAge = h.patient_age
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic phantom: no patient"
    ds.BodyPartExamined = "ABDOMEN"
    ds.DeviceSerialNumber = "PH-0001"
    ds.SoftwareVersions = SOFTWARE_VERSION
    ds.ProtocolName = "Liver multiphase"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = uids.study
    ds.SeriesInstanceUID = uids.series(acq.series_number)
    ds.StudyID = h.study_id
    ds.SeriesNumber = acq.series_number
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.ImageComments = "Synthetic phantom (liver-node); not a patient; not for diagnostic use"
    return ds


def add_contrast_module(ds: Dataset, spec: CaseSpec, acq: PhaseAcquisition) -> None:
    """Contrast/Bolus module (single-frame CT); the non-contrast series carries none."""
    if acq.phase is ContrastPhase.NC:
        return
    h = spec.header
    ds.ContrastBolusAgent = h.agent
    ds.ContrastBolusRoute = "IV"
    ds.ContrastBolusVolume = ds_str(h.agent_volume_ml)
    ds.ContrastBolusStartTime = tm(h.bolus_start_s)
    ds.ContrastBolusStopTime = tm(h.bolus_start_s + h.agent_volume_ml / h.flow_rate_ml_s)
    ds.ContrastBolusTotalDose = ds_str(h.agent_volume_ml)
    ds.ContrastFlowRate = ds_str(h.flow_rate_ml_s)
    ds.ContrastFlowDuration = ds_str(round(h.agent_volume_ml / h.flow_rate_ml_s, 2))
    ds.ContrastBolusIngredient = "IODINE"
    ds.ContrastBolusIngredientConcentration = ds_str(h.agent_concentration)


def add_pixel_description(ds: Dataset, spec: CaseSpec) -> None:
    h, g = spec.header, spec.geometry
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = g.rows
    ds.Columns = g.cols
    ds.BitsAllocated = 16
    ds.BitsStored = h.bits_stored
    ds.HighBit = h.bits_stored - 1
    ds.PixelRepresentation = h.pixel_representation


def add_ct_acquisition(ds: Dataset, spec: CaseSpec, acq: PhaseAcquisition) -> None:
    """CT Image module acquisition attributes (type 2/3) with plausible values."""
    h, g = spec.header, spec.geometry
    fov = g.pixel_spacing_mm * g.cols
    ds.ScanOptions = "HELICAL MODE"
    ds.KVP = ds_str(h.kvp)
    ds.DataCollectionDiameter = ds_str(500.0)
    ds.ReconstructionDiameter = ds_str(round(fov, 3))
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = ds_str(round(150.0 - g.origin_mm[1] * 0.1, 1))
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = int(120 + 10 * (acq.series_number % 9))
    ds.ConvolutionKernel = acq.kernel
    ds.RevolutionTime = 0.5
    ds.SpiralPitchFactor = 0.984375
