"""Pipeline benchmark: seconds per study, per stage, for a 2-phase x N-slice 512x512 phantom study.

    .venv/bin/python bench/pipeline.py [--slices 100] [--repeat 3] [--device cpu|cuda]
    .venv/bin/python bench/pipeline.py --detector-batches 1,4,16,64 --half   # GPU: detector slices/s

Prints the median of each stage over the repeats (the first, warm-up run is not counted), the
device, and the thread count. Figures go in the issue notes; nothing here is a pass/fail test.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.analyzer import Analyzer  # noqa: E402
from pipeline.batch import scan_studies, study_inputs  # noqa: E402
from pipeline.phantom import CaseOptions, ContrastPhase, LesionClass, WriteOptions, make_study  # noqa: E402
from pipeline.phases import PhaseRules  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="")
    ap.add_argument("--weights", type=Path, default=REPO / "weights")
    ap.add_argument("--detector-batches", default="", help="comma list: also time the detector alone per batch size")
    ap.add_argument("--half", action="store_true", help="fp16 for the detector timing (GPU)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        opts = CaseOptions(phases=(ContrastPhase.AP, ContrastPhase.PVP), n_slices=args.slices,
                           slice_thickness_mm=2.5, lesion_classes=(LesionClass.HCC, LesionClass.CYST), max_lesions=2)
        make_study(out, 4242, 0, opts, WriteOptions())
        (study_uid, series), = scan_studies(out).items()
        inputs = study_inputs(series, PhaseRules())
        t = time.perf_counter()
        analyzer = Analyzer.from_weights(args.weights, device=args.device or None)
        load_models = time.perf_counter() - t
        runs = []
        for i in range(args.repeat + 1):
            t = time.perf_counter()
            result = analyzer.run_study(study_uid, inputs)
            total = time.perf_counter() - t
            if i:
                runs.append({**result.timings_s, "total": total})
        device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
        print(f"device={device} torch_threads={torch.get_num_threads()} slices_per_phase={args.slices} "
              f"models_load_s={load_models:.2f} lesions={len(result.lesions)} repeats={args.repeat}")
        for stage in ("load", "detect", "lesions", "classify", "verify", "aggregate", "total"):
            values = [r.get(stage, 0.0) for r in runs]
            print(f"  {stage:10s} median {statistics.median(values):8.3f} s   (min {min(values):.3f}, max {max(values):.3f})")

        if args.detector_batches:
            from pipeline.imaging import window_u8
            from pipeline.series import load_series

            slices = window_u8(load_series(inputs[0].paths).hu)
            detector = analyzer.detector
            for bs in (int(b) for b in args.detector_batches.split(",")):
                detector.batch_size = bs
                if args.half:
                    detector.half = True
                detector.detect(slices[:bs])  # warm-up
                t = time.perf_counter()
                detector.detect(slices)
                dt = time.perf_counter() - t
                print(f"  detector batch {bs:3d}: {len(slices) / dt:8.1f} slices/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
