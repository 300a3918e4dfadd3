"""``liver-node run INPUT_DIR --out OUT_DIR``: offline analysis of a folder tree of DICOM files.

Files are grouped into studies and series from their headers (any folder layout; non-DICOM files
are skipped), phases are labelled with the same rules as the node, and each study's result goes to
``OUT_DIR/<StudyInstanceUID>/result.json``.
"""
from __future__ import annotations

import logging
import re
import sys
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from . import header_values
from .analyzer import Analyzer, SeriesInput
from .outputs import write_result_objects
from .phases import IGNORED, PhaseRules, SeriesHeader, label_series, tm_before
from .series import RESOURCE_ERRNOS

log = logging.getLogger(__name__)
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass
class _SeriesScan:
    first: pydicom.Dataset
    paths: list[Path] = field(default_factory=list)
    earliest_time: str | None = None
    sops: set[str] = field(default_factory=set)


def _text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value) if value not in (None, "") else None


def header_of(series_uid: str, scan: _SeriesScan) -> SeriesHeader:
    ds = scan.first
    try:
        orientation = tuple(float(v) for v in header_values.orientation(ds))
    except (TypeError, ValueError):
        orientation = None
    return SeriesHeader(
        series_instance_uid=series_uid,
        modality=str(ds.get("Modality", "") or ""),
        series_description=_text(ds, "SeriesDescription"),
        series_number=_int_or_none(ds.get("SeriesNumber")),
        image_type=tuple(str(v) for v in ds.get("ImageType", [])),
        contrast_agent=header_values.contrast_agent(ds),
        contrast_route=_text(ds, "ContrastBolusRoute"),
        contrast_start_time=header_values.bolus_start_time(ds),
        acquisition_time=scan.earliest_time,
        series_time=_text(ds, "SeriesTime"),
        protocol_name=_text(ds, "ProtocolName"),
        image_orientation=orientation,
        num_instances=len(scan.paths),
    )


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):  # IS holding text: the phase rules do without a series number
        return None


def scan_studies(root: Path) -> dict[str, dict[str, _SeriesScan]]:
    studies: dict[str, dict[str, _SeriesScan]] = defaultdict(dict)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                raise
            continue
        except Exception:  # noqa: BLE001 - not DICOM, or a truncated header (struct.error, BytesLengthException...)
            continue
        study, series = str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
        if not study or not series:
            continue
        scan = studies[study].setdefault(series, _SeriesScan(ds))
        sop = str(ds.get("SOPInstanceUID", ""))
        if sop and sop in scan.sops:  # the same instance twice (an export copy): one slice, not two
            continue
        scan.sops.add(sop)
        scan.paths.append(path)
        t = header_values.acquisition_time(ds)
        if t and (scan.earliest_time is None or tm_before(t, scan.earliest_time)):
            scan.earliest_time = t
    return studies


def study_inputs(series: dict[str, _SeriesScan], rules: PhaseRules) -> list[SeriesInput]:
    headers = [header_of(uid, scan) for uid, scan in series.items()]
    labels = label_series(headers, rules)
    return [SeriesInput(uid, labels[uid].phase.value, labels[uid].reason, tuple(scan.paths),
                        ignored=labels[uid].source == IGNORED)
            for uid, scan in series.items()]


def run_folder(analyzer: Analyzer, root: Path, out: Path, rules: PhaseRules = PhaseRules()) -> int:
    studies = scan_studies(root)
    if not studies:
        print(f"no DICOM studies under {root}", file=sys.stderr)
        return 1
    failures = 0
    # A run's objects share no SOP Instance UID with another run's (revision is always 1 here), so
    # results sent on after a rerun with other inputs or rules are never taken for the earlier ones.
    uid_salt = uuid.uuid4().hex
    for i, (study_uid, series) in enumerate(sorted(studies.items()), 1):
        print(f"[{i}/{len(studies)}] analysing study {study_uid} ({len(series)} series)", file=sys.stderr, flush=True)
        if not UID_RE.match(study_uid) or len(study_uid) > 64:
            print(f"skipped: invalid StudyInstanceUID in {root}", file=sys.stderr)
            failures += 1
            continue
        try:
            inputs = study_inputs(series, rules)
            result = analyzer.run_study(study_uid, inputs)
            result.write(out / study_uid)
            write_result_objects(result, inputs, out / study_uid, heatmap=getattr(analyzer, "heatmap", None),
                                 uid_salt=uid_salt)
        except Exception as exc:  # noqa: BLE001 - one study's failure must not stop the batch
            # the exception's text can hold file paths (patient names in folder names): at DEBUG only
            log.debug("study failed", exc_info=True)
            print(f"study={study_uid} status=failed reason={type(exc).__name__} (details with --log-level DEBUG)",
                  flush=True)
            failures += 1
            continue
        case = result.case.cls if result.case else None
        secs = sum(result.timings_s.values())
        print(f"study={study_uid} status={result.status} mode={result.phase_mode} lesions={len(result.lesions)} "
              f"case={case} seconds={secs:.1f}" + (f" reason={result.reason!r}" if result.reason else ""), flush=True)
        failures += result.status != "ok"
    return 0 if failures == 0 else 1
