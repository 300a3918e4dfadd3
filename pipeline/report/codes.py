"""The coded concepts of the result objects, loaded once from ``conf/codes.toml``."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from highdicom.sr import CodedConcept

CODES_FILE = Path(__file__).resolve().parents[2] / "conf" / "codes.toml"
PRIVATE_SCHEME = "99LNODE"


class CodeTableError(ValueError):
    """conf/codes.toml is missing an entry or has a malformed one."""


def _concept(entry: dict, where: str) -> CodedConcept:
    try:
        return CodedConcept(value=str(entry["value"]), scheme_designator=str(entry["scheme"]),
                            meaning=str(entry["meaning"]))
    except KeyError as exc:
        raise CodeTableError(f"{CODES_FILE}: {where} lacks {exc}") from exc


@dataclass(frozen=True)
class CodeTable:
    finding_site: CodedConcept
    finding_category: CodedConcept
    procedure: CodedConcept
    equipment_purpose: CodedConcept
    classes: dict[str, CodedConcept]
    p_malignant: CodedConcept
    probability_unit: CodedConcept
    long_axis: CodedConcept
    short_axis: CodedConcept
    mm: CodedConcept

    def finding(self, cls: str) -> CodedConcept:
        if cls not in self.classes:
            raise CodeTableError(f"no code for lesion class {cls!r} in {CODES_FILE}")
        return self.classes[cls]

    @property
    def lesion_probability(self) -> CodedConcept:
        """The lesion verifier's p(lesion): how sure the node is that the finding is a lesion at all."""
        return CodedConcept(value="P-LESION", scheme_designator=PRIVATE_SCHEME,
                            meaning="Probability that the finding is a lesion")

    def class_probability(self, cls: str) -> CodedConcept:
        return CodedConcept(value=f"P-{cls}", scheme_designator=PRIVATE_SCHEME,
                            meaning=f"Probability of {self.finding(cls).meaning}"[:64])


@lru_cache(maxsize=4)
def load_codes(path: Path = CODES_FILE) -> CodeTable:
    data = tomllib.loads(path.read_text())
    try:
        prob, diam = data["probability"], data["diameter"]
        return CodeTable(
            finding_site=_concept(data["finding_site"], "finding_site"),
            finding_category=_concept(data["finding_category"], "finding_category"),
            procedure=_concept(data["procedure"], "procedure"),
            equipment_purpose=_concept(data["contributing_equipment_purpose"], "contributing_equipment_purpose"),
            classes={k: _concept(v, f"classes.{k}") for k, v in data["classes"].items()},
            p_malignant=_concept(prob["malignancy"], "probability.malignancy"),
            probability_unit=_concept(prob["unit"], "probability.unit"),
            long_axis=_concept(diam["long_axis"], "diameter.long_axis"),
            short_axis=_concept(diam["short_axis"], "diameter.short_axis"),
            mm=_concept(diam["unit"], "diameter.unit"),
        )
    except KeyError as exc:
        raise CodeTableError(f"{path}: missing section {exc}") from exc
