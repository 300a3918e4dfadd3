"""``liver-node evaluate``: results against ground truth, with the LiLNet paper's metrics.

Truth is the phantom's ``labels.json`` files (found under a folder) or a CSV of
``study_instance_uid,class``. Detection is scored per image, box against box, at IoU 0.1/0.3/0.5
(the paper's protocol), and also per lesion (a true lesion is found when any predicted box matches
any of its boxes at IoU 0.1). Classification is scored per lesion (each true lesion against the
predicted lesion that found it) and per case, with 95% bootstrap confidence intervals over cases.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .hierarchy import ALL_CLASSES, MALIGNANT_CLASSES
from .lesions import box_iou
from .reporting_rule import CandidateScore, candidate_features, is_reported

IOUS = (0.1, 0.3, 0.5)
NO_ANSWER = "none"  # a case the system gave no class (nothing found, or not analysed)


@dataclass
class CaseTruth:
    study_uid: str
    case_class: str | None  # None: normal, or several classes (no single case label)
    normal: bool
    boxes: dict[tuple[str, int], list[tuple[int, tuple[float, float, float, float]]]]  # image_key -> [(lesion_id, box)]
    lesion_classes: dict[int, str]
    lesion_diameters_mm: dict[int, float] = field(default_factory=dict)  # largest in-plane diameter
    lesion_contrast_hu: dict[int, float] = field(default_factory=dict)  # largest |lesion - liver| over AP/PVP


SIZE_BINS_MM = ((0.0, 10.0), (10.0, 20.0), (20.0, 30.0), (30.0, float("inf")))
CONTRAST_BINS_HU = ((0.0, 20.0), (20.0, 40.0), (40.0, float("inf")))


def _bin(value: float, bins: tuple[tuple[float, float], ...]) -> int:
    return next(i for i, (lo, hi) in enumerate(bins) if lo <= value < hi)


def _bin_label(i: int, bins: tuple[tuple[float, float], ...], unit: str) -> str:
    lo, hi = bins[i]
    return f">={lo:g} {unit}" if hi == float("inf") else f"{lo:g}-{hi:g} {unit}"


def image_key(sop_instance_uid: str, frame_number: int | None) -> tuple[str, int]:
    """One image: a classic instance is its own frame 1; a multi-frame (Enhanced CT) one holds many."""
    return sop_instance_uid, frame_number or 1


def _box_key(box: dict) -> tuple[str, int]:
    return image_key(box["sop_instance_uid"], box.get("frame_number"))


def load_phantom_truth(folder: Path) -> dict[str, CaseTruth]:
    truths = {}
    for path in sorted(folder.rglob("labels.json")):
        d = json.loads(path.read_text())
        classes = {les["lesion_id"]: les["class"] for les in d["lesions"]}
        diameters = {les["lesion_id"]: float(max(les["diameters_mm"][:2])) for les in d["lesions"]
                     if "diameters_mm" in les}
        # a lesion that falls between slices has no measured contrast (null): it is in no slice's truth either
        measured = {les["lesion_id"]: [abs(float(v)) for k, v in les.get("contrast_hu", {}).items()
                                       if k in ("AP", "PVP") and v is not None] for les in d["lesions"]}
        contrasts = {lesion_id: max(values) for lesion_id, values in measured.items() if values}
        boxes: dict[str, list] = {}
        for entries in d["boxes"].values():
            for e in entries:
                if e["phase"] in ("AP", "PVP"):
                    boxes.setdefault(image_key(e["sop_instance_uid"], e.get("frame_index", 0) + 1), []).append(
                        (e["lesion_id"], (e["x1"], e["y1"], e["x2"], e["y2"])))
        kinds = set(classes.values())
        truths[d["study_instance_uid"]] = CaseTruth(d["study_instance_uid"], kinds.pop() if len(kinds) == 1 else None,
                                                    not classes, boxes, classes, diameters, contrasts)
    return truths


NORMAL_NAMES = ("", "NONE", "NORMAL")  # a CSV row for a case with no lesion


def load_csv_truth(path: Path) -> dict[str, CaseTruth]:
    """``study_instance_uid,class`` rows; class is one of the six (any case) or empty / none / normal."""
    truths = {}
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"study_instance_uid", "class"} <= {n.strip() for n in reader.fieldnames}:
            raise ValueError(f"{path.name}: the header must name study_instance_uid and class")
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            cls = row["class"].upper()
            if cls not in NORMAL_NAMES and cls not in ALL_CLASSES:
                raise ValueError(f"{path.name} line {line}: class {row['class']!r} is none of "
                                 f"{', '.join(ALL_CLASSES)}, or empty / none / normal")
            normal = cls in NORMAL_NAMES
            truths[row["study_instance_uid"]] = CaseTruth(row["study_instance_uid"], None if normal else cls,
                                                          normal, {}, {})
    return truths


def bootstrap(cases: np.ndarray, fn, rng: np.random.Generator, n: int = 1000) -> dict:
    """Point value of ``fn`` on all rows and its 95% interval over resampled cases (rows move together)."""
    unique = np.unique(cases)
    rows_of = {c: np.flatnonzero(cases == c) for c in unique}
    stats = []
    for _ in range(n):
        idx = np.concatenate([rows_of[c] for c in rng.choice(unique, len(unique))])
        value = fn(idx)
        if not np.isnan(value):
            stats.append(value)
    lo, hi = np.percentile(stats, [2.5, 97.5]) if stats else (np.nan, np.nan)
    return {"value": float(fn(np.arange(len(cases)))), "ci95": [float(lo), float(hi)]}


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def _prf(y_true: np.ndarray, y_pred: np.ndarray, classes) -> tuple[float, float, float]:
    """Macro precision, recall, F1 over the classes present in the truth."""
    ps, rs, fs = [], [], []
    for c in classes:
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        if tp + fn == 0:
            continue
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn)
        ps.append(p), rs.append(r), fs.append(2 * p * r / (p + r) if p + r else 0.0)
    if not ps:
        return float("nan"), float("nan"), float("nan")
    return float(np.mean(ps)), float(np.mean(rs)), float(np.mean(fs))


def max_matching(edges: dict) -> dict:
    """A maximum one-to-one matching of a bipartite graph {left: set of rights}: {left: right}
    (augmenting paths; a greedy pass can miss pairs that exist)."""
    owner: dict = {}

    def augment(left, seen: set) -> bool:
        for right in edges[left]:
            if right not in seen:
                seen.add(right)
                if right not in owner or augment(owner[right], seen):
                    owner[right] = left
                    return True
        return False

    for left in edges:
        augment(left, set())
    return {left: right for right, left in owner.items()}


def touched_lesions(les: dict, truth: CaseTruth, iou: float) -> set:
    """The true lesions a predicted lesion touches: any of its boxes matches one of theirs at ``iou``."""
    return {lesion_id for view in les["views"] for b in view["boxes"]
            for lesion_id, tb in truth.boxes.get(_box_key(b), []) if box_iou(b["xyxy"], tb) >= iou}


def detection_metrics(results: dict[str, dict], truths: dict[str, CaseTruth]) -> dict:
    """Boxes are matched one-to-one per image, lesions one-to-one per study (a predicted and a true
    lesion pair when any of their boxes match): a true lesion reported twice, as fragments or as
    separate AP-only and PVP-only lesions, counts once, and the other report as a false lesion."""
    out = {}
    for thr in IOUS:
        tp = fp = fn = 0
        found_lesions = total_lesions = 0
        pred_lesions = true_pred_lesions = duplicates = 0
        by_size: dict[int, list[int]] = {}  # size bin -> [found, total]
        by_size_contrast: dict[tuple[int, int], list[int]] = {}  # (size bin, contrast bin) -> [found, total]
        for uid, truth in truths.items():
            res = results.get(uid)
            lesions = res["lesions"] if res else []
            pred: dict[tuple[str, int], list] = {}
            for les in lesions:
                for b in (b for view in les["views"] for b in view["boxes"]):
                    pred.setdefault(_box_key(b), []).append(tuple(b["xyxy"]))
            for image in set(pred) | set(truth.boxes):
                p, t = pred.get(image, []), truth.boxes.get(image, [])
                matched = max_matching({j: {i for i, pb in enumerate(p) if box_iou(pb, tb) >= thr}
                                        for j, (_, tb) in enumerate(t)})
                tp, fn, fp = tp + len(matched), fn + len(t) - len(matched), fp + len(p) - len(matched)
            edges = {k: touched_lesions(les, truth, thr) for k, les in enumerate(lesions)}
            pairs = max_matching(edges)
            pred_lesions += len(lesions)
            true_pred_lesions += len(pairs)
            duplicates += sum(1 for k, hits in edges.items() if hits and k not in pairs)
            found = set(pairs.values())
            total_lesions += len(truth.lesion_classes)
            found_lesions += len(found)
            for lesion_id, diameter in truth.lesion_diameters_mm.items():
                tallies = [by_size.setdefault(_bin(diameter, SIZE_BINS_MM), [0, 0])]
                if lesion_id in truth.lesion_contrast_hu:
                    key = (_bin(diameter, SIZE_BINS_MM), _bin(truth.lesion_contrast_hu[lesion_id], CONTRAST_BINS_HU))
                    tallies.append(by_size_contrast.setdefault(key, [0, 0]))
                for tally in tallies:
                    tally[0] += lesion_id in found
                    tally[1] += 1
        precision = tp / (tp + fp) if tp + fp else float("nan")
        recall = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else float("nan")
        out[f"iou_{thr}"] = {"box_recall": recall, "box_precision": precision, "box_f1": f1,
                             "lesion_recall": found_lesions / total_lesions if total_lesions else float("nan"),
                             # one-to-one: a predicted lesion is true when it is paired with a true lesion
                             "lesion_precision": true_pred_lesions / pred_lesions if pred_lesions else float("nan"),
                             "false_lesions_per_case": (pred_lesions - true_pred_lesions) / max(len(truths), 1),
                             # of those, reports of a true lesion another report already stands for
                             "duplicate_lesions_per_case": duplicates / max(len(truths), 1),
                             # found / total true lesions by largest in-plane diameter (phantom truth only)
                             "lesion_recall_by_size": {_bin_label(i, SIZE_BINS_MM, "mm"): f"{by_size[i][0]}/{by_size[i][1]}"
                                                       for i in sorted(by_size)},
                             # separates "too small" from "too faint" (phantom truth records each lesion's contrast)
                             "lesion_recall_by_size_and_contrast": {
                                 _bin_label(i, SIZE_BINS_MM, "mm"): {
                                     _bin_label(j, CONTRAST_BINS_HU, "HU"): f"{n[0]}/{n[1]}"
                                     for (i2, j), n in sorted(by_size_contrast.items()) if i2 == i}
                                 for i in sorted({i for i, _ in by_size_contrast})}}
    return out


def _lesion_pairs(results: dict[str, dict], truths: dict[str, CaseTruth]) -> list[tuple[str, str, str, float]]:
    """(case, true class, predicted class, p_malignant) for each true lesion found at IoU 0.1, paired one-to-one
    with a predicted lesion as detection pairs them (one report cannot stand for two lesions), the best
    overlapping report preferred."""
    pairs = []
    for uid, truth in truths.items():
        res = results.get(uid)
        if not res:
            continue
        lesions = res["lesions"]
        overlap: dict[tuple[str, int], float] = {}  # (true lesion, report) -> best box IoU
        for k, les in enumerate(lesions):
            for b in (b for view in les["views"] for b in view["boxes"]):
                for tid, tb in truth.boxes.get(_box_key(b), []):
                    if (v := box_iou(b["xyxy"], tb)) >= 0.1:
                        overlap[tid, k] = max(overlap.get((tid, k), 0.0), v)
        edges = {tid: sorted((k for t, k in overlap if t == tid), key=lambda k, tid=tid: -overlap[tid, k])
                 for tid in truth.lesion_classes}
        matched = max_matching(edges)
        for tid, true_cls in truth.lesion_classes.items():
            if tid in matched:
                les = lesions[matched[tid]]
                pairs.append((uid, true_cls, les["class"], les["p_malignant"]))
    return pairs


def classification_metrics(rows: list[tuple[str, str, str, float]], seed: int = 0) -> dict:
    if not rows:
        return {}
    rng = np.random.default_rng(seed)
    cases = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    p = np.array([r[2] for r in rows])
    pm = np.array([r[3] for r in rows], dtype=float)
    ym = np.isin(y, MALIGNANT_CLASSES).astype(int)
    pmal = np.where(p == NO_ANSWER, -1, np.isin(p, MALIGNANT_CLASSES).astype(int))  # no answer: neither

    def ci(fn):
        return bootstrap(cases, fn, rng)

    return {
        "n": len(rows),
        "no_answer": int(np.sum(p == NO_ANSWER)),
        "benign_malignant": {
            "accuracy": ci(lambda i: float(np.mean(ym[i] == pmal[i]))),
            "auc": ci(lambda i: auc(pm[i], ym[i])),
            "precision": ci(lambda i: _prf(ym[i], pmal[i], [1])[0]),
            "recall": ci(lambda i: _prf(ym[i], pmal[i], [1])[1]),
            "f1": ci(lambda i: _prf(ym[i], pmal[i], [1])[2]),
        },
        "six_class": {
            "accuracy": ci(lambda i: float(np.mean(y[i] == p[i]))),
            "macro_precision": ci(lambda i: _prf(y[i], p[i], ALL_CLASSES)[0]),
            "macro_recall": ci(lambda i: _prf(y[i], p[i], ALL_CLASSES)[1]),
            "macro_f1": ci(lambda i: _prf(y[i], p[i], ALL_CLASSES)[2]),
        },
        "confusion": {t: {q: int(np.sum((y == t) & (p == q))) for q in ALL_CLASSES} for t in ALL_CLASSES},
    }


def load_results(results_dir: Path) -> dict[str, dict]:
    results = {}
    for path in results_dir.rglob("result.json"):
        d = json.loads(path.read_text())
        results[d["study_instance_uid"]] = d
    return results


def at_lesion_conf(results: dict[str, dict], lesion_conf: float) -> dict[str, dict]:
    """Results as a stricter detector ``lesion_conf`` would have left them.

    A per-phase view (one 3D track) survives when its highest box confidence reaches
    ``lesion_conf``, and a lesion when any view survives: the detector's hysteresis applied
    afterwards, so one low-threshold run can be scored at several thresholds. Exact when the
    run's own ``lesion_conf`` was at or below the lowest value swept, except for fragments the
    analyzer joined (``merge_fragments``): a low-confidence fragment joined into a surviving view
    keeps its boxes here, where a run at the higher bar would have dropped it before the join.
    """
    out = {}
    for uid, res in results.items():
        lesions = []
        for les in res["lesions"]:
            views = [v for v in les["views"] if (v["detector_confidence"] or 0.0) >= lesion_conf]
            if views:
                lesions.append({**les, "views": views})
        out[uid] = {**res, "lesions": lesions}
    return out


def _keep_lesions(results: dict[str, dict], keep) -> dict[str, dict]:
    return {uid: {**res, "lesions": [les for les in res["lesions"] if keep(les)]} for uid, res in results.items()}


def at_p_lesion(results: dict[str, dict], p_lesion: float, accept_conf: float = 2.0,
                p_confident: float = 0.0) -> dict[str, dict]:
    """Results as a stricter lesion-verifier rule would have left them (``pipeline.reporting_rule``): a
    lesion stays when its p(lesion) reaches ``p_lesion``, when a view's detector confidence reaches
    ``accept_conf`` and p(lesion) reaches ``p_confident``, or when it has no verifier probability. Exact
    when the run's own rule kept every candidate (p_lesion 0)."""
    def keep(les: dict) -> bool:
        top = max((v["detector_confidence"] or 0.0) for v in les["views"])
        return is_reported(top, les.get("p_lesion"), accept_conf, p_lesion, p_confident)
    return _keep_lesions(results, keep)


