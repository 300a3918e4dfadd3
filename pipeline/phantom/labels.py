"""Ground truth of a written phantom study (``labels.json``): series phases, lesions and boxes.

Boxes are in pixel indices of the written images: ``x`` is the column, ``y`` the row; ``x1, y1``
is the first lesion pixel and ``x2, y2`` one past the last (``[x1, x2) x [y1, y2)``). The same
lesion has the same box in every phase (one Frame of Reference, no motion). ``boxes`` is keyed
``"<SeriesInstanceUID>/<SOPInstanceUID>/<slice_index>"`` where ``slice_index`` is the position in
the case volume (0 = most inferior); for Enhanced CT the entry also gives the 0-based frame.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from .dicom_writer import WrittenSeries
from .render import Case
from .spec import ContrastPhase, LesionClass

FORMAT = "liver-node-phantom-labels/1"


@dataclass(frozen=True)
class BoxLabel:
    series_instance_uid: str
    sop_instance_uid: str
    slice_index: int
    frame_index: int
    phase: ContrastPhase
    lesion_id: int
    cls: LesionClass
    x1: int
    y1: int
    x2: int
    y2: int
    area_px: int

    @property
    def key(self) -> str:
        return box_key(self.series_instance_uid, self.sop_instance_uid, self.slice_index)


@dataclass(frozen=True)
class LesionLabel:
    lesion_id: int
    cls: LesionClass
    centre_mm: tuple[float, float, float]
    diameters_mm: tuple[float, float, float]
    slices: tuple[int, ...]
    contrast_hu: dict[ContrastPhase, float]


@dataclass(frozen=True)
class StudyLabels:
    case_id: str
    seed: int
    index: int
    study_instance_uid: str
    frame_of_reference_uid: str
    geometry: dict[str, object]
    series: tuple[WrittenSeries, ...]
    lesions: tuple[LesionLabel, ...]
    boxes: tuple[BoxLabel, ...]

    @property
    def phases(self) -> dict[str, ContrastPhase]:
        """SeriesInstanceUID -> phase."""
        return {s.series_instance_uid: s.phase for s in self.series}

    @property
    def normal(self) -> bool:
        return not self.lesions

    def boxes_by_key(self) -> dict[str, list[BoxLabel]]:
        out: dict[str, list[BoxLabel]] = {}
        for b in self.boxes:
            out.setdefault(b.key, []).append(b)
        return out

    def to_json(self) -> dict[str, object]:
        def box_json(b: BoxLabel) -> dict[str, object]:
            d = asdict(b)
            d["phase"] = b.phase.value
            d["class"] = d.pop("cls").value
            return d

        return {
            "format": FORMAT,
            "case_id": self.case_id, "seed": self.seed, "index": self.index,
            "study_instance_uid": self.study_instance_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "normal": self.normal,
            "geometry": self.geometry,
            "box_convention": "pixel indices, x=column, y=row; x1,y1 inclusive, x2,y2 exclusive",
            "phases": {uid: p.value for uid, p in self.phases.items()},
            "series": [_series_json(s) for s in self.series],
            "lesions": [{
                "lesion_id": les.lesion_id, "class": les.cls.value, "malignant": les.cls.malignant,
                "centre_mm": list(les.centre_mm), "diameters_mm": list(les.diameters_mm),
                "slices": list(les.slices),
                "contrast_hu": {p.value: (None if math.isnan(v) else round(v, 2)) for p, v in les.contrast_hu.items()},
            } for les in self.lesions],
            "boxes": {key: [box_json(b) for b in group] for key, group in self.boxes_by_key().items()},
        }

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1, sort_keys=False) + "\n")


def box_key(series_uid: str, sop_uid: str, slice_index: int) -> str:
    return f"{series_uid}/{sop_uid}/{slice_index}"


def _series_json(s: WrittenSeries) -> dict[str, object]:
    return {
        "series_instance_uid": s.series_instance_uid, "series_number": s.series_number, "phase": s.phase.value,
        "series_description": s.series_description, "delay_s": s.delay_s, "sop_class_uid": s.sop_class_uid,
        "transfer_syntax_uid": s.transfer_syntax_uid,
        "instances": [asdict(i) for i in s.instances],
    }


def build_labels(case: Case, series: list[WrittenSeries], study_uid: str, for_uid: str) -> StudyLabels:
    spec = case.spec
    g = spec.geometry
    boxes: list[BoxLabel] = []
    for s in series:
        by_slice = {i.slice_index: i for i in s.instances}
        for k, slice_boxes in enumerate(case.boxes):
            inst = by_slice[k]
            for b in slice_boxes:
                boxes.append(BoxLabel(s.series_instance_uid, inst.sop_instance_uid, k, inst.frame_index, s.phase,
                                      b.lesion_id, b.cls, b.x1, b.y1, b.x2, b.y2, b.area_px))
    lesions = tuple(LesionLabel(t.lesion_id, t.cls, tuple(round(v, 2) for v in t.centre_mm),  # type: ignore[arg-type]
                                tuple(round(v, 2) for v in t.diameters_mm), t.slices, t.contrast_hu)  # type: ignore[arg-type]
                    for t in case.lesions)
    geometry: dict[str, object] = {
        "rows": g.rows, "cols": g.cols, "pixel_spacing_mm": g.pixel_spacing_mm,
        "slice_thickness_mm": g.slice_thickness_mm, "n_slices": g.n_slices, "origin_mm": list(g.origin_mm),
        "image_orientation": [1, 0, 0, 0, 1, 0], "slice_z_mm": [round(g.z_mm(k), 4) for k in range(g.n_slices)],
    }
    return StudyLabels(case_id=spec.case_id, seed=spec.seed, index=spec.index, study_instance_uid=study_uid,
                       frame_of_reference_uid=for_uid, geometry=geometry, series=tuple(series), lesions=lesions,
                       boxes=tuple(boxes))


def read_labels(path: Path) -> dict[str, object]:
    """The raw JSON of a labels file (checked for the format tag)."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file")
    return data
