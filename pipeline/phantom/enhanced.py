"""Write one phase of a case as a single Enhanced CT Image Storage (multi-frame) instance.

Frames are stored in acquisition order (head to feet), one stack; geometry and timing sit in the
per-frame functional groups, everything constant in the shared group.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian

from .dicom_headers import (WriteOptions, add_pixel_description, common_dataset, ds_str, series_start_s,
                            slice_time_s, stored_pixels, study_uids, tm)
from .dicom_writer import TRANSFER_SYNTAX, PhantomWriteError, WrittenInstance, WrittenSeries, encode_pixels, file_meta
from .render import Case
from .spec import ContrastPhase, PhaseAcquisition

log = logging.getLogger(__name__)

_AGENT_CODES = {
    "iohexol": ("109218004", "Iohexol"), "omnipaque": ("109218004", "Iohexol"),
    "iopamidol": ("109219007", "Iopamidol"), "iodixanol": ("353962003", "Iodixanol"),
    "ultravist": ("353903006", "Iopromide"),
}
_AGENT_PHASE = {ContrastPhase.AP: "ARTERIAL", ContrastPhase.PVP: "PORTAL_VENOUS", ContrastPhase.DELAYED: "DELAYED"}


def _code(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _item(**attrs: object) -> Sequence:
    ds = Dataset()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return Sequence([ds])


def _dt(date: str, seconds: float) -> str:
    return date + tm(seconds)


def _agent_sequence(case: Case) -> Sequence:
    h = case.spec.header
    name = h.agent.split()[0].lower()
    value, meaning = _AGENT_CODES.get(name, ("96388005", "Nonionic iodinated contrast media"))
    agent = _code(value, meaning)
    agent.ContrastBolusAgentNumber = 1
    agent.ContrastBolusAdministrationRouteSequence = Sequence([_code("47625008", "Intravenous route")])
    agent.ContrastBolusIngredientCodeSequence = Sequence([_code("44588005", "Iodine")])
    agent.ContrastBolusVolume = ds_str(h.agent_volume_ml)
    agent.ContrastBolusIngredientConcentration = ds_str(h.agent_concentration)
    agent.ContrastBolusIngredientOpaque = "YES"
    profile = Dataset()
    profile.ContrastBolusVolume = ds_str(h.agent_volume_ml)
    profile.ContrastBolusStartTime = tm(h.bolus_start_s)
    profile.ContrastBolusStopTime = tm(h.bolus_start_s + h.agent_volume_ml / h.flow_rate_ml_s)
    profile.ContrastFlowRate = ds_str(h.flow_rate_ml_s)
    profile.ContrastFlowDuration = ds_str(round(h.agent_volume_ml / h.flow_rate_ml_s, 2))
    agent.ContrastAdministrationProfileSequence = Sequence([profile])
    return Sequence([agent])


def _shared_groups(case: Case, acq: PhaseAcquisition) -> Dataset:
    spec = case.spec
    g, h = spec.geometry, spec.header
    fov = g.pixel_spacing_mm * g.cols
    shared = Dataset()
    shared.PixelMeasuresSequence = _item(PixelSpacing=[ds_str(g.pixel_spacing_mm)] * 2,
                                         SliceThickness=ds_str(g.slice_thickness_mm))
    shared.PlaneOrientationSequence = _item(ImageOrientationPatient=["1", "0", "0", "0", "1", "0"])
    shared.FrameVOILUTSequence = _item(WindowCenter="40", WindowWidth="400")
    shared.PixelValueTransformationSequence = _item(RescaleIntercept=ds_str(h.rescale_intercept), RescaleSlope="1",
                                                    RescaleType="HU")
    shared.CTImageFrameTypeSequence = _item(FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"],
                                            PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME",
                                            VolumeBasedCalculationTechnique="NONE")
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = Sequence([_code("818981001", "Abdomen")])
    anatomy.FrameLaterality = "U"
    shared.FrameAnatomySequence = Sequence([anatomy])
    shared.IrradiationEventIdentificationSequence = _item(
        IrradiationEventUID=study_uids(spec).irradiation_event(acq.series_number))
    if acq.phase is not ContrastPhase.NC:
        shared.ContrastBolusUsageSequence = _item(ContrastBolusAgentNumber=1, ContrastBolusAgentAdministered="YES",
                                                  ContrastBolusAgentDetected="YES",
                                                  ContrastBolusAgentPhase=_AGENT_PHASE[acq.phase])
    shared.CTAcquisitionTypeSequence = _item(AcquisitionType="SPIRAL", ConstantVolumeFlag="NO", FluoroscopyFlag="NO")
    shared.CTAcquisitionDetailsSequence = _item(DataCollectionDiameter=ds_str(500.0), GantryDetectorTilt="0",
                                                TableHeight=ds_str(150.0), RotationDirection="CW",
                                                RevolutionTime=0.5, SingleCollimationWidth=0.625,
                                                TotalCollimationWidth=40.0)
    shared.CTTableDynamicsSequence = _item(TableSpeed=78.75, TableFeedPerRotation=39.375, SpiralPitchFactor=0.984375)
    shared.CTGeometrySequence = _item(DistanceSourceToDetector=1085.6, DistanceSourceToDataCollectionCenter=595.0)
    shared.CTReconstructionSequence = _item(ReconstructionAlgorithm="FILTER_BACK_PROJ", ConvolutionKernel=acq.kernel,
                                            ConvolutionKernelGroup="SOFT_TISSUE",
                                            ReconstructionFieldOfView=[round(fov, 3), round(fov, 3)],
                                            ReconstructionPixelSpacing=[g.pixel_spacing_mm, g.pixel_spacing_mm],
                                            ReconstructionAngle=360.0, ImageFilter="NONE")
    shared.CTExposureSequence = _item(ExposureTimeInms=500.0, XRayTubeCurrentInmA=200.0, ExposureInmAs=100.0,
                                      ExposureModulationType="NONE")
    shared.CTXRayDetailsSequence = _item(KVP=ds_str(h.kvp), FocalSpots=[ds_str(1.2)], FilterType="BODY",
                                         FilterMaterial=["ALUMINUM"])
    return shared


def _frame_order(case: Case) -> list[int]:
    """Slice indices in frame order: acquisition order, the most superior slice first."""
    return list(range(case.spec.geometry.n_slices - 1, -1, -1))


def write_enhanced_series(case: Case, acq: PhaseAcquisition, study_dir: Path, options: WriteOptions) -> WrittenSeries:
    spec = case.spec
    g, h = spec.geometry, spec.header
    uids = study_uids(spec)
    ds = common_dataset(spec, acq, EnhancedCTImageStorage)
    sop_uid = uids.instance(acq.series_number, 0)
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    del ds.AcquisitionDate  # not part of the Enhanced CT IOD
    ds.ContentTime = tm(series_start_s(spec, acq) + h.scan_duration_s + 5.0)
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 1
    ds.AcquisitionDateTime = _dt(h.study_date, series_start_s(spec, acq))
    ds.AcquisitionDuration = float(h.scan_duration_s)
    ds.ContentQualification = "RESEARCH"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    add_pixel_description(ds, spec)
    ds.NumberOfFrames = g.n_slices
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionContextSequence = Sequence([])
    if acq.phase is not ContrastPhase.NC:
        ds.ContrastBolusAgentSequence = _agent_sequence(case)
    dim_uid = uids.dimension_organization(acq.series_number)
    ds.DimensionOrganizationSequence = _item(DimensionOrganizationUID=dim_uid)
    dims = []
    for pointer in (0x00209056, 0x00209057):  # StackID, InStackPositionNumber in FrameContentSequence
        item = Dataset()
        item.DimensionOrganizationUID = dim_uid
        item.DimensionIndexPointer = pointer
        item.FunctionalGroupPointer = 0x00209111
        dims.append(item)
    ds.DimensionIndexSequence = Sequence(dims)
    ds.SharedFunctionalGroupsSequence = Sequence([_shared_groups(case, acq)])

    order = _frame_order(case)
    fov = g.pixel_spacing_mm * g.cols
    cx, cy = g.origin_mm[0] + (fov - g.pixel_spacing_mm) / 2, g.origin_mm[1] + (fov - g.pixel_spacing_mm) / 2
    frames = []
    for f, k in enumerate(order):
        t = slice_time_s(spec, acq, k)
        fg = Dataset()
        fg.FrameContentSequence = _item(FrameAcquisitionNumber=1, FrameReferenceDateTime=_dt(h.study_date, t),
                                        FrameAcquisitionDateTime=_dt(h.study_date, t), FrameAcquisitionDuration=500.0,
                                        StackID="1", InStackPositionNumber=f + 1, DimensionIndexValues=[1, f + 1])
        fg.PlanePositionSequence = _item(ImagePositionPatient=[ds_str(v) for v in g.position(k)])
        fg.CTPositionSequence = _item(TablePosition=-float(g.z_mm(k)),
                                      ReconstructionTargetCenterPatient=[cx, cy, float(g.z_mm(k))],
                                      DataCollectionCenterPatient=[0.0, 0.0, float(g.z_mm(k))])
        frames.append(fg)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)

    pixels = np.stack([stored_pixels(spec, case.volumes[acq.phase][k]) for k in order])
    ds.file_meta = file_meta(EnhancedCTImageStorage, sop_uid, ExplicitVRLittleEndian)
    encode_pixels(ds, pixels, options.syntax)
    ds.file_meta.TransferSyntaxUID = TRANSFER_SYNTAX[options.syntax]
    folder = f"S{acq.series_number:04d}"
    (study_dir / folder).mkdir(parents=True, exist_ok=True)
    rel = f"{folder}/MF00001.dcm"
    try:
        ds.save_as(study_dir / rel, enforce_file_format=True)
    except OSError as exc:
        raise PhantomWriteError(f"cannot write {study_dir / rel}: {exc}") from exc
    instances = tuple(WrittenInstance(sop_uid, 1, k, f, rel) for f, k in enumerate(order))
    log.debug("wrote enhanced series number=%d phase=%s frames=%d", acq.series_number, acq.phase.value, len(order))
    return WrittenSeries(series_instance_uid=ds.SeriesInstanceUID, series_number=acq.series_number, phase=acq.phase,
                         series_description=acq.series_description, sop_class_uid=EnhancedCTImageStorage,
                         transfer_syntax_uid=TRANSFER_SYNTAX[options.syntax], delay_s=acq.delay_s,
                         instances=instances)
