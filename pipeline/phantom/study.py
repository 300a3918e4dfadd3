"""Write phantom studies to disk: DICOM series plus ``labels.json`` per study.

Layout: ``<out>/<PatientID>/labels.json`` and ``<out>/<PatientID>/dicom/S<series number>/*.dcm``;
``<out>/index.json`` lists the studies written by ``generate``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .dicom_headers import WriteOptions, study_uids
from .dicom_writer import WrittenSeries, write_series
from .enhanced import write_enhanced_series
from .labels import StudyLabels, build_labels
from .render import Case, render_case
from .sampling import sample_case
from .spec import CaseOptions

log = logging.getLogger(__name__)

LABELS_NAME = "labels.json"
DICOM_DIR = "dicom"


@dataclass(frozen=True)
class WrittenStudy:
    case_id: str
    folder: Path
    labels_path: Path
    labels: StudyLabels
    n_images: int
    seconds: float


def write_study(case: Case, study_dir: Path, options: WriteOptions | None = None) -> StudyLabels:
    """Write every phase of ``case`` under ``study_dir/dicom`` and its labels to ``study_dir``."""
    options = options or WriteOptions()
    study_dir = Path(study_dir)
    dicom_dir = study_dir / DICOM_DIR
    dicom_dir.mkdir(parents=True, exist_ok=True)
    series: list[WrittenSeries] = []
    for acq in case.spec.acquisitions:
        if options.enhanced:
            series.append(write_enhanced_series(case, acq, dicom_dir, options))
        else:
            series.append(write_series(case, acq, dicom_dir, options))
    uids = study_uids(case.spec)
    labels = build_labels(case, series, uids.study, uids.frame_of_reference)
    labels.write(study_dir / LABELS_NAME)
    return labels


def make_study(out_dir: Path, seed: int, index: int, case_options: CaseOptions,
               write_options: WriteOptions) -> WrittenStudy:
    """Sample, render and write case ``index`` of the set made with ``seed``."""
    t0 = time.perf_counter()
    case = render_case(sample_case(seed, index, case_options))
    folder = Path(out_dir) / case.spec.case_id
    labels = write_study(case, folder, write_options)
    n_images = case.spec.geometry.n_slices * len(case.spec.acquisitions)
    seconds = time.perf_counter() - t0
    log.info("phantom study case=%s study_uid=%s lesions=%d images=%d seconds=%.2f", case.spec.case_id,
             labels.study_instance_uid, len(labels.lesions), n_images, seconds)
    return WrittenStudy(case.spec.case_id, folder, folder / LABELS_NAME, labels, n_images, seconds)


def _make_study_args(args: tuple[Path, int, int, CaseOptions, WriteOptions]) -> WrittenStudy:
    return make_study(*args)


def generate(out_dir: Path, n_cases: int, seed: int = 0, case_options: CaseOptions | None = None,
             write_options: WriteOptions | None = None, workers: int = 1, first_index: int = 0) -> list[WrittenStudy]:
    """Write ``n_cases`` studies (indices ``first_index`` ..) to ``out_dir`` and an ``index.json``."""
    case_options = case_options or CaseOptions()
    write_options = write_options or WriteOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir, seed, i, case_options, write_options) for i in range(first_index, first_index + n_cases)]
    workers = max(1, min(workers, n_cases, os.cpu_count() or 1))
    if workers == 1:
        studies = [_make_study_args(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            studies = list(pool.map(_make_study_args, jobs))
    index = {
        "format": "liver-node-phantom-index/1", "seed": seed,
        "studies": [{"case_id": s.case_id, "folder": s.folder.name, "labels": f"{s.folder.name}/{LABELS_NAME}",
                     "study_instance_uid": s.labels.study_instance_uid,
                     "classes": sorted({les.cls.value for les in s.labels.lesions}),
                     "n_lesions": len(s.labels.lesions)} for s in studies],
    }
    (out_dir / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return studies
