"""The verifier's candidate score: its features, its checks, re-scoring saved runs, and fitting it."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluate import CaseTruth, at_candidate_score, saved_features
from pipeline.reporting_rule import FEATURES, CandidateScore, candidate_features
from pipeline.train.candidate_score import (filtered_runs, fit_logistic, fit_rule, folds_by_study, out_of_fold,
                                           touches_truth)

ONLY_P = CandidateScore((0.0,) * 4, (1.0,) * 4, (1.0, 0.0, 0.0, 0.0), 0.0, 0.0)  # the verifier's logit alone


def test_features_clip_a_certain_verifier_and_floor_tiny_sizes():
    f = candidate_features(0.4, 1.0, 0.2, 0)
    assert f[0] == pytest.approx(math.log(0.9999 / 0.0001))  # certainty does not outweigh everything else
    assert f[1] == 0.4 and f[2] == 0.0 and f[3] == 0.0  # log of the 1 mm / 1 crop floors
    assert candidate_features(0.4, 0.5, 20.0, 4)[0] == 0.0


def test_a_saved_lesion_gives_the_features_the_analyzer_scored():
    les = _lesion(0.8, (0, 0, 10, 10), conf=0.3, long_mm=12.0, crops=6)
    les["views"].append({"detector_confidence": 0.7, "boxes": []})  # the best view's confidence counts
    np.testing.assert_array_equal(saved_features(les), candidate_features(0.7, 0.8, 12.0, 6))


def test_a_run_already_filtered_by_the_verifier_is_recognised():
    clean = {"s": {"lesions": [{**_lesion(0.1, (0, 0, 9, 9)), "candidate_score": None}], "notes": []}}
    assert filtered_runs(clean) == 0
    assert filtered_runs({"s": {"lesions": [{**_lesion(0.9, (0, 0, 9, 9)), "candidate_score": 1.2}], "notes": []}}) == 1
    assert filtered_runs({"s": {"lesions": [], "candidates": {"proposed": 2, "rejected_by_verifier": 2}}}) == 1
    assert filtered_runs({"s": {"lesions": [], "candidates": None}}) == 0  # not analysed


def test_a_score_with_the_wrong_shape_or_scale_is_refused():
    with pytest.raises(ValueError, match="4 means"):
        CandidateScore((0.0,) * 3, (1.0,) * 3, (1.0,) * 3, 0.0, 0.0)
    with pytest.raises(ValueError, match="positive"):
        CandidateScore((0.0,) * 4, (1.0, 0.0, 1.0, 1.0), (1.0,) * 4, 0.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        CandidateScore((0.0,) * 4, (1.0,) * 4, (1.0,) * 4, float("inf"), 0.0)
    with pytest.raises(ValueError, match="features"):
        CandidateScore.from_table({**ONLY_P.to_table(), "features": list(reversed(FEATURES))})
    assert CandidateScore.from_table(ONLY_P.to_table()) == ONLY_P
    with_cap = CandidateScore(ONLY_P.mean, ONLY_P.scale, ONLY_P.weights, 0.0, 0.0, max_crops_per_view=5)
    assert CandidateScore.from_table(with_cap.to_table()) == with_cap


def _lesion(p, box, conf=0.5, long_mm=10.0, crops=4, sop="img"):
    return {"p_lesion": p, "long_axis_mm": long_mm, "crops": crops,
            "views": [{"detector_confidence": conf, "boxes": [{"sop_instance_uid": sop, "frame_number": None,
                                                               "xyxy": list(box)}]}]}


def test_a_saved_run_is_rescored_by_the_rule_at_any_bar():
    results = {"s": {"lesions": [_lesion(0.9, (0, 0, 10, 10)), _lesion(0.2, (20, 20, 30, 30)),
                                 {**_lesion(None, (40, 40, 50, 50))}]}}
    kept = at_candidate_score(results, ONLY_P)["s"]["lesions"]  # logit 2.2 and -1.4 against bar 0
    assert [les["p_lesion"] for les in kept] == [0.9, None]  # no verifier probability: nothing to overrule
    assert len(at_candidate_score(results, ONLY_P, threshold=-2.0)["s"]["lesions"]) == 3
    assert len(at_candidate_score(results, ONLY_P, threshold=3.0)["s"]["lesions"]) == 1


def test_logistic_fit_recovers_the_direction_of_the_evidence():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 2))
    y = (rng.random(2000) < 1 / (1 + np.exp(-(2.0 * x[:, 0] - 1.0 * x[:, 1] + 0.5)))).astype(float)
    w, b = fit_logistic(x, y)
    assert w[0] == pytest.approx(2.0, abs=0.3) and w[1] == pytest.approx(-1.0, abs=0.3) and b == pytest.approx(0.5, abs=0.3)


def _study(i: int, rng) -> tuple[dict, CaseTruth]:
    """One true lesion and one false candidate, their evidence overlapping (so the fit stays finite)."""
    sop = f"img{i}"
    truth = CaseTruth(f"s{i}", "HCC", False, {(sop, 1): [("L1", (100, 100, 120, 120))]}, {"L1": "HCC"},
                      {"L1": 15.0}, {"L1": 40.0})
    lesions = [_lesion(float(rng.uniform(0.3, 0.99)), (101, 101, 121, 119), conf=float(rng.uniform(0.2, 0.8)),
                       long_mm=float(rng.uniform(8, 25)), sop=sop),
               _lesion(float(rng.uniform(0.01, 0.7)), (300, 300, 340, 340), conf=float(rng.uniform(0.1, 0.6)),
                       long_mm=float(rng.uniform(10, 40)), sop=sop)]
    return {"study_instance_uid": f"s{i}", "lesions": lesions}, truth


def test_the_score_is_fitted_and_its_bar_chosen_on_studies_it_was_not_fitted_to():
    rng = np.random.default_rng(1)
    made = [_study(i, rng) for i in range(40)]
    results = {r["study_instance_uid"]: r for r, _ in made}
    truths = {t.study_uid: t for _, t in made}
    assert touches_truth(results["s1"]["lesions"][0], truths["s1"])
    assert not touches_truth(results["s1"]["lesions"][1], truths["s1"])
    folds = folds_by_study(list(truths), 5, seed=0)
    assert sorted(np.bincount(list(folds.values()))) == [8] * 5  # whole studies, evenly
    rule = fit_rule(results, truths)
    assert rule.weights[0] > 0 and rule.weights[1] > 0  # the verifier's and the detector's confidence count for
    assert rule.scale[3] == 1.0 and rule.weights[3] == pytest.approx(0.0, abs=1e-6)  # every candidate has 4 crops
    rows = out_of_fold(results, truths, k=5, seed=0)
    best = max(rows, key=lambda r: r["f1"])
    assert best["f1"] > rows[0]["f1"] and best["f1"] > rows[-1]["f1"]  # better than keeping all, or almost none
    assert all(a["recall"] >= b["recall"] for a, b in zip(rows, rows[1:]))  # a higher bar never finds more
    assert rows[-1]["recall"] < best["recall"]  # the highest bar rejects lesions the chosen one keeps
    with pytest.raises(ValueError, match="both true and false"):
        fit_rule({k: {**v, "lesions": v["lesions"][:1]} for k, v in results.items()}, truths)
