"""Result objects of one study: the SR first, then the Secondary Capture images.

UIDs depend only on (study UID, revision, model sha256s), so a resend after a crash produces the
same SOP Instance UIDs (the outbox's exactly-once delivery relies on it).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydicom import Dataset

from ..result import StudyResult
from .sc import SC_SERIES_NUMBER, build_case_summary_sc, build_lesion_sc
from .sr import ReportBuildError, build_sr, models_key, result_uid

__all__ = ["build_result_objects", "build_sr", "build_lesion_sc", "build_case_summary_sc", "ReportBuildError"]


def build_result_objects(
    result: StudyResult,
    source_datasets: Mapping[str, Dataset],
    slices_u8_by_sop: Mapping[str, np.ndarray],
    heatmaps: Mapping[int, np.ndarray] | None = None,
    revision: int = 1,
    predecessor_sr: Dataset | None = None,
) -> list[Dataset]:
    """SR, then one SC per lesion (keyed by lesion index in ``heatmaps``), then the case summary."""
    objects: list[Dataset] = [build_sr(result, source_datasets, predecessor=predecessor_sr, revision=revision)]
    if result.status != "ok" or not result.lesions:
        return objects
    study = result.study_instance_uid
    mkey = models_key(result.models)
    series_uid = result_uid("sc-series", study, revision, mkey)
    heatmaps = heatmaps or {}
    number = 1
    for r in result.lesions:
        key = r.lesion.primary.key_sop_instance_uid
        if key not in source_datasets or key not in slices_u8_by_sop:
            raise ReportBuildError(f"key slice {key} of lesion {r.lesion.index} has no header or pixels")
        objects.append(build_lesion_sc(
            r, source_datasets[key], slices_u8_by_sop[key], series_instance_uid=series_uid,
            sop_instance_uid=result_uid("sc", study, revision, mkey, r.lesion.index),
            instance_number=number, heatmap=heatmaps.get(r.lesion.index)))
        number += 1
    lead = max(result.lesions, key=lambda r: r.lesion.primary.key.area).lesion.primary.key_sop_instance_uid
    objects.append(build_case_summary_sc(
        result, source_datasets[lead], slices_u8_by_sop[lead], series_instance_uid=series_uid,
        sop_instance_uid=result_uid("sc", study, revision, mkey, "summary"), instance_number=number))
    return objects
