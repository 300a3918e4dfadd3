"""Lesion-level accuracy of a classifier weights folder on fresh phantom crops (no detector involved).

    python -m pipeline.train.classifier_eval WEIGHTS_DIR --seed 3100 --cases-per-class 10

Crops are cut around ground-truth boxes jittered as in training, in the input the manifest asks
for (grey crops per phase, or AP/PVP pairs). Per lesion the AG logits of its crops are averaged
and the hierarchy decides (``pipeline.hierarchy.decide``, as ``run_study`` does). Also scored: the
same lesions seen in one phase only (AP, then PVP), as in a single-phase study. Use a phantom seed
that no training run used (classifier data 2000, held-out 3000).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from pipeline.classify.classifier import PHASE_PAIR, LesionClassifier
from pipeline.hierarchy import MALIGNANT_CLASSES, HierarchyLogits, decide
from pipeline.train.classifier_data import ALL_CLASSES, CropSet, cached_crops


def score(logits: HierarchyLogits, data: CropSet, rows: np.ndarray | None = None) -> dict:
    """Benign/malignant and six-class accuracy per lesion over ``rows`` (default all), and the errors."""
    rows = np.arange(len(data)) if rows is None else np.asarray(rows)
    errors: dict[str, int] = {}
    bm_hits = six_hits = 0
    keys = np.unique(data.lesion[rows])
    for key in keys:
        mine = rows[data.lesion[rows] == key]
        truth = ALL_CLASSES[int(data.cls[mine[0]])].value
        decision = decide(logits.select(mine))
        bm_hits += int(decision.malignant == (truth in MALIGNANT_CLASSES))
        six_hits += int(decision.cls == truth)
        if decision.cls != truth:
            errors[f"{truth}->{decision.cls}"] = errors.get(f"{truth}->{decision.cls}", 0) + 1
    n = len(keys)
    return {"lesions": n, "benign_malignant": bm_hits / n if n else float("nan"),
            "six_class": six_hits / n if n else float("nan"), "errors": dict(sorted(errors.items()))}


def evaluate_weights(weights_dir: Path, seed: int, cases_per_class: int, cache: Path,
                     max_slices: int = 3) -> dict[str, dict]:
    """Scores for both phases together and for each phase alone."""
    clf = LesionClassifier.from_manifest(weights_dir, device="cpu")
    paired = clf.input_mode == PHASE_PAIR
    data = cached_crops(cache, seed, cases_per_class, max_slices=max_slices, jitter=True,
                        **({"paired": True} if paired else {}))
    scores = {"AP+PVP": score(clf.logits(data.crops), data)}
    for index, phase in enumerate(("AP", "PVP")):
        if paired:  # the same lesion slices, one phase given twice
            scores[f"{phase} only"] = score(clf.logits(np.ascontiguousarray(data.crops[:, index])), data)
        else:
            rows = np.flatnonzero(data.phase == index)
            scores[f"{phase} only"] = score(clf.logits(data.crops[rows]), data.take(rows))
    return scores


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.train.classifier_eval", description=__doc__.splitlines()[0])
    p.add_argument("weights", type=Path, help="folder with classifiers.manifest.toml")
    p.add_argument("--seed", type=int, default=3100, help="phantom seed (not one used in training)")
    p.add_argument("--cases-per-class", type=int, default=10)
    p.add_argument("--max-slices", type=int, default=3)
    p.add_argument("--cache", type=Path, default=Path("/tmp/classifier-eval-crops"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    for view, s in evaluate_weights(args.weights, args.seed, args.cases_per_class, args.cache,
                                    args.max_slices).items():
        print(f"{view}: lesions={s['lesions']} benign_malignant={s['benign_malignant']:.3f} "
              f"six_class={s['six_class']:.3f} errors={s['errors']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
