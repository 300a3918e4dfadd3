"""De-identified copies of CT studies and their ``result.json``, for research use outside the hospital.

An allow-list, not a block-list: a received data set keeps only the attributes below (image
geometry and pixels, CT acquisition and contrast parameters, and the times of day the phase rules
use); everything else, private elements included, is dropped, so an attribute this list does not
know cannot carry an identifier out. Following DICOM PS3.15 Annex E (Basic Application Level
Confidentiality Profile) with the Retain Longitudinal Temporal Information Modified Dates option:

- every UID is replaced by ``2.25.<128 bits of HMAC-SHA256(key, uid)>``: consistent across files,
  runs and ``result.json`` while the key is kept, not reversible without it;
- the patient becomes ``LN-<HMAC of the Patient ID>`` (``LN^...`` as the name), with no birth date or sex;
- dates are removed, and the times of day kept are shifted by one offset per study (from the key), so
  the intervals between phases survive and the clock time does not; a date-time (Enhanced CT's frame
  times) keeps its shifted time on a fixed date, 20000101;
- only CT and Enhanced CT images are exported; one that declares burned-in annotation is skipped.

Series descriptions can carry free text (a physician's name in a protocol label), so they are
dropped unless ``keep_descriptions`` is set (PS3.15's Clean Descriptors option leaves that review
to the user); the phase rules then work from the contrast and timing attributes alone.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from .header_values import dt_time

CT_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")  # CT, Enhanced CT Image Storage
KEPT = frozenset("""
    SpecificCharacterSet ImageType SOPClassUID SOPInstanceUID StudyInstanceUID SeriesInstanceUID
    FrameOfReferenceUID PositionReferenceIndicator Manufacturer ManufacturerModelName Modality SeriesNumber
    InstanceNumber AcquisitionNumber PatientPosition BodyPartExamined StudyTime SeriesTime AcquisitionTime ContentTime AcquisitionDateTime
    FrameAcquisitionDateTime FrameReferenceDateTime
    ImagePositionPatient ImageOrientationPatient PixelSpacing SliceThickness SpacingBetweenSlices
    SliceLocation Rows Columns SamplesPerPixel PhotometricInterpretation BitsAllocated BitsStored
    HighBit PixelRepresentation PlanarConfiguration PixelData NumberOfFrames RescaleIntercept
    RescaleSlope RescaleType WindowCenter WindowWidth PixelPaddingValue LossyImageCompression
    LossyImageCompressionRatio LossyImageCompressionMethod BurnedInAnnotation
    KVP XRayTubeCurrent ExposureTime Exposure ConvolutionKernel ReconstructionDiameter
    GantryDetectorTilt RotationDirection FilterType SpiralPitchFactor CTDIvol
    ContrastBolusAgent ContrastBolusRoute ContrastBolusVolume ContrastBolusStartTime
    ContrastBolusStopTime ContrastBolusTotalDose ContrastFlowRate ContrastFlowDuration
    ContrastBolusIngredient ContrastBolusIngredientConcentration
    SharedFunctionalGroupsSequence PerFrameFunctionalGroupsSequence PlanePositionSequence
    PlaneOrientationSequence PixelMeasuresSequence PixelValueTransformationSequence
    FrameContentSequence CTImageFrameTypeSequence FrameType FrameVOILUTSequence
    DimensionIndexValues StackID InStackPositionNumber TemporalPositionIndex
    CTAcquisitionDetailsSequence CTReconstructionSequence CTExposureSequence
    ContrastBolusUsageSequence ContrastBolusAgentSequence ContrastAdministrationProfileSequence
    ContrastBolusAgentNumber ContrastBolusAgentAdministered ContrastBolusAgentDetected ContrastBolusAgentPhase
    CodeValue CodingSchemeDesignator CodeMeaning
    PresentationLUTShape PixelPresentation VolumetricProperties VolumeBasedCalculationTechnique
    ContentQualification DimensionOrganizationSequence DimensionOrganizationUID DimensionOrganizationType
    DimensionIndexSequence DimensionIndexPointer FunctionalGroupPointer AcquisitionContextSequence
    SoftwareVersions CTAcquisitionTypeSequence AcquisitionType TubeAngle ConstantVolumeFlag
    FluoroscopyFlag CTGeometrySequence DistanceSourceToDetector DistanceSourceToDataCollectionCenter
    CTPositionSequence TablePosition ReconstructionTargetCenterPatient DataCollectionCenterPatient
    CTTableDynamicsSequence TableSpeed TableFeedPerRotation CTXRayDetailsSequence DataCollectionDiameter
    FocalSpots FilterMaterial CalciumScoringMassFactorPatient CalciumScoringMassFactorDevice
    EnergyWeightingFactor ExposureTimeInms XRayTubeCurrentInmA ExposureInmAs ExposureModulationType
    ReconstructionAlgorithm ConvolutionKernelGroup ReconstructionFieldOfView ReconstructionPixelSpacing
    ReconstructionAngle ImageFilter FrameAnatomySequence AnatomicRegionSequence FrameLaterality
    IrradiationEventIdentificationSequence IrradiationEventUID ContrastBolusAdministrationRouteSequence
    FrameAcquisitionDuration RevolutionTime SingleCollimationWidth TotalCollimationWidth
    TableHeight ContrastBolusIngredientCodeSequence AcquisitionDuration
