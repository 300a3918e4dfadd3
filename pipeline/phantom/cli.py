"""``liver-node phantom``: write synthetic multiphase liver CT studies with ground truth.

    liver-node phantom --out DIR [--cases N] [--seed S] [--lesion CLASS ...] [--phases NC,AP,PVP]
                       [--slices K] [--thickness MM] [--syntax explicit|rle|j2k] [--enhanced] [--workers W]
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .dicom_headers import OutputSyntax, WriteOptions
from .dicom_writer import PhantomWriteError
from .spec import CaseOptions, ContrastPhase, LesionClass
from .study import generate

log = logging.getLogger(__name__)


def _phases(text: str) -> tuple[ContrastPhase, ...]:
    aliases = {"DEL": "DELAYED", "DELAY": "DELAYED", "PV": "PVP", "ART": "AP"}
    out: list[ContrastPhase] = []
    for part in text.split(","):
        name = aliases.get(part.strip().upper(), part.strip().upper())
        try:
            phase = ContrastPhase(name)
        except ValueError:
            raise argparse.ArgumentTypeError(f"unknown phase {part!r} (NC, AP, PVP, DELAYED)") from None
        if phase not in out:
            out.append(phase)
    if not out:
        raise argparse.ArgumentTypeError("no phase given")
    return tuple(out)


def _lesion(text: str) -> str:
    name = text.strip().upper()
    if name in ("NONE", "NORMAL", "RANDOM") or name in LesionClass.__members__:
        return name
    raise argparse.ArgumentTypeError(f"unknown lesion class {text!r} ({', '.join(c.value for c in LesionClass)}, none)")


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0.25 <= value <= 20.0:
        raise argparse.ArgumentTypeError("must be between 0.25 and 20 mm")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liver-node phantom",
                                description="Write synthetic multiphase abdominal CT studies (DICOM) with lesion "
                                            "ground truth (labels.json per study).")
    p.add_argument("--out", type=Path, required=True, help="output folder (one subfolder per study)")
    p.add_argument("--cases", type=int, default=1, help="number of studies (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed; equal seeds give identical studies")
    p.add_argument("--first-index", type=int, default=0, help="index of the first case (PatientID PH<index+1>)")
    p.add_argument("--lesion", type=_lesion, nargs="+", metavar="CLASS",
                   help="lesion classes every case gets (HCC ICC MET FNH HEM CYST; 'none' for normal cases); "
                        "default: a random mix with some normal cases")
    p.add_argument("--phases", type=_phases, default=(ContrastPhase.NC, ContrastPhase.AP, ContrastPhase.PVP),
                   help="comma-separated phases: NC,AP,PVP[,DELAYED] (default NC,AP,PVP)")
    p.add_argument("--slices", type=int, default=40, help="slices per series (default 40)")
    p.add_argument("--thickness", type=_positive_float, default=5.0, help="slice thickness = spacing, mm (default 5)")
    p.add_argument("--syntax", choices=[s.value for s in OutputSyntax], default="explicit",
                   help="transfer syntax: explicit (uncompressed), rle, j2k (lossless)")
    p.add_argument("--enhanced", action="store_true", help="write Enhanced CT (one multi-frame instance per series)")
    p.add_argument("--normal-fraction", type=float, default=0.15, help="share of normal cases in the random mix")
    p.add_argument("--max-lesions", type=int, default=4, help="most lesions per case (default 4)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def options_from_args(args: argparse.Namespace) -> tuple[CaseOptions, WriteOptions]:
    classes: tuple[LesionClass, ...] | None = None
    if args.lesion:
        names = [n for n in args.lesion if n != "RANDOM"]
        if "RANDOM" in args.lesion and not names:
            classes = None
        else:
            classes = tuple(LesionClass[n] for n in names if n not in ("NONE", "NORMAL"))
    case_options = CaseOptions(phases=args.phases, n_slices=args.slices, slice_thickness_mm=args.thickness,
                               lesion_classes=classes, normal_fraction=args.normal_fraction,
                               max_lesions=args.max_lesions)
    return case_options, WriteOptions(syntax=OutputSyntax(args.syntax), enhanced=args.enhanced)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    if args.cases < 1 or args.slices < 1 or args.workers < 1 or args.max_lesions < 1:
        parser.print_usage(sys.stderr)
        print("liver-node phantom: --cases, --slices, --workers and --max-lesions must be >= 1", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    case_options, write_options = options_from_args(args)
    t0 = time.perf_counter()
    try:
        studies = generate(args.out, args.cases, seed=args.seed, case_options=case_options,
                           write_options=write_options, workers=args.workers, first_index=args.first_index)
    except (PhantomWriteError, OSError) as exc:
        print(f"liver-node phantom: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    images = sum(s.n_images for s in studies)
    lesions = sum(len(s.labels.lesions) for s in studies)
    print(f"wrote {len(studies)} studies, {images} images, {lesions} lesions to {args.out} "
          f"in {seconds:.1f} s ({images / max(seconds, 1e-9):.1f} images/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
