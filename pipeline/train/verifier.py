"""Train the lesion verifier (background vs lesion LiLNet) on ``verifier_data`` crops and write its manifest.

    python -m pipeline.train.verifier --data part1.npz part2.npz --out DIR --epochs 20 --init-backbone weights/classifier-bm.pth.tar

The last ``--held-out-cases`` phantom cases of the data are held out: the manifest records the
verifier's AUC on them and its recall of lesions and of false candidates at ``--threshold``, per
candidate (a lesion's crops averaged, as the pipeline does). Pick the pipeline threshold on the
validation phantoms (``liver-node evaluate --lesion-conf-sweep ... --p-lesion-sweep ...``) and write
it back with ``--threshold``; the training itself does not depend on it. ``--compare WEIGHTS_DIR``
scores an earlier verifier on the same held-out cases (side by side, written to the manifest), so
a new version is judged against the shipped one on candidates neither was trained on.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline.classify.checkpoints import load_lilnet_checkpoint
from pipeline.classify.preprocess import PHASE_PAIR, zoom_centre
from pipeline.classify.verifier import CLASSES, MANIFEST_NAME, LesionVerifier, lesion_probability
from pipeline.evaluate import auc
from pipeline.train.classifier import FILES, NAMES, PAIR_COLOUR, _q, ag_logits, checkpoint_lines, train_task
from pipeline.train.classifier_data import CropSet

log = logging.getLogger(__name__)

VERSION = "0.1.0-phantom"
TASK = "lesion"


def split_by_case(data: CropSet, held_out_cases: int) -> tuple[CropSet, CropSet]:
    cases = np.unique(data.case)
    test_cases = cases[-held_out_cases:] if held_out_cases else cases[:0]
    test = np.isin(data.case, test_cases)
    return data.take(~test), data.take(test)


def candidate_scores(logits: np.ndarray, labels: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(p(lesion), label) per candidate: each key's crops averaged as the pipeline averages a lesion's."""
    uniq = np.unique(keys)
    return (np.array([lesion_probability(logits[keys == k]) for k in uniq]),
            np.array([labels[keys == k][0] for k in uniq]))


def held_out_metrics(logits: Callable[[np.ndarray], np.ndarray], test: CropSet, threshold: float) -> dict:
    """Per-candidate AUC and recalls on ``test``, given a verifier's crops -> AG logits."""
    crops, labels, keys = test.for_task(TASK)
    p, y = candidate_scores(logits(crops), labels, keys)
    return {"candidates": len(y), "lesions": int(y.sum()), "auc": auc(p, y),
            "lesion_recall": float((p[y == 1] >= threshold).mean()) if (y == 1).any() else float("nan"),
            "false_candidates_rejected": float((p[y == 0] < threshold).mean()) if (y == 0).any() else float("nan")}


def previous_metrics(weights_dir: Path, test: CropSet, device: str, threshold: float) -> dict:
    """``held_out_metrics`` of the verifier in ``weights_dir``, loaded as the pipeline loads it."""
    verifier = LesionVerifier.from_manifest(weights_dir, device=device)
    return {"version": verifier.version, **held_out_metrics(verifier.logits, test, threshold)}


def _metric_lines(m: dict) -> list[str]:
    return [f"candidates = {m['candidates']}", f"lesions = {m['lesions']}", f"auc = {m['auc']:.4f}",
            f"lesion_recall = {m['lesion_recall']:.4f}",
            f"false_candidates_rejected = {m['false_candidates_rejected']:.4f}"]


