"""Fit the verifier manifest's ``[candidate_score]`` (``pipeline.reporting_rule.CandidateScore``) on a validation run.

The run is the node's own output on validation phantoms with the verifier's manifest at p_lesion 0
and without a ``[candidate_score]`` table (which would decide instead), so every candidate is in its
result files with the values the score weighs. Each candidate is labelled by
whether it touches a true lesion (a box at IoU >= 0.1 on one image). A logistic regression is fitted on
the standardised features; its bar is the F1-best of lesion-level detection (``pipeline.evaluate``,
one-to-one) on out-of-fold scores, folds made of whole studies, so the bar is not chosen on scores
the model was fitted to.

    python -m pipeline.train.candidate_score --results RUN --truth TRUTH [--candidate-conf 0.1]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from pipeline.analyzer import AnalyzerOptions
from pipeline.evaluate import (CaseTruth, at_candidate_score, at_lesion_conf, detection_metrics, load_phantom_truth,
                               load_results, saved_features, touched_lesions)
from pipeline.reporting_rule import CandidateScore

BARS = np.round(np.linspace(-4.0, 4.0, 81), 2)


def touches_truth(les: dict, truth: CaseTruth, iou: float = 0.1) -> bool:
    return bool(touched_lesions(les, truth, iou))


def filtered_runs(results: dict[str, dict]) -> int:
    """How many studies were filtered by a verifier rule, so that their rejected candidates are missing."""
    return sum(1 for res in results.values()
               if any(les.get("candidate_score") is not None for les in res["lesions"])
               or (res.get("candidates") or {}).get("rejected_by_verifier", 0) > 0)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iterations: int = 50) -> tuple[np.ndarray, float]:
    """Newton steps on the L2-penalised log loss (the bias unpenalised): (weights, bias)."""
    x1 = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(x1.shape[1])
    penalty = l2 * np.eye(len(w))
    penalty[-1, -1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x1 @ w)))
        grad = x1.T @ (p - y) + penalty @ w
        hess = x1.T @ (x1 * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return w[:-1], float(w[-1])


def fit_rule(results: dict[str, dict], truths: dict[str, CaseTruth], l2: float = 1e-2) -> CandidateScore:
    """The score fitted on every verified candidate of these studies (bar 0 until one is chosen)."""
    feats, labels = [], []
    for uid, truth in truths.items():
        for les in results.get(uid, {}).get("lesions", []):
            if les.get("p_lesion") is not None:
                feats.append(saved_features(les))
                labels.append(float(touches_truth(les, truth)))
    if len(set(labels)) < 2:
        raise ValueError("the run needs both true and false candidates to fit a score")
    x = np.array(feats)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0  # a feature constant here carries no evidence (and no division by ~0)
    weights, bias = fit_logistic((x - mean) / scale, np.array(labels), l2)
    return CandidateScore(*(tuple(float(v) for v in a) for a in (mean, scale, weights)), bias, 0.0)


def folds_by_study(uids: list[str], k: int, seed: int) -> dict[str, int]:
    order = np.random.default_rng(seed).permutation(len(uids))
    ordered = sorted(uids)
    return {ordered[i]: j % k for j, i in enumerate(order)}


def out_of_fold(results: dict[str, dict], truths: dict[str, CaseTruth], k: int = 5, seed: int = 0,
                l2: float = 1e-2) -> list[dict]:
    """Lesion-level detection at each bar in ``BARS``, every study scored by the fold model that did not see it."""
    fold = folds_by_study(list(truths), k, seed)
    parts = []
    for f in range(k):
        train = {u: t for u, t in truths.items() if fold[u] != f}
        rule = fit_rule(results, train, l2)
        parts.append((rule, {u: results[u] for u in truths if fold[u] == f and u in results}))
    rows = []
    for bar in BARS:
        kept = {}
        for rule, held in parts:
            kept.update(at_candidate_score(held, rule, float(bar)))
        m = detection_metrics(kept, truths)["iou_0.1"]
        r, p = m["lesion_recall"], m["lesion_precision"]
        rows.append({"bar": float(bar), "recall": r, "precision": p, "f1": 2 * r * p / (r + p) if r + p else 0.0})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, required=True, help="a validation run at p_lesion 0 (liver-node run --out)")
    ap.add_argument("--truth", type=Path, required=True, help="the phantoms' folder (labels.json per study)")
    ap.add_argument("--candidate-conf", type=float, default=0.1, help="the verifier manifest's candidate_conf")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--l2", type=float, default=1e-2)
    ap.add_argument("--max-crops-per-view", type=int, default=AnalyzerOptions().max_crops_per_view,
                    help="the analyzer setting of the run (recorded: the score counts crops)")
    args = ap.parse_args(argv)
    results = at_lesion_conf(load_results(args.results), args.candidate_conf)
    truths = load_phantom_truth(args.truth)
    if not truths:
        ap.error(f"no labels.json under {args.truth}")
    if filtered := filtered_runs(results):
        ap.error(f"{filtered} result(s) were filtered by the verifier (a candidate score, or a p_lesion bar): "
                 f"fit on a run with p_lesion 0 and no [candidate_score] in the verifier manifest")
    rows = out_of_fold(results, truths, args.folds, args.seed, args.l2)
    best = max(rows, key=lambda r: (r["f1"], r["recall"]))
    for r in rows[::5]:
        print(f"bar {r['bar']:+.1f}: recall {r['recall']:.3f} precision {r['precision']:.3f} F1 {r['f1']:.3f}")
    fitted = fit_rule(results, truths, args.l2)
    rule = dataclasses.replace(fitted, threshold=best["bar"], max_crops_per_view=args.max_crops_per_view)
    print(f"# out-of-fold ({args.folds} folds of whole studies, {len(truths)} studies), F1-best bar {best['bar']:+.1f}: "
          f"recall {best['recall']:.3f}, precision {best['precision']:.3f}, F1 {best['f1']:.3f}")
    print("[candidate_score]")
    for key, value in rule.to_table().items():
        if isinstance(value, list) and key != "features":
            value = [round(v, 4) for v in value]
        elif isinstance(value, float):
            value = round(value, 4)
        print(f"{key} = {json.dumps(value)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
