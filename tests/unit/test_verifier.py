"""The lesion verifier: loading from its manifest, per-candidate probability, and its training data."""
from __future__ import annotations

import argparse
import tomllib

import numpy as np
import pytest
import torch

from pipeline.classify.checkpoints import CheckpointMetadata, ModelLoadError, save_lilnet_checkpoint
from pipeline.classify.lilnet import LiLNet
from pipeline.classify.preprocess import PreprocessError, zoom_centre
from pipeline.classify.verifier import MANIFEST_NAME, LesionVerifier, lesion_probability
from pipeline.detect.detector import Detection as Det
from pipeline.phantom import render_case, sample_case
from pipeline.train.classifier_data import BACKGROUND, PAIRED
from pipeline.train.detector_data import ExportOptions, case_options
from pipeline.train.verifier import candidate_scores, previous_metrics, split_by_case, write_manifest
from pipeline.train.verifier_data import case_samples


def test_lesion_probability_averages_logits_then_softmax():
    logits = np.array([[0.0, 2.0], [0.0, -1.0]])  # mean [0, 0.5]
    assert lesion_probability(logits) == pytest.approx(1 / (1 + np.exp(-0.5)))
    assert lesion_probability(np.array([[5.0, -5.0]])) < 0.001


def _weights(tmp_path, n_classes=2, threshold=0.4, previous=None, zoom_window=None):
    torch.manual_seed(0)
    sha = save_lilnet_checkpoint(LiLNet(n_classes, depth="resnet18", width=16), tmp_path / "verifier.pth.tar",
                                 CheckpointMetadata(epoch=0, auc=None, acc=None))
    args = argparse.Namespace(depth="resnet18", width=16, weight_dtype="float32", seed=0, threshold=threshold,
                              candidate_conf=0.2,
                              data=[tmp_path / "a.npz"], epochs=0, single_phase=0.35, init_backbone=None,
                              held_out_cases=1, data_source="test", version="0.0.1-test", zoom_window=zoom_window)
    metrics = {"candidates": 0, "lesions": 0, "auc": float("nan"), "lesion_recall": float("nan"),
               "false_candidates_rejected": float("nan")}
    write_manifest(tmp_path, {"file": "verifier.pth.tar", "sha256": sha, "n_train": 0}, metrics, args, "test",
                   previous)
    return tmp_path


def test_verifier_loads_from_the_manifest_the_trainer_writes(tmp_path):
    verifier = LesionVerifier.from_manifest(_weights(tmp_path), device="cpu")
    assert verifier.threshold == 0.4 and verifier.candidate_conf == 0.2
    assert verifier.input_mode == "phase-pair" and verifier.name == "lesion-verifier"
    pairs = np.random.default_rng(0).integers(0, 255, (3, 2, 224, 224), dtype=np.uint8)
    logits = verifier.logits(pairs)
    assert logits.shape == (3, 2) and np.isfinite(logits).all()
    with pytest.raises(ValueError, match="uint8"):
        verifier.logits(pairs.astype(np.float32))


def test_a_zooming_verifier_looks_at_the_enlarged_centre_of_each_crop(tmp_path):
    (tmp_path / "plain").mkdir(), (tmp_path / "zoom").mkdir()
    plain = LesionVerifier.from_manifest(_weights(tmp_path / "plain"), device="cpu")
    zoomed = LesionVerifier.from_manifest(_weights(tmp_path / "zoom", zoom_window=80), device="cpu")
    assert (plain.zoom_window, zoomed.zoom_window) == (None, 80)
    pairs = np.random.default_rng(2).integers(0, 255, (3, 2, 224, 224), dtype=np.uint8)
    np.testing.assert_array_equal(zoomed.logits(pairs), plain.logits(zoom_centre(pairs, 80)))  # same weights
    assert not np.allclose(zoomed.logits(pairs), plain.logits(pairs))


def test_zoom_centre_enlarges_the_window_around_the_box_centre():
    crop = np.zeros((224, 224), np.uint8)
    crop[108:116, 108:116] = 200  # an 8 px lesion at the crop centre, where crop_around_box puts the box
    pairs = np.stack([crop, 255 - crop])[None]
    zoomed = zoom_centre(pairs, 56)  # 4x
    assert zoomed.shape == pairs.shape
    rows = np.flatnonzero(zoomed[0, 0, :, 112] > 100)
    assert rows.min() == 96 and rows.max() == 127  # 8 px -> 32 px, still centred
    np.testing.assert_array_equal(zoomed[0, 1], zoom_centre(pairs[:, 1], 56)[0])  # both phases alike
    assert np.array_equal(zoom_centre(pairs, 224), pairs)
    with pytest.raises(PreprocessError, match="zoom window 0"):
        zoom_centre(pairs, 0)
    with pytest.raises(PreprocessError, match="expects uint8"):
        zoom_centre(pairs[..., :100], 56)


def test_verifier_refuses_a_model_with_the_wrong_class_count(tmp_path):
    with pytest.raises(ModelLoadError, match="3 classes"):
        LesionVerifier.from_manifest(_weights(tmp_path, n_classes=3), device="cpu")


