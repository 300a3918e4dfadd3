"""Tracking UIDs that follow a lesion, not its rank, from one revision of a study's results to the next.

Lesion indices rank lesions by size, so a late series that adds a larger lesion renumbers the others;
a tracking UID derived from the index would then move to another lesion in the amended SR. Each
lesion of a new revision takes the UID of the previous revision's lesion at the same place (nearest
centre first, within ``max(10 mm, half the larger long axis)``, as phases are matched); a lesion with
no counterpart gets a new UID of its own.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..result import StudyResult
from .sr import result_uid, tracking_uid

MATCH_MM = 10.0


def _previous_lesions(path: Path | None, study_uid: str) -> list[dict]:
    try:
        data = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return []
    lesions = data.get("lesions") or [] if data.get("study_instance_uid") == study_uid else []
    return [dict(les, tracking_uid=les.get("tracking_uid") or tracking_uid(study_uid, les["index"]))
            for les in lesions if les.get("center_mm")]


def carry_tracking(result: StudyResult, previous_result_json: Path | None, revision: int,
                   key: str = "") -> StudyResult:
    """``result`` with each lesion's tracking UID set (in place, and returned); a new lesion's UID
    derives from ``key`` too (pipeline.report.sr.uid_key), as the SR's other UIDs do."""
    study = result.study_instance_uid
    previous = _previous_lesions(previous_result_json, study)
    pairs = []
    for i, r in enumerate(result.lesions):
        for j, p in enumerate(previous):
            dist = float(np.linalg.norm(np.subtract(r.lesion.center_mm, p["center_mm"])))
            if dist <= max(MATCH_MM, 0.5 * max(r.lesion.primary.long_axis_mm, p.get("long_axis_mm") or 0.0)):
                pairs.append((dist, i, j))
    assigned: dict[int, str] = {}
    used: set[int] = set()
    for _, i, j in sorted(pairs):
        if i not in assigned and j not in used:
            assigned[i] = previous[j]["tracking_uid"]
            used.add(j)
    result.lesions = [dataclasses.replace(r, tracking_uid=assigned.get(i) or (
        tracking_uid(study, r.lesion.index, key) if revision <= 1 else
        result_uid("tracking", study, revision, r.lesion.index, key))) for i, r in enumerate(result.lesions)]
    return result