def at_candidate_score(results: dict[str, dict], rule: CandidateScore, threshold: float | None = None) -> dict[str, dict]:
    """Results as ``rule`` (at ``threshold``, default its own) would have left them, for a run that kept every
    candidate (p_lesion 0, no ``[candidate_score]``). Near-exact: the result file rounds p(lesion) to 6 decimals,
    confidences to 4 and sizes to 0.1 mm, so a candidate within about 0.02 of the bar may fall the other way
    (runs written before p(lesion) kept 6 decimals: up to about 0.1 near p 0 or 1). A lesion without a verifier
    probability stays, as in ``at_p_lesion``."""
    bar = rule.threshold if threshold is None else threshold
    return _keep_lesions(results, lambda les: les.get("p_lesion") is None or rule.score(saved_features(les)) >= bar)


def saved_features(les: dict) -> np.ndarray:
    """``candidate_features`` of a lesion in a result file (one with a verifier probability)."""
    top = max((v["detector_confidence"] or 0.0) for v in les["views"])
    return candidate_features(top, les["p_lesion"], les["long_axis_mm"], les["crops"])


def lesion_conf_sweep(results_dir: Path, truths: dict[str, CaseTruth], thresholds: list[float],
                      p_lesions: list[float] | None = None, candidate_conf: float | None = None,
                      p_confidents: list[float] | None = None) -> dict:
    """Lesion-level detection at IoU 0.1 for each candidate ``lesion_conf`` (pick it on validation data).
    With ``p_lesions`` (a run with a verifier at p_lesion 0): for each (lesion_conf, p_lesion) pair, the
    run's candidates kept as the analyzer keeps them (confidence >= lesion_conf, or p(lesion) >= p_lesion);
    with ``p_confidents`` too, keyed (lesion_conf, p_lesion, p_confident), where a candidate at or above
    lesion_conf also needs p(lesion) >= p_confident.
    ``candidate_conf`` first drops the candidates a verifier with that floor is never asked about, so one
    run at a low floor also scores the higher ones."""
    results = load_results(results_dir)
    if candidate_conf is not None:
        results = at_lesion_conf(results, candidate_conf)
    if p_lesions is None:
        return {t: detection_metrics(at_lesion_conf(results, t), truths)["iou_0.1"] for t in thresholds}
    if p_confidents is None:
        return {(t, p): detection_metrics(at_p_lesion(results, p, accept_conf=t), truths)["iou_0.1"]
                for t in thresholds for p in p_lesions}
    return {(t, p, v): detection_metrics(at_p_lesion(results, p, accept_conf=t, p_confident=v), truths)["iou_0.1"]
            for t in thresholds for p in p_lesions for v in p_confidents}


