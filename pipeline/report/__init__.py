"""Result objects of one study: the SR first, then the Secondary Capture images.

UIDs depend only on (study UID, revision, model sha256s, ``uid_salt``), so a resend after a crash
produces the same SOP Instance UIDs (the outbox's exactly-once delivery relies on it). The node's
salt is made once per data directory (``node.index``), so a rebuilt one, whose revisions start at 1
again, makes new UIDs instead of reissuing old ones for different content.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydicom import Dataset

from ..result import StudyResult
from .sc import SC_SERIES_NUMBER, build_case_summary_sc, build_lesion_sc, lead_lesion
from .sr import ReportBuildError, build_sr, result_uid, uid_key

__all__ = ["build_result_objects", "build_sr", "build_lesion_sc", "build_case_summary_sc", "ReportBuildError"]


def build_result_objects(
    result: StudyResult,
    source_datasets: Mapping[str, Dataset],
    slices_u8_by_image: Mapping[tuple[str, int | None], np.ndarray],
    heatmaps: Mapping[int, np.ndarray] | None = None,
    revision: int = 1,
    predecessor_sr: Dataset | None = None,
    uid_salt: str = "",
) -> list[Dataset]:
    """SR, then one SC per lesion (keyed by lesion index in ``heatmaps``), then the case summary.
    ``source_datasets`` are headers by SOP Instance UID; ``slices_u8_by_image`` the windowed key images by
    (SOP Instance UID, frame number or None), as ``SeriesLesion.key_image`` names them."""
    objects: list[Dataset] = [build_sr(result, source_datasets, predecessor=predecessor_sr, revision=revision,
                                       uid_salt=uid_salt)]
    if result.status == "ok" and result.lesions:
        objects += _key_images(result, source_datasets, slices_u8_by_image, heatmaps or {}, revision, uid_salt)
    if revision > 1:  # each revision is a new series with the same number: the PACS list tells them apart by this
        for obj in objects:
            obj.SeriesDescription = f"{obj.SeriesDescription}, rev {revision}"
    return objects


def _key_images(result: StudyResult, source_datasets: Mapping[str, Dataset],
                slices_u8_by_image: Mapping[tuple[str, int | None], np.ndarray], heatmaps: Mapping[int, np.ndarray],
                revision: int, uid_salt: str) -> list[Dataset]:
    objects: list[Dataset] = []
    study = result.study_instance_uid
    mkey = uid_key(result.models, uid_salt)
    series_uid = result_uid("sc-series", study, revision, mkey)
    number = 1
    for r in result.lesions:
        key, frame = image = r.lesion.primary.key_image
        if key not in source_datasets or image not in slices_u8_by_image:
            raise ReportBuildError(f"key slice {key} (frame {frame}) of lesion {r.lesion.index} has no header or pixels")
        objects.append(build_lesion_sc(
            r, source_datasets[key], slices_u8_by_image[image], series_instance_uid=series_uid,
            sop_instance_uid=result_uid("sc", study, revision, mkey, r.lesion.index),
            instance_number=number, heatmap=heatmaps.get(r.lesion.index)))
        number += 1
    lead = lead_lesion(result).lesion.primary.key_image
    objects.append(build_case_summary_sc(
        result, source_datasets[lead[0]], slices_u8_by_image[lead], series_instance_uid=series_uid,
        sop_instance_uid=result_uid("sc", study, revision, mkey, "summary"), instance_number=number))
    return objects