def test_verifier_refuses_a_manifest_without_threshold(tmp_path):
    weights = _weights(tmp_path)
    path = weights / MANIFEST_NAME
    path.write_text(path.read_text().replace("p_lesion = 0.4", "other = 0.4"))
    with pytest.raises(ModelLoadError, match="p_lesion"):
        LesionVerifier.from_manifest(weights, device="cpu")


def test_verifier_reads_its_second_bar_from_the_manifest(tmp_path):
    weights = _weights(tmp_path)
    path = weights / MANIFEST_NAME
    assert LesionVerifier.from_manifest(weights, device="cpu").accept_conf is None  # absent: the detector's
    text = path.read_text().replace("p_lesion = 0.4", "p_lesion = 0.4\naccept_conf = 0.5\np_lesion_confident = 0.3")
    path.write_text(text)
    verifier = LesionVerifier.from_manifest(weights, device="cpu")
    assert (verifier.accept_conf, verifier.confident_threshold, verifier.threshold) == (0.5, 0.3, 0.4)
    path.write_text(text.replace("p_lesion_confident = 0.3", "p_lesion_confident = 3"))
    with pytest.raises(ModelLoadError, match="p_lesion_confident 3.0 is not a probability"):
        LesionVerifier.from_manifest(weights, device="cpu")


def test_verifier_reads_a_candidate_score_from_the_manifest(tmp_path):
    weights = _weights(tmp_path)
    path = weights / MANIFEST_NAME
    assert LesionVerifier.from_manifest(weights, device="cpu").candidate_score is None  # absent: the two bars
    table = ('\n[candidate_score]\nfeatures = ["logit_p_lesion", "detector_confidence", "log_long_axis_mm", "log_crops"]\n'
             "mean = [0, 0.5, 2, 1]\nscale = [2, 0.25, 0.5, 1]\nweights = [3, 2, -1, 0.5]\nbias = -1\nthreshold = -0.7\n")
    path.write_text(path.read_text() + table)
    rule = LesionVerifier.from_manifest(weights, device="cpu").candidate_score
    assert rule.threshold == -0.7
    # logit(0.5) = 0; (0.75 - 0.5) / 0.25 = 1; (log 20 - 2) / 0.5; (log 4 - 1) / 1
    expected = 3 * 0 + 2 * 1 - (np.log(20) - 2) / 0.5 + 0.5 * (np.log(4) - 1) - 1
    assert rule(0.75, 0.5, 20.0, 4) == pytest.approx(expected)
    good = path.read_text()
    for broken, message in ((good.replace('"log_crops"]', '"crops"]'), "candidate_score.*features"),  # not misread
                            (good.replace("threshold = -0.7", "threshold = nan"), "finite"),  # would reject all
                            (good.replace("bias = -1\n", ""), "bias"),
                            ("candidate_score = 1\n" + good.replace("[candidate_score]", "[other]"), "must be a table")):
        path.write_text(broken)
        with pytest.raises(ModelLoadError, match=message):
            LesionVerifier.from_manifest(weights, device="cpu")


class AirDetector:
    """One box in the air outside the body on every slice: never a lesion."""

    def detect(self, slices_u8, slice_spacing_mm=None, partner_u8=None):
        return [[Det(4, 4, 20, 20, 0.6)] for _ in slices_u8]


def test_training_samples_are_the_detector_mistakes_and_the_true_lesions():
    opts = ExportOptions(seed=5, n_slices=8)
    case = render_case(sample_case(5, 3, case_options(opts)))
    crops, meta = case_samples(case, 3, AirDetector(), np.random.default_rng(0), min_conf=0.1, min_side=6,
                               max_slices=4)
    cls = np.array([m[0] for m in meta])
    assert (cls == BACKGROUND).sum() == 2 * 8  # AP and PVP, every slice
    lesion_slices = {}
    for slice_boxes in case.boxes:
        for b in slice_boxes:
            if max(b.x2 - b.x1, b.y2 - b.y1) >= 6:
                lesion_slices[b.lesion_id] = lesion_slices.get(b.lesion_id, 0) + 1
    assert (cls != BACKGROUND).sum() == sum(min(n, 4) for n in lesion_slices.values())
    assert all(np.shape(c) == (2, 224, 224) for c in crops) and {m[2] for m in meta} == {PAIRED}
    # a window on air is black in both phases
    air = np.stack([c for c, m in zip(crops, meta) if m[0] == BACKGROUND])
    assert air[:, :, 100:124, 100:124].max() == 0


def test_split_keeps_cases_whole_and_scores_per_candidate():
    from pipeline.train.classifier_data import CropSet

    n = 6
    data = CropSet(np.zeros((n, 2, 4, 4), np.uint8), np.array([BACKGROUND, 0, 0, BACKGROUND, 3, 3]),
                   np.array([-1, 7, 7, -2, 9, 9]), np.full(n, PAIRED), np.array([1, 1, 1, 2, 2, 2]))
    halves = CropSet.concat([data.take(np.arange(3)), data.take(np.arange(3, n))])  # as the trainer joins its files
    train, test = split_by_case(halves, held_out_cases=1)
    assert set(train.case) == {1} and set(test.case) == {2}
    crops, labels, keys = test.for_task("lesion")
    assert labels.tolist() == [0, 1, 1]
    p, y = candidate_scores(np.array([[3.0, 0.0], [0.0, 1.0], [0.0, 3.0]]), labels, keys)
    assert y.tolist() == [0, 1] and p[1] == pytest.approx(1 / (1 + np.exp(-2.0)))