def evaluate(results_dir: Path, truths: dict[str, CaseTruth]) -> dict:
    results = load_results(results_dir)
    missing = sorted(set(truths) - set(results))
    case_rows = []
    for uid, t in truths.items():
        r = results.get(uid)
        if t.case_class:  # a case with no answer (nothing found, or not analysed) counts, as an error
            case = (r or {}).get("case") or {}
            case_rows.append((uid, t.case_class, case.get("class") or NO_ANSWER, case.get("p_malignant") or 0.0))
    normals = [uid for uid, t in truths.items() if t.normal and uid in results]
    report = {
        "studies": {"truth": len(truths), "with_result": len(truths) - len(missing), "missing": len(missing)},
        "detection": detection_metrics(results, truths) if any(t.boxes for t in truths.values()) else None,
        "lesion_classification": classification_metrics(_lesion_pairs(results, truths)),
        "case_classification": classification_metrics(case_rows),
        # clean only when analysed: a refused study has no lesions either
        "normal_cases": {"n": len(normals),
                         "with_no_lesion_found": sum(1 for u in normals
                                                     if results[u].get("status") == "ok" and not results[u]["lesions"]),
                         "not_analysed": sum(1 for u in normals if results[u].get("status") != "ok")},
    }
    return report


def format_report(report: dict) -> str:
    lines = [f"studies: {report['studies']}"]
    if report["detection"]:
        for k, v in report["detection"].items():
            lines.append(f"detection {k}: " + " ".join(f"{m}={x:.3f}" for m, x in v.items() if isinstance(x, float)))
            if v.get("lesion_recall_by_size"):
                lines.append(f"  lesion recall by size {k}: " + ", ".join(f"{b} {r}" for b, r in
                                                                        v["lesion_recall_by_size"].items()))
            if k == f"iou_{IOUS[0]}" and v.get("lesion_recall_by_size_and_contrast"):
                lines.append(f"  lesion recall by size and |contrast| {k}: " + "; ".join(
                    f"{b} [" + ", ".join(f"{c} {r}" for c, r in row.items()) + "]"
                    for b, row in v["lesion_recall_by_size_and_contrast"].items()))
    for level in ("lesion_classification", "case_classification"):
        m = report[level]
        if not m:
            lines.append(f"{level}: no matched items")
            continue
        lines.append(f"{level} (n={m['n']}" + (f", {m['no_answer']} with no answer" if m.get("no_answer") else "")
                     + "):")
        for group in ("benign_malignant", "six_class"):
            lines.append(f"  {group}: " + "  ".join(
                f"{k}={v['value']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]" for k, v in m[group].items()))
    n = report["normal_cases"]
    lines.append(f"normal cases: {n['with_no_lesion_found']}/{n['n']} with no lesion found"
                 + (f" ({n['not_analysed']} not analysed)" if n.get("not_analysed") else ""))
    return "\n".join(lines)
