"""Synthetic multiphase abdominal CT studies with exact lesion ground truth.

In memory (training code)::

    from pipeline.phantom import CaseOptions, sample_case, render_case
    case = render_case(sample_case(seed=0, index=0, options=CaseOptions(n_slices=40)))
    case.volumes[ContrastPhase.AP]      # int16 HU, (slices, rows, cols), slice 0 most inferior
    case.boxes[k]                       # LesionBox tuples on slice k (same for every phase)
    case.lesion_labels, case.tissue_labels  # uint8 label volumes (lesion_id; ``tissues.Tissue``)

On disk (DICOM + labels.json per study)::

    from pipeline.phantom import WriteOptions, OutputSyntax, write_study, generate
    write_study(case, study_dir, WriteOptions(syntax=OutputSyntax.J2K))  # -> StudyLabels
    generate(out_dir, n_cases=10, seed=0, workers=2)                  # -> list[WrittenStudy]
"""
from __future__ import annotations

from collections.abc import Iterator

from .dicom_headers import OutputSyntax, WriteOptions
from .dicom_writer import PhantomWriteError, WrittenInstance, WrittenSeries
from .labels import BoxLabel, LesionLabel, StudyLabels, read_labels
from .render import Case, LesionBox, LesionTruth, render_case
from .sampling import sample_case
from .spec import CaseOptions, CaseSpec, ContrastPhase, Geometry, LesionClass, LesionSpec, PhaseAcquisition
from .study import WrittenStudy, generate, make_study, write_study


def iter_cases(seed: int, n_cases: int, options: CaseOptions | None = None, first_index: int = 0) -> Iterator[Case]:
    """Yield rendered cases ``first_index`` .. ``first_index + n_cases - 1`` (in memory, no DICOM)."""
    for index in range(first_index, first_index + n_cases):
        yield render_case(sample_case(seed, index, options))


__all__ = [
    "BoxLabel", "Case", "CaseOptions", "CaseSpec", "ContrastPhase", "Geometry", "LesionBox", "LesionClass",
    "LesionLabel", "LesionSpec", "LesionTruth", "OutputSyntax", "PhantomWriteError", "PhaseAcquisition",
    "StudyLabels", "WriteOptions", "WrittenInstance", "WrittenSeries", "WrittenStudy", "generate", "iter_cases",
    "make_study", "read_labels", "render_case", "sample_case", "write_study",
]