""".split())
DESCRIPTIONS = frozenset({"SeriesDescription", "ProtocolName", "StudyDescription"})
PLACEHOLDER_DATE = "20000101"
DAY_S = 86400


class DeidentifyError(ValueError):
    """A key file that cannot be used, or an output folder inside the input."""


def load_or_create_key(path: Path) -> bytes:
    """The secret the pseudonyms derive from: made once (owner-only), then reused for consistency."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise DeidentifyError(f"{path.name}: not a hex key") from None
    if len(key) < 16:
        raise DeidentifyError(f"{path.name}: key shorter than 128 bits")
    return key


@dataclass
class Deidentifier:
    key: bytes
    keep_descriptions: bool = False
    _kept: frozenset = field(init=False)

    def __post_init__(self) -> None:
        self._kept = KEPT | DESCRIPTIONS if self.keep_descriptions else KEPT

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self.key, f"{kind}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        return f"2.25.{int.from_bytes(self._digest('uid', original)[:16], 'big')}"

    def pseudonym(self, patient_id: str) -> str:
        return "LN-" + self._digest("patient", patient_id).hex()[:12].upper()

    def time_shift_s(self, study_uid: str) -> int:
        return int.from_bytes(self._digest("time", study_uid)[:4], "big") % DAY_S

    def dataset(self, ds: Dataset) -> Dataset:
        """The de-identified copy of one received image (the caller checks it is a CT image)."""
        shift = self.time_shift_s(str(ds.StudyInstanceUID))
        out = self._clean(ds, shift)
        out.PatientID = self.pseudonym(str(ds.get("PatientID", "")))
        out.PatientName = out.PatientID.replace("-", "^", 1)  # family^given, as PN expects
        out.PatientBirthDate = out.PatientSex = ""
        out.StudyDate = out.SeriesDate = out.AccessionNumber = out.StudyID = out.ReferringPhysicianName = ""
        if "PerFrameFunctionalGroupsSequence" in ds:  # Enhanced CT: Content Date is Type 1, serial number too
            out.ContentDate, out.DeviceSerialNumber = PLACEHOLDER_DATE, "removed"
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = "liver-node allow-list; dates removed, times shifted"  # LO: 64 at most
        out.DeidentificationMethodCodeSequence = DicomSequence([
            _code("113100", "Basic Application Confidentiality Profile"),
            _code("113107", "Retain Longitudinal Temporal Information Modified Dates Option")])
        return out

    def _clean(self, ds: Dataset, shift: int) -> Dataset:
        out = Dataset()
        for elem in ds:
            if elem.keyword not in self._kept or elem.VR == "DA":
                continue
            if elem.VR == "SQ":
                out.add_new(elem.tag, "SQ", DicomSequence([self._clean(item, shift) for item in elem.value]))
            elif elem.VR == "UI":
                out.add_new(elem.tag, "UI", self.uid(str(elem.value)) if elem.keyword != "SOPClassUID" else elem.value)
            elif elem.VR == "TM":
                out.add_new(elem.tag, "TM", _shift_time(elem.value, shift))
            elif elem.VR == "DT":  # the date and the UTC offset go, the time is shifted
                time = _shift_time(dt_time(elem.value), shift)
                out.add_new(elem.tag, "DT", f"{PLACEHOLDER_DATE}{time}" if time else "")
            else:
                out.add_new(elem.tag, elem.VR, elem.value)
        return out

    def result(self, data: dict) -> dict:
        """``result.json`` with every UID replaced as in the images; its texts are the node's own."""
        def walk(value, key=""):
            if isinstance(value, dict):
                return {k: walk(v, k) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v, key) for v in value]
            if isinstance(value, str) and key.endswith("uid"):
                return self.uid(value)
            return value

        return walk(data)


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def _shift_time(value, shift: int) -> str:
    """A TM value moved by ``shift`` seconds on the clock's circle (fractions kept); empty if unparseable."""
    text = str(value or "").strip()
    digits, _, fraction = text.partition(".")
    if not digits.isdigit() or len(digits) not in (2, 4, 6):
        return ""
    hh, mm, ss = int(digits[:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
    t = (hh * 3600 + mm * 60 + ss + shift) % DAY_S
    return f"{t // 3600:02d}{t % 3600 // 60:02d}{t % 60:02d}" + (f".{fraction}" if fraction.isdigit() else "")


@dataclass
class ExportSummary:
    written: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    results: int = 0

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def export(input_dir: Path, out_dir: Path, deid: Deidentifier, results_dir: Path | None = None) -> ExportSummary:
    """De-identified copies of the CT images under ``input_dir`` (and of each study's ``result.json``
    under ``results_dir``, as ``liver-node run`` or the node writes them), in OUT/<study>/<series>/."""
    input_dir, out_dir = input_dir.resolve(), out_dir.resolve()
    if out_dir == input_dir or input_dir in out_dir.parents:
        raise DeidentifyError("the output folder must not be inside the input folder")
    summary = ExportSummary()
    old_umask = os.umask(0o077)  # the copies are still sensitive data: owner-only until someone decides otherwise
    try:
        for path in sorted(p for p in input_dir.rglob("*") if p.is_file()):
            try:
                ds = pydicom.dcmread(path)
            except Exception:  # noqa: BLE001 - not DICOM, or damaged: nothing of it is exported
                summary.skip("not DICOM or unreadable")
                continue
            if str(ds.get("SOPClassUID", "")) not in CT_CLASSES or "StudyInstanceUID" not in ds:
                summary.skip("not a CT image")
                continue
            if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
                summary.skip("burned-in annotation")
                continue
            clean = deid.dataset(ds)
            folder = out_dir / clean.StudyInstanceUID / clean.SeriesInstanceUID
            folder.mkdir(parents=True, exist_ok=True)
            clean.file_meta = _file_meta(ds, clean)
            clean.save_as(folder / f"{clean.SOPInstanceUID}.dcm", enforce_file_format=True)
            summary.written += 1
        for found in newest_results(results_dir) if results_dir else ():
            data = deid.result(found)
            folder = out_dir / data["study_instance_uid"]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "result.json").write_text(json.dumps(data, indent=2))
            summary.results += 1
    finally:
        os.umask(old_umask)
    return summary


def newest_results(results_dir: Path) -> list[dict]:
    """One ``result.json`` per study, read: the newest revision where the node keeps several (``rev-N``)."""
    newest: dict[str, tuple[int, str, dict]] = {}
    for path in results_dir.rglob("result.json"):
        try:
            data = json.loads(path.read_text())
            study = str(data["study_instance_uid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        name = path.parent.name
        revision = int(name[4:]) if name.startswith("rev-") and name[4:].isdigit() else 0
        if study not in newest or revision > newest[study][0]:
            newest[study] = (revision, str(path), data)
    return [data for _, _, data in sorted(newest.values(), key=lambda found: found[1])]


def _file_meta(source: Dataset, clean: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = clean.SOPClassUID
    meta.MediaStorageSOPInstanceUID = clean.SOPInstanceUID
    meta.TransferSyntaxUID = source.file_meta.TransferSyntaxUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta
