"""Comprehensive 3D SR (TID 1500 Measurement Report) of one study's analysis, IHE AI Results style.

One planar ROI group (TID 1410) per lesion: tracking identifier and UID, finding category, finding
(the lesion class), finding site liver, the key box as a closed 5-point POLYLINE on the key slice,
long/short axis in mm, and the six class probabilities plus p(malignant), each with the algorithm
identification (TID 4019). One case-level group (TID 1501) carries the case decision, or says that
no lesion was found, or why the study could not be analysed. The algorithm is listed in the
Contributing Equipment Sequence with a Device UID derived from the model sha256s, so it changes
with each model version. Every UID is derived from its inputs (see ``result_uid``) so that a
resend after a crash yields the same SOP Instance UIDs.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    FindingSite,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    DeviceObserverIdentifyingAttributes,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom import Dataset
from pydicom.sr.codedict import codes

from ..hierarchy import ALL_CLASSES, Decision
from ..result import LesionResult, ModelInfo, StudyResult
from .codes import PRIVATE_SCHEME, CodeTable, load_codes
from .source_header import reference_header

log = logging.getLogger(__name__)

ALGORITHM_NAME = "liver-node LiLNet hierarchy"
DEFAULT_SOFTWARE_VERSION = "0.1"
SR_SERIES_NUMBER = 901
SERIES_DESCRIPTION_SR = "AI result - liver lesions (not for diagnostic use)"


class ReportBuildError(ValueError):
    """The result or its source headers cannot make a valid result object."""


def models_key(models: Sequence[ModelInfo]) -> str:
    return ",".join(sorted(f"{m.name}:{m.sha256}" for m in models)) or "no-models"


def uid_key(models: Sequence[ModelInfo], uid_salt: str) -> str:
    """The part of every result UID that is not the study, revision or object: the models, then the salt
    (see pipeline.report's docstring)."""
    return models_key(models) + uid_salt


def result_uid(*parts: object) -> str:
    """A 2.25 UID derived from the parts only: same parts, same UID (128 bits of SHA-256)."""
    digest = hashlib.sha256("\x1f".join(["liver-node", *map(str, parts)]).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def device_uid(models: Sequence[ModelInfo]) -> str:
    """Device UID of the algorithm: changes whenever any model file changes."""
    return result_uid("device", models_key(models))


def tracking_uid(study_uid: str, lesion_index: int, key: str = "") -> str:
    """A lesion's tracking UID where no earlier report names it (amended SRs carry it on:
    pipeline.report.tracking). ``key`` (uid_key: the models and the data directory's salt) keeps another
    model or node from giving its own lesion 1 the same UID; results from before it carry none."""
    return result_uid("tracking", study_uid, lesion_index, *((key,) if key else ()))


def algorithm_id(result: StudyResult, software_version: str) -> AlgorithmIdentification:
    params = [f"{m.name}={m.version} sha256:{m.sha256[:16]}" for m in result.models]
    if result.phase_mode:
        params.append(f"phase_mode={result.phase_mode}")
    return AlgorithmIdentification(name=ALGORITHM_NAME, version=software_version, parameters=params or None)


def _probability(name: CodedConcept, value: float, table: CodeTable, alg: AlgorithmIdentification) -> Measurement:
    return Measurement(name=name, value=round(float(value), 6), unit=table.probability_unit, algorithm_id=alg)


def _probabilities(d: Decision, table: CodeTable, alg: AlgorithmIdentification) -> list[Measurement]:
    out = [_probability(table.class_probability(c), d.probabilities.get(c, 0.0), table, alg) for c in ALL_CLASSES]
    out.append(_probability(table.p_malignant, d.p_malignant, table, alg))
    return out


def _key_dataset(sop_uid: str, source: Mapping[str, Dataset]) -> Dataset:
    if sop_uid not in source:
        raise ReportBuildError(f"key slice {sop_uid} is not among the source datasets")
    return source[sop_uid]


def _lesion_group(study_uid: str, r: LesionResult, source: Mapping[str, Dataset], table: CodeTable,
                  alg: AlgorithmIdentification, key: str) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    les, d = r.lesion, r.decision
    view = les.primary
    ds = _key_dataset(view.key_sop_instance_uid, source)
    b = view.key
    polyline = np.array([[b.x1, b.y1], [b.x2, b.y1], [b.x2, b.y2], [b.x1, b.y2], [b.x1, b.y1]], dtype=np.float32)
    region = ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=polyline,
        source_image=SourceImageForRegion(referenced_sop_class_uid=ds.SOPClassUID,
                                          referenced_sop_instance_uid=ds.SOPInstanceUID,
                                          referenced_frame_numbers=(None if view.key_frame_number is None
                                                                    else [view.key_frame_number])),
    )
    site = FindingSite(anatomic_location=table.finding_site)
    measurements = [
        Measurement(name=table.long_axis, value=round(float(view.long_axis_mm), 2), unit=table.mm,
                    algorithm_id=alg),
        Measurement(name=table.short_axis, value=round(float(view.short_axis_mm), 2), unit=table.mm,
                    algorithm_id=alg),
        *_probabilities(d, table, alg),
    ]
    if r.p_lesion is not None:
        measurements.append(_probability(table.lesion_probability, r.p_lesion, table, alg))
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=r.tracking_uid or tracking_uid(study_uid, les.index, key),
                                               identifier=f"Lesion {les.index}"),
        referenced_region=region,
        finding_type=table.finding(d.cls),
        finding_category=table.finding_category,
        algorithm_id=alg,
        finding_sites=[site],
        measurements=measurements,
    )


