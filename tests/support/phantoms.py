"""Clear phantom cases for tests of the trained models: one lesion of at least 20 mm on every axis.

The case is chosen from the spec before rendering (never from what a model says), so a test that
uses it checks the model on an easy input rather than on a case picked because it passes.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.phantom import CaseOptions, ContrastPhase, LesionClass, WriteOptions, make_study, sample_case
from pipeline.phantom.study import WrittenStudy

CLEAR_DIAMETER_MM = 20.0


def clear_options(cls: LesionClass, n_slices: int = 24) -> CaseOptions:
    return CaseOptions(phases=(ContrastPhase.AP, ContrastPhase.PVP), n_slices=n_slices, slice_thickness_mm=5.0,
                       lesion_classes=(cls,), max_lesions=1)


def clear_index(cls: LesionClass, seed: int, n_slices: int = 24) -> int:
    for index in range(50):
        lesions = sample_case(seed, index, clear_options(cls, n_slices)).lesions
        if len(lesions) == 1 and min(lesions[0].diameters_mm) >= CLEAR_DIAMETER_MM:
            return index
    raise AssertionError(f"no clear {cls.value} case among the first 50 of seed {seed}")


def write_clear_case(out: Path, cls: LesionClass, seed: int, n_slices: int = 24) -> WrittenStudy:
    return make_study(out, seed, clear_index(cls, seed, n_slices), clear_options(cls, n_slices), WriteOptions())
