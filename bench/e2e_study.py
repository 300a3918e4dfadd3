"""End-to-end figure: one 2-phase x N-slice phantom study through a live node to a DCMTK storescp.

    .venv/bin/python bench/e2e_study.py [--slices 100] [--quiet-period 3]

Starts `liver-node serve` (its own data dir, ephemeral ports, default weights) and `storescp` as
the PACS, sends the study with `storescu`, waits for the results to be acknowledged, and prints
`liver_node_study_e2e_seconds` (last instance received -> last result acknowledged) and the
stage timings from the result. The quiet period is not part of the figure when the study is
complete at association release (the readiness rule), which is the case here.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.phantom import CaseOptions, ContrastPhase, LesionClass, WriteOptions, make_study  # noqa: E402
from tests.support.orthanc import free_port  # noqa: E402


def _metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--quiet-period", type=float, default=3.0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        opts = CaseOptions(phases=(ContrastPhase.AP, ContrastPhase.PVP), n_slices=args.slices,
                           slice_thickness_mm=2.5, lesion_classes=(LesionClass.HCC,), max_lesions=1)
        study = make_study(tmp / "study", 4243, 0, opts, WriteOptions())
        files = sorted(str(p) for p in study.folder.rglob("*.dcm"))
        pacs_port = free_port()
        (tmp / "pacs").mkdir()
        pacs = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(tmp / "pacs"), str(pacs_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        node = subprocess.Popen(
            [str(REPO / ".venv/bin/liver-node"), "serve", "--config", str(REPO / "conf/node.toml"),
             "--data-dir", str(tmp / "node"), "--port", "0", "--metrics-port", "0",
             "--destination", f"PACS@127.0.0.1:{pacs_port}", "--quiet-period", str(args.quiet_period)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = node.stdout.readline()
            m = re.search(r"dicom=(\d+) metrics=(\d+)", line)
            if not m:
                print(f"node did not start: {line!r}", file=sys.stderr)
                return 1
            dicom_port, metrics_url = m.group(1), f"http://127.0.0.1:{m.group(2)}"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # models loaded
                try:
                    if urllib.request.urlopen(metrics_url + "/readyz", timeout=2).status == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            t0 = time.monotonic()
            subprocess.run(["storescu", "-aec", "LIVERNODE", "127.0.0.1", dicom_port, *files], check=True,
                           capture_output=True)
            sent = time.monotonic() - t0
            while time.monotonic() < deadline + 600:
                text = urllib.request.urlopen(metrics_url + "/metrics", timeout=5).read().decode()
                if (_metric(text, "liver_node_study_e2e_seconds_count") or 0) >= 1:
                    break
                time.sleep(0.5)
            e2e = _metric(text, "liver_node_study_e2e_seconds_sum")
            print(f"slices_per_phase={args.slices} instances={len(files)} storescu_seconds={sent:.1f} "
                  f"study_e2e_seconds={e2e:.1f} results_at_pacs={len(list((tmp / 'pacs').iterdir()))}")
            for stage in ("load", "detect", "lesions", "classify", "verify", "aggregate", "report"):
                v = _metric(text, f'liver_node_pipeline_stage_seconds_sum{{stage="{stage}"}}')
                if v is not None:
                    print(f"  stage {stage:9s} {v:7.2f} s")
        finally:
            node.terminate()
            node.wait(60)
            pacs.terminate()
            pacs.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