def test_evaluation_rescores_a_run_at_stricter_verifier_thresholds():
    from pipeline.evaluate import at_p_lesion

    def lesion(p, conf):
        return {"p_lesion": p, "views": [{"detector_confidence": conf}]}

    results = {"s": {"lesions": [lesion(0.2, 0.3), lesion(0.7, 0.3), lesion(None, 0.3), lesion(0.1, 0.9)]}}
    assert [les["p_lesion"] for les in at_p_lesion(results, 0.5)["s"]["lesions"]] == [0.7, None]
    # a lesion the detector reports on its own (confidence >= its lesion_conf) stays whatever its p(lesion)
    assert [les["p_lesion"] for les in at_p_lesion(results, 0.5, accept_conf=0.8)["s"]["lesions"]] == [0.7, None, 0.1]
    assert len(at_p_lesion(results, 0.0)["s"]["lesions"]) == 4
    # with a second bar, a confident candidate the verifier scores below it goes too
    assert [les["p_lesion"] for les in at_p_lesion(results, 0.5, accept_conf=0.8, p_confident=0.2)["s"]["lesions"]] \
        == [0.7, None]
    assert len(at_p_lesion(results, 0.5, accept_conf=0.3, p_confident=0.2)["s"]["lesions"]) == 3  # 0.2 reaches it


def test_compare_scores_the_earlier_verifier_on_the_same_held_out_candidates(tmp_path):
    from pipeline.train.classifier_data import CropSet

    (tmp_path / "old").mkdir(), (tmp_path / "new").mkdir()
    old = _weights(tmp_path / "old")
    crops = np.random.default_rng(1).integers(0, 255, (4, 2, 224, 224), dtype=np.uint8)
    test = CropSet(crops, np.array([BACKGROUND, 0, 0, BACKGROUND]), np.array([-1, 7, 7, -2]),
                   np.full(4, PAIRED), np.array([5, 5, 5, 5]))
    previous = previous_metrics(old, test, "cpu", threshold=0.5)
    logits = LesionVerifier.from_manifest(old, device="cpu").logits(crops)
    p = [lesion_probability(logits[[0]]), lesion_probability(logits[1:3]), lesion_probability(logits[[3]])]
    assert previous["version"] == "0.0.1-test" and (previous["candidates"], previous["lesions"]) == (3, 1)
    assert previous["lesion_recall"] == float(p[1] >= 0.5)
    assert previous["false_candidates_rejected"] == pytest.approx(((p[0] < 0.5) + (p[2] < 0.5)) / 2)
    new = _weights(tmp_path / "new", previous=previous)
    manifest = tomllib.loads((new / MANIFEST_NAME).read_text())
    assert manifest["held_out"]["previous"]["candidates"] == 3
    assert LesionVerifier.from_manifest(new, device="cpu").version == "0.0.1-test"


def test_reporting_rule_lets_the_verifier_only_add_lesions():
    from pipeline.reporting_rule import is_reported

    assert is_reported(0.9, 0.01, accept_conf=0.48, p_threshold=0.8)  # the detector is sure: no veto
    assert not is_reported(0.3, 0.79, accept_conf=0.48, p_threshold=0.8)
    assert is_reported(0.3, 0.8, accept_conf=0.48, p_threshold=0.8)
    assert is_reported(0.3, None, accept_conf=0.48, p_threshold=0.8)  # no verifier ran


def test_reporting_rule_with_a_second_bar_lets_the_verifier_veto_a_confident_candidate():
    from pipeline.reporting_rule import is_reported

    assert not is_reported(0.9, 0.29, accept_conf=0.5, p_threshold=0.93, p_confident=0.3)
    assert is_reported(0.9, 0.3, accept_conf=0.5, p_threshold=0.93, p_confident=0.3)
    assert not is_reported(0.49, 0.92, accept_conf=0.5, p_threshold=0.93, p_confident=0.3)  # below: the high bar
    assert is_reported(0.49, 0.93, accept_conf=0.5, p_threshold=0.93, p_confident=0.3)
    assert is_reported(0.9, None, accept_conf=0.5, p_threshold=0.93, p_confident=0.3)


@pytest.mark.parametrize("name", ["../outside.pth.tar", "/abs/verifier.pth.tar"])
def test_a_manifest_file_outside_the_weights_folder_is_refused(tmp_path, name):
    weights = _weights(tmp_path)
    path = weights / MANIFEST_NAME
    path.write_text(path.read_text().replace('file = "verifier.pth.tar"', f'file = "{name}"'))
    with pytest.raises(ModelLoadError, match="must be a name inside the weights folder"):
        LesionVerifier.from_manifest(weights, device="cpu")