def write_manifest(out: Path, r: dict, m: dict, args, command: str, previous: dict | None = None) -> Path:
    lines = [
        "# Lesion verifier (pipeline.classify.verifier): a second look at each detector candidate.",
        "# Trained on synthetic phantoms only - NOT FOR CLINICAL USE.",
        f"name = {_q(NAMES[TASK])}",
        f"version = {_q(args.version)}",
        'task = "verification"',
        *checkpoint_lines(args, CLASSES, r, command),
        "",
        "[thresholds]",
        f"p_lesion = {args.threshold}  # a candidate is reported when p(lesion) reaches this",
        f"candidate_conf = {args.candidate_conf}  # the detector lesion_conf with this verifier (candidates)",
        "",
        "[input]",
        "size = [224, 224]",
        f"mode = {_q(PHASE_PAIR)}",
        *([f"zoom_window = {args.zoom_window}  # the central window of each crop, enlarged to 224"]
          if args.zoom_window else []),
        f"colour = {_q(PAIR_COLOUR)}",
        'crop_policy = "the classifiers\' crops of the candidate (pipeline.lesion_crops), logits averaged per candidate"',
        "",
        "[training_data]",
        f"files = [{', '.join(_q(p.name) for p in args.data)}]",
        'source = "pipeline.train.verifier_data: a detector\'s false candidates and jittered true lesion boxes"',
        f"made_by = {_q(args.data_source)}",
        f"train_samples = {r['n_train']}",
        f"epochs = {args.epochs}",
        f"single_phase_fraction = {args.single_phase}",
        f"initial_backbone = {_q(args.init_backbone.name if args.init_backbone else 'random (torchvision init)')}",
        "",
        f"[held_out]  # the last {args.held_out_cases} phantom cases of the data, per candidate, at p_lesion above",
        *_metric_lines(m),
        "",
    ]
    if previous is not None:
        lines += [f"[held_out.previous]  # verifier {previous['version']} on the same held-out candidates",
                  *_metric_lines(previous), ""]
    path = out / MANIFEST_NAME
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.train.verifier", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, nargs="+", required=True, help=".npz files from pipeline.train.verifier_data")
    p.add_argument("--out", type=Path, required=True, help="weights directory to write")
    p.add_argument("--data-source", default="not recorded",
                   help="how the --data files were made (their verifier_data commands), for the manifest")
    p.add_argument("--held-out-cases", type=int, default=10)
    p.add_argument("--threshold", type=float, default=0.5, help="p(lesion) written to the manifest")
    p.add_argument("--candidate-conf", type=float, default=0.1,
                   help="detector lesion_conf written to the manifest: candidates the verifier is asked about")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--depth", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--weight-dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--init-backbone", type=Path, default=None, help="LiLNet checkpoint whose backbone starts training")
    p.add_argument("--single-phase", type=float, default=0.35, help="fraction of training pairs given as one phase twice")
    p.add_argument("--no-balance", dest="balance", action="store_false", help="no inverse-frequency class weights")
    p.add_argument("--zoom-window", type=int, default=None,
                   help="train on the central N x N px of each crop enlarged to 224 (small lesions at several cells)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--version", default=VERSION, help="version written to the manifest")
    p.add_argument("--compare", type=Path, default=None,
                   help="weights directory of an earlier verifier to score on the same held-out cases")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    command = "python -m pipeline.train.verifier " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    train, test = split_by_case(CropSet.concat([CropSet.load(p) for p in args.data]), args.held_out_cases)
    log.info("data train=%d test=%d samples", len(train), len(test))
    raw_test = test  # an earlier verifier (--compare) zooms, or not, by its own manifest
    if args.zoom_window:
        train, test = (replace(s, crops=zoom_centre(s.crops, args.zoom_window)) for s in (train, test))
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    r = train_task(TASK, train, test, args, device, args.out)
    model = load_lilnet_checkpoint(args.out / FILES[TASK], r["sha256"], depth=args.depth).model.to(device)
    m = held_out_metrics(lambda crops: ag_logits(model, crops, device), test, args.threshold)
    previous = previous_metrics(args.compare, raw_test, device, args.threshold) if args.compare else None
    path = write_manifest(args.out, r, m, args, command, previous)
    log.info("RESULT %s %s previous=%s manifest=%s wall=%.0fs", r, m, previous, path, time.time() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