def _comment(group: MeasurementsAndQualitativeEvaluations, text: str) -> None:
    group[0].ContentSequence.append(
        TextContentItem(name=codes.DCM.Comment, value=text[:1024],
                        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))


def _case_group(result: StudyResult, table: CodeTable, alg: AlgorithmIdentification, key: str
                ) -> MeasurementsAndQualitativeEvaluations:
    tid = TrackingIdentifier(uid=result_uid("tracking", result.study_instance_uid, "case", key), identifier="Case")
    if result.status != "ok":
        group = MeasurementsAndQualitativeEvaluations(tracking_identifier=tid, algorithm_id=alg)
        _comment(group, f"Study not analysed: {result.reason or 'no reason given'}")
        return group
    if not result.lesions or result.case is None:
        group = MeasurementsAndQualitativeEvaluations(tracking_identifier=tid, algorithm_id=alg)
        _comment(group, f"No liver lesion found (phases used: {result.phase_mode or 'unknown'}).")
        return group
    d = result.case
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tid,
        finding_type=table.finding(d.cls),
        finding_sites=[FindingSite(anatomic_location=table.finding_site)],
        algorithm_id=alg,
        measurements=_probabilities(d, table, alg),
    )
    _comment(group, f"Case decision: {d.cls} ({'malignant' if d.malignant else 'benign'}), "
                    f"p(malignant)={d.p_malignant:.3f}, {len(result.lesions)} lesion(s), "
                    f"phases: {result.phase_mode}. AI result - not for diagnostic use.")
    return group


def _evidence(result: StudyResult, source: Mapping[str, Dataset]) -> list[Dataset]:
    """Every source header (the caller passes the instances analysed), the key slices the SR references
    first: the first one gives the SR its patient and study modules."""
    keys = sorted({r.lesion.primary.key_sop_instance_uid for r in result.lesions})
    if not source:
        raise ReportBuildError("no source dataset: the SR needs the study's patient and study headers")
    first = [_key_dataset(u, source) for u in keys]
    return first + [source[u] for u in sorted(source) if u not in set(keys)]


def build_sr(
    result: StudyResult,
    source_datasets: Mapping[str, Dataset],
    *,
    series_number: int = SR_SERIES_NUMBER,
    instance_number: int = 1,
    predecessor: Dataset | None = None,
    manufacturer: str = "liver-node",
    software_version: str = DEFAULT_SOFTWARE_VERSION,
    revision: int = 1,
    uid_salt: str = "",
) -> Comprehensive3DSR:
    table = load_codes()
    alg = algorithm_id(result, software_version)
    study_uid = result.study_instance_uid
    evidence = _evidence(result, source_datasets)
    if any(ds.StudyInstanceUID != study_uid for ds in evidence):
        raise ReportBuildError("a source dataset belongs to another study")
    evidence = [reference_header(evidence[0]), *evidence[1:]]  # patient and study modules come from the first
    dev_uid = device_uid(result.models)
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=dev_uid, name=ALGORITHM_NAME, manufacturer_name=manufacturer, model_name=ALGORITHM_NAME),
    )
    key = uid_key(result.models, uid_salt)
    groups: list = [_lesion_group(study_uid, r, source_datasets, table, alg, key) for r in result.lesions]
    groups.append(_case_group(result, table, alg, key))
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=table.procedure,
        imaging_measurements=groups,
    )
    equipment = hd.ContributingEquipment(
        manufacturer=manufacturer,
        purpose_of_reference=table.equipment_purpose,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=software_version,
        contribution_description="AI lesion detection and classification (processing algorithm)",
    )
    mkey = uid_key(result.models, uid_salt)
    previous = [predecessor] if predecessor is not None else None
    pred_uid = predecessor.SOPInstanceUID if predecessor is not None else ""
    sr = Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=result_uid("sr-series", study_uid, revision, mkey),
        series_number=series_number,
        sop_instance_uid=result_uid("sr", study_uid, revision, mkey, pred_uid),
        instance_number=instance_number,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        previous_versions=previous,
        contributing_equipment=[equipment],
        series_description=SERIES_DESCRIPTION_SR,
    )
    for item in sr.ContributingEquipmentSequence:  # highdicom may list itself too
        if item.get("ManufacturerModelName") == ALGORITHM_NAME:
            item.DeviceUID = dev_uid
    scheme = Dataset()  # declare the private coding scheme used for per-class probabilities
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "liver-node local codes"
    scheme.CodingSchemeResponsibleOrganization = "liver-node project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    sr.SoftwareVersions = software_version
    sr.ManufacturerModelName = ALGORITHM_NAME
    log.info("sr built study_uid=%s lesions=%d status=%s", study_uid, len(result.lesions), result.status)
    return sr
