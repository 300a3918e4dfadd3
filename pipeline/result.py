"""The typed result of one study's analysis, and its JSON form (``result.json``)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .hierarchy import Decision
from .lesions import Lesion

SCHEMA = "liver-node/result/1"


@dataclass(frozen=True)
class SeriesUse:
    series_uid: str
    phase: str
    reason: str
    used: bool
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class LesionResult:
    lesion: Lesion
    decision: Decision
    p_lesion: float | None = None  # the lesion verifier's probability that the candidate is a lesion (None: no verifier)
    tracking_uid: str | None = None  # the SR's tracking UID, kept across revisions (pipeline.report.tracking)
    candidate_score: float | None = None  # the verifier manifest's candidate score, when it has one (reporting_rule)


@dataclass
class StudyResult:
    study_instance_uid: str
    status: str  # "ok" | "not_analysed"
    reason: str | None = None
    phase_mode: str | None = None  # "AP+PVP", "AP only", "PVP only", "unknown phase"
    series: list[SeriesUse] = field(default_factory=list)
    lesions: list[LesionResult] = field(default_factory=list)
    case: Decision | None = None
    models: list[ModelInfo] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # what became of the detector's candidates: proposed, reported, rejected_by_verifier, too_small
    # (None when the study was not analysed); lets a reader, and the score trainer, see a filtered run
    candidates: dict[str, int] | None = None

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "study_instance_uid": self.study_instance_uid,
            "status": self.status,
            "reason": self.reason,
            "phase_mode": self.phase_mode,
            "case": _case(self.case),
            "lesions": [_lesion(r) for r in self.lesions],
            "candidates": self.candidates,
            "phases": [
                {"series_uid": s.series_uid, "phase": s.phase, "reason": s.reason, "used": s.used, "notes": list(s.notes)}
                for s in self.series
            ],
            "models": [{"name": m.name, "version": m.version, "sha256": m.sha256} for m in self.models],
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "notes": self.notes,
            "disclaimer": "Research software; demo models trained on synthetic phantoms. Not for diagnostic use.",
        }

    def findings(self) -> dict:
        """What the node's monitoring counts (analyses by outcome, case class, phases used): no identifier."""
        return {"status": self.status, "phase_mode": self.phase_mode, "lesions": len(self.lesions),
                "case_class": self.case.cls if self.case is not None and self.lesions else None}

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "result.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False))
        tmp.replace(path)
        return path


def _num(v: float | None, digits: int = 4) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), digits)


def _case(d: Decision | None) -> dict:
    if d is None:
        return {"class": None, "malignant": None, "probabilities": None}
    return {"class": d.cls, "malignant": d.malignant, "p_malignant": _num(d.p_malignant),
            "probabilities": {k: _num(v) for k, v in d.probabilities.items()}, "crops": d.crops}


def _lesion(r: LesionResult) -> dict:
    les, d = r.lesion, r.decision
    p = les.primary
    return {
        "index": les.index,
        "tracking_uid": r.tracking_uid,
        "class": d.cls,
        "malignant": d.malignant,
        "p_malignant": _num(d.p_malignant),
        "probabilities": {k: _num(v) for k, v in d.probabilities.items()},
        "center_mm": [round(v, 2) for v in les.center_mm],
        "long_axis_mm": round(p.long_axis_mm, 1),
        "short_axis_mm": round(p.short_axis_mm, 1),
        "volume_ml": round(p.volume_ml, 2),
        "phases": list(les.phases),
        # 6 decimals: near 0 or 1, 4 would move the candidate score's logit by more than its bar's step
        "p_lesion": _num(r.p_lesion, 6),
        "candidate_score": _num(r.candidate_score),
        "size_method": "detector box (long/short side on the key slice; volume as stacked ellipses)",
        "views": [
            {
                "phase": v.phase,
                "series_uid": v.series_uid,
                "key_slice_index": v.key.slice_index,
                "key_sop_instance_uid": v.key_sop_instance_uid,
                "key_frame_number": v.key_frame_number,  # multi-frame (Enhanced CT) instances; null otherwise
                "key_box_xyxy": [round(x, 1) for x in (v.key.x1, v.key.y1, v.key.x2, v.key.y2)],
                "boxes": [
                    {"slice_index": b.slice_index, "sop_instance_uid": sop, "frame_number": frame,
                     "confidence": _num(b.confidence), "xyxy": [round(x, 1) for x in (b.x1, b.y1, b.x2, b.y2)]}
                    for b, (sop, frame) in zip(v.boxes, v.box_images)
                ],
                "mean_hu": _num(v.mean_hu),
                "detector_confidence": _num(v.confidence),
            }
            for v in les.views
        ],
        "crops": d.crops,
    }
