"""The ``liver-node`` command: serve, worker, echo, send, status, run, evaluate, deidentify, phantom, published-weights.

Exit status: 0 success, 1 operation failed, 2 bad configuration or usage.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from .config import ConfigError, Destination, Settings, load_settings
from .logs import setup_logging

log = logging.getLogger(__name__)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings file (default: built-in defaults)")
    p.add_argument("--data-dir", help="spool, index and results folder")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liver-node", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the DICOM node (receiver, scheduler, metrics and the inference worker)")
    _config_args(p)
    p.add_argument("--port", type=int, help="DICOM port (0 = pick a free port)")
    p.add_argument("--ae-title", help="our AE title")
    p.add_argument("--metrics-port", type=int, help="HTTP port for /metrics, /healthz, /readyz (0 = free port)")
    p.add_argument("--destination", action="append", help="result destination AE@HOST:PORT (repeatable)")
    p.add_argument("--quiet-period", type=float, help="seconds without a new instance before a study is ready")
    p.add_argument("--no-worker", action="store_true", help="do not start the inference worker (run it separately)")

    p = sub.add_parser("worker", help="run the inference worker alone (systemd runs it as its own unit)")
    _config_args(p)
    p.add_argument("--destination", action="append", help="result destination AE@HOST:PORT (repeatable)")

    p = sub.add_parser("echo", help="C-ECHO a remote AE")
    p.add_argument("target", help="AE@HOST:PORT")
    p.add_argument("--calling-ae", default="LIVERNODE")

    p = sub.add_parser("send", help="C-STORE DICOM files or folders to a remote AE")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--to", required=True, help="AE@HOST:PORT")
    p.add_argument("--calling-ae", default="LIVERNODE")

    p = sub.add_parser("status", help="studies, jobs and spool use from the index")
    _config_args(p)

    p = sub.add_parser("requeue-dead", help="retry dead-lettered result deliveries (after an outage or a fix)")
    _config_args(p)
    p.add_argument("--to", help="only this destination's, AE@HOST:PORT as configured")

    p = sub.add_parser("run", help="analyse a folder tree of DICOM files offline; results in OUT/<study>/")
    p.add_argument("input", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--weights", type=Path, help="weights folder (default: the shipped demo weights)")
    p.add_argument("--device", default="", help="cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("--unknown-phase", choices=["run", "refuse"], default="run")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    p = sub.add_parser("deidentify", help="de-identified copies of CT studies and their result.json, for research")
    p.add_argument("input", type=Path, help="a folder tree of DICOM files (e.g. the node's data_dir/studies)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True,
                   help="secret key file, made owner-only on first use; the same key gives the same pseudonyms")
    p.add_argument("--results", type=Path, help="results folder (`run --out`, or the node's data_dir/results)")
    p.add_argument("--keep-descriptions", action="store_true",
                   help="keep series/study descriptions and protocol names (free text: review them first)")

    p = sub.add_parser("evaluate", help="compare `run` results with ground truth (phantom labels or a CSV)")
    p.add_argument("results", type=Path, help="the --out folder of `liver-node run`")
    p.add_argument("--truth", type=Path, required=True, help="phantom output folder (labels.json files) or CSV")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--lesion-conf-sweep", metavar="T1,T2,...",
                   help="instead: lesion detection at IoU 0.1 for each detector lesion_conf (run at a lower one)")
    p.add_argument("--p-lesion-sweep", metavar="P1,P2,...",
                   help="with --lesion-conf-sweep: also each lesion-verifier threshold (a run at p_lesion 0); "
                        "a lesion then stays when it reaches the lesion_conf or the p_lesion")
    p.add_argument("--p-confident-sweep", metavar="V1,V2,...",
                   help="with --p-lesion-sweep: also each bar p(lesion) a candidate at or above the lesion_conf "
                        "must reach (0: the verifier never removes such a candidate)")
    p.add_argument("--candidate-conf", type=float, metavar="C",
                   help="with --lesion-conf-sweep: first drop candidates whose tracks stay below C, as a verifier's "
                        "candidate_conf C would (a run at a lower one)")

    p = sub.add_parser("published-weights",
                       help="write the manifests the node needs for the published LiLNet weights (Zenodo 12646854)")
    p.add_argument("dir", type=Path, help="folder holding best.pt, Time_BM.pth.tar, Time_B.pth.tar, Time_M.pth.tar")
    p.add_argument("--force", action="store_true", help="replace manifests already in DIR")
    p.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    p = sub.add_parser("phantom", help="write synthetic multiphase liver CT studies with ground truth", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["node.data_dir"] = args.data_dir
    for flag, key in [("port", "node.port"), ("ae_title", "node.ae_title"), ("metrics_port", "metrics.port"),
                      ("quiet_period", "studies.quiet_period")]:
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "destination", None):
        overrides["results.destinations"] = args.destination
    if getattr(args, "no_worker", False):
        overrides["worker.enabled"] = False
    return load_settings(args.config, overrides)


def _worker_argv(args: argparse.Namespace, settings: Settings) -> list[str]:
    argv = [sys.executable, "-m", "node.cli", "worker", "--data-dir", str(settings.data_dir), "--log-level", args.log_level]
    if args.config:
        argv += ["--config", str(Path(args.config).resolve())]
    # The worker queues the deliveries, so it needs the destinations given on serve's command line.
    for dest in getattr(args, "destination", None) or []:
        argv += ["--destination", dest]
    return argv


def cmd_status(settings: Settings) -> int:
    from .index import Index

    db = settings.data_dir / "index.sqlite"
    if not db.exists():
        print(f"no index at {db}")
        return 1
    index = Index(db)
    print("studies:", " ".join(f"{k}={v}" for k, v in index.counts_by_state("studies").items()))
    print("jobs:   ", " ".join(f"{k}={v}" for k, v in index.counts_by_state("jobs").items()))
    size = index.scalar("SELECT COALESCE(SUM(size), 0) FROM instances")
    oldest = index.scalar("SELECT MIN(received_at) FROM instances")
    n = index.scalar("SELECT COUNT(*) FROM instances")
    age = f"{(time.time() - oldest) / 86400:.1f} days" if oldest else "-"
    print(f"spool:   instances={n} bytes={size} oldest={age}")
    print("outbox: ", " ".join(f"{k}={v}" for k, v in index.counts_by_state("outbox").items()))
    for row in index.query("SELECT state, reason, COUNT(*) FROM jobs WHERE state='failed' GROUP BY reason"):
        print(f"failed jobs: {row[2]} x {row[1]}")
    now = time.time()
    for reason, count, due in index.query("SELECT reason, COUNT(*), MIN(not_before) FROM jobs WHERE state='queued'"
                                          " AND not_before > ? GROUP BY reason", (now,)):
        print(f"retrying jobs: {count} x {reason} (next in {due - now:.0f} s)")
    worker = index.query("SELECT status, heartbeat FROM workers ORDER BY heartbeat DESC LIMIT 1")
    print(f"worker:  {worker[0][0]} (heartbeat {now - worker[0][1]:.0f} s ago)" if worker else "worker:  none seen")
    index.close()
    return 0


def cmd_requeue_dead(settings: Settings, destination: str | None) -> int:
    from .index import Index
    from .outbox import requeue_dead

    db = settings.data_dir / "index.sqlite"
    if not db.exists():
        print(f"no index at {db}")
        return 1
    try:
        dest = str(Destination.parse(destination, "--to")) if destination else None
    except ConfigError as exc:
        print(f"liver-node: {exc}", file=sys.stderr)
        return 2
    index = Index(db)
    n = requeue_dead(index, time.time(), dest)
    index.close()
    print(f"requeued {n} dead-lettered deliveries" + (f" for {dest}" if dest else ""))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.analyzer import Analyzer, AnalyzerOptions
    from pipeline.batch import run_folder
    from pipeline.weights import WeightsError

    from .config import REPO_ROOT

    if not args.input.is_dir():
        print(f"liver-node: not a folder: {args.input}", file=sys.stderr)
        return 2
    try:
        analyzer = Analyzer.from_weights(args.weights or REPO_ROOT / "weights", device=args.device or None,
                                         options=AnalyzerOptions(unknown_phase=args.unknown_phase))
    except (WeightsError, OSError) as exc:
        print(f"liver-node: models cannot be loaded: {exc}", file=sys.stderr)
        return 1
    return run_folder(analyzer, args.input, args.out)


def cmd_deidentify(args: argparse.Namespace) -> int:
    from pipeline.deidentify import DeidentifyError, Deidentifier, export, load_or_create_key

    if not args.input.is_dir() or (args.results is not None and not args.results.is_dir()):
        print("liver-node: input and --results must be folders", file=sys.stderr)
        return 2
    try:
        deid = Deidentifier(load_or_create_key(args.key), keep_descriptions=args.keep_descriptions)
        summary = export(args.input, args.out, deid, args.results)
    except DeidentifyError as exc:
        print(f"liver-node: {exc}", file=sys.stderr)
        return 2
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(summary.skipped.items())) or "none"
    print(f"wrote {summary.written} images and {summary.results} result.json to {args.out} (skipped: {skipped})")
    return 0


def cmd_published_weights(args: argparse.Namespace) -> int:
    import json
    import tomllib

    from pipeline.published import write_published_manifests
    from pipeline.weights import WeightsError

    if not args.dir.is_dir():
        print(f"liver-node: not a folder: {args.dir}", file=sys.stderr)
        return 2
    try:
        written = write_published_manifests(args.dir, force=args.force)
    except FileExistsError as exc:
        print(f"liver-node: {exc}", file=sys.stderr)
        return 1
    except (WeightsError, OSError) as exc:
        print(f"liver-node: published weights not usable: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    for manifest in written:
        raw = tomllib.loads(manifest.read_text(encoding="utf-8"))
        for entry in [raw] if "file" in raw else raw.values():
            print(f"{entry['file']}: sha256 {entry['sha256']} md5 {entry['md5']}")
    folder = args.dir.resolve()  # a relative weights_dir in node.toml resolves against the repository, not here
    print(f"wrote {', '.join(m.name for m in written)} in {folder}")
    print("the hashes are of the files as found: compare each md5 with the one Zenodo record 12646854 lists")
    print(f"next: liver-node run INPUT --out OUT --weights {folder}")
    print(f"  or in node.toml: [pipeline] weights_dir = {json.dumps(str(folder))}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from pipeline.evaluate import evaluate, format_report, lesion_conf_sweep, load_csv_truth, load_phantom_truth

    try:
        truths = load_csv_truth(args.truth) if args.truth.is_file() else load_phantom_truth(args.truth)
    except (ValueError, KeyError, OSError) as exc:
        print(f"liver-node: ground truth not readable: {exc}", file=sys.stderr)
        return 2
    if not truths:
        print(f"liver-node: no ground truth found in {args.truth}", file=sys.stderr)
        return 2
    if args.lesion_conf_sweep:
        try:
            thresholds = sorted(float(t) for t in args.lesion_conf_sweep.split(","))
            p_lesions = sorted(float(t) for t in args.p_lesion_sweep.split(",")) if args.p_lesion_sweep else None
            p_confidents = (sorted(float(t) for t in args.p_confident_sweep.split(","))
                            if args.p_confident_sweep else None)
        except ValueError:
            print("liver-node: --lesion-conf-sweep, --p-lesion-sweep and --p-confident-sweep want numbers like "
                  "0.3,0.4", file=sys.stderr)
            return 2
        if p_confidents is not None and p_lesions is None:
            print("liver-node: --p-confident-sweep needs --p-lesion-sweep", file=sys.stderr)
            return 2
        sweep = lesion_conf_sweep(args.results, truths, thresholds, p_lesions, args.candidate_conf, p_confidents)
        for key, m in sweep.items():
            t, p, v = (key + (None,))[:3] if p_lesions is not None else (key, None, None)
            f1 = 2 * m["lesion_recall"] * m["lesion_precision"] / max(m["lesion_recall"] + m["lesion_precision"], 1e-9)
            print(f"lesion_conf {t:.2f}" + (f" p_lesion {p:.2f}" if p is not None else "") +
                  (f" p_confident {v:.2f}" if v is not None else "") +
                  f": lesion_recall={m['lesion_recall']:.3f} lesion_precision={m['lesion_precision']:.3f} "
                  f"lesion_f1={f1:.3f} false_lesions_per_case={m['false_lesions_per_case']:.2f}")
        return 0
    report = evaluate(args.results, truths)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["phantom"]:
        from pipeline.phantom.cli import main as phantom_main

        return phantom_main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", "INFO"))
    if args.command == "run":
        return cmd_run(args)
    if args.command == "evaluate":
        return cmd_evaluate(args)
    if args.command == "deidentify":
        return cmd_deidentify(args)
    if args.command == "published-weights":
        return cmd_published_weights(args)
    try:
        if args.command in ("echo", "send"):
            target = Destination.parse(args.target if args.command == "echo" else args.to, "target")
        else:
            settings = _settings(args)
    except ConfigError as exc:
        print(f"liver-node: configuration error: {exc}", file=sys.stderr)
        return 2

    if args.command == "serve":
        from .daemon import serve
        from .tls import TLSConfigError

        try:
            return serve(settings, _worker_argv(args, settings))
        except TLSConfigError as exc:
            print(f"liver-node: configuration error: tls: {exc}", file=sys.stderr)
            return 2
    if args.command == "worker":
        from .worker import Worker

        return Worker(settings).run()
    if args.command == "status":
        return cmd_status(settings)
    if args.command == "requeue-dead":
        return cmd_requeue_dead(settings, args.to)
    from .scu import SCUError, echo, send

    try:
        if args.command == "echo":
            status = echo(target, args.calling_ae)
            print(f"C-ECHO {target}: status 0x{status:04X}")
            return 0 if status == 0 else 1
        report = send(args.paths, target, args.calling_ae)
    except SCUError as exc:
        print(f"liver-node: {exc}", file=sys.stderr)
        return 1
    for path, why in report.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    for path, why in report.failed:
        print(f"failed {path}: {why}", file=sys.stderr)
    print(f"sent={report.sent} failed={len(report.failed)} skipped={len(report.skipped)}")
    return 0 if report.sent and not report.failed else 1  # nothing sent (a mistyped path) is a failure


if __name__ == "__main__":
    sys.exit(main())
