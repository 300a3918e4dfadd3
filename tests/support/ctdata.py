"""Small, valid CT Image Storage instances for network tests (fast; no anatomy).

The phantom generator (pipeline.phantom) makes realistic studies; these tests only need many
well-formed instances quickly, with controllable UIDs, descriptions and positions.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid


def uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


@dataclass
class SeriesSpec:
    description: str = "Arterial"
    slices: int = 10
    thickness: float = 2.5
    contrast: bool = True
    acquisition_time: str = "101530"
    number: int = 2


def ct_instance(
    study_uid: str,
    series_uid: str,
    index: int,
    spec: SeriesSpec,
    *,
    rows: int = 512,
    cols: int = 512,
    patient_name: str = "TEST^NODE",
    patient_id: str = "T0001",
    birth_date: str = "19700101",
    accession: str = "ACC1",
    seed: int = 0,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_uid = uid(series_uid, index, "sop")
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = uid(study_uid, "for")
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "O"
    ds.AccessionNumber = accession
    ds.StudyDate = "20260101"
    ds.StudyTime = "100000"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "CT"
    ds.Manufacturer = "liver-node tests"
    ds.SeriesNumber = spec.number
    ds.SeriesDescription = spec.description
    ds.InstanceNumber = index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionTime = spec.acquisition_time
    if spec.contrast:
        ds.ContrastBolusAgent = "IOPAMIDOL"
        ds.ContrastBolusStartTime = "101500"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-200.0, -200.0, -index * spec.thickness]
    ds.SliceThickness = spec.thickness
    ds.PixelSpacing = [0.78125, 0.78125]
    ds.KVP = 120
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    rng = np.random.default_rng(int(hashlib.sha256(sop_uid.encode()).hexdigest()[:8], 16) ^ seed)
    ds.PixelData = rng.integers(-1000, 1500, size=(rows, cols), dtype=np.int16).tobytes()
    return ds


def write_series(folder: Path, study_uid: str, spec: SeriesSpec, series_uid: str | None = None, **kw) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or uid(study_uid, spec.description, spec.number)
    paths = []
    for i in range(spec.slices):
        ds = ct_instance(study_uid, series_uid, i, spec, **kw)
        p = folder / f"{spec.number:03d}_{i:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def write_two_phase_study(folder: Path, study_uid: str, slices: int = 10, **kw) -> list[Path]:
    """An AP and a PVP series of one study, phases stated in the descriptions."""
    ap = write_series(folder, study_uid, SeriesSpec("Arterial Phase", slices, acquisition_time="101530", number=2), **kw)
    pv = write_series(folder, study_uid, SeriesSpec("Portal Venous", slices, acquisition_time="101630", number=3), **kw)
    return ap + pv


def dataset_sha256(path: Path) -> str:
    """Hash of the data set without preamble and file meta (what the node's index records)."""
    raw = path.read_bytes()
    (group_length,) = struct.unpack("<I", raw[140:144])
    return hashlib.sha256(raw[144 + group_length:]).hexdigest()
