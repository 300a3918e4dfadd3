"""Analyzer orchestration on a real phantom study, with an oracle detector (the truth boxes) and a
fixed-logit classifier: checks phase choice, grouping across slices and phases, the result file,
and the batch runner, independently of what the trained models would say."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pipeline.analyzer import Analyzer, AnalyzerOptions, SeriesInput
from pipeline.batch import run_folder, scan_studies, study_inputs
from pipeline.evaluate import evaluate, format_report, lesion_conf_sweep, load_phantom_truth
from pipeline.hierarchy import HierarchyLogits
from pipeline.phases import PhaseRules
from pipeline.phantom import CaseOptions, ContrastPhase, LesionClass, WriteOptions, make_study


@dataclass(frozen=True)
class Det:
    x1: float
    y1: float
    x2: float
    y2: float
    confidence: float


class OracleDetector:
    """Returns the phantom's true boxes for the slices it is shown (looked up by pixel content)."""

    def __init__(self, boxes_by_image: dict[bytes, list[tuple]]) -> None:
        self.boxes = boxes_by_image

    def detect(self, slices_u8, slice_spacing_mm=None, partner_u8=None):
        return [[Det(*b, 0.9) for b in self.boxes.get(s.tobytes(), [])] for s in slices_u8]


class FixedClassifier:
    def __init__(self) -> None:
        self.seen = 0

    def logits(self, crops):
        assert crops.shape[1:] == (224, 224) and crops.dtype == np.uint8
        self.seen += len(crops)
        m = len(crops)
        return HierarchyLogits(np.tile([0.0, 2.0], (m, 1)), np.zeros((m, 3)), np.tile([3.0, 0.0, 0.0], (m, 1)))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    opts = CaseOptions(phases=(ContrastPhase.NC, ContrastPhase.AP, ContrastPhase.PVP), n_slices=12,
                       slice_thickness_mm=5.0, lesion_classes=(LesionClass.HCC,), max_lesions=1)
    study = make_study(out, 11, 0, opts, WriteOptions())
    return out, study


def _oracle(out: Path) -> OracleDetector:
    from pipeline.imaging import window_u8
    from pipeline.series import load_series

    labels = json.loads(next(out.rglob("labels.json")).read_text())
    boxes: dict[bytes, list] = {}
    series = scan_studies(out)
    for study in series.values():
        for uid, scan in study.items():
            ls = load_series(scan.paths)
            w = window_u8(ls.hu)
            for i, (sop, frame) in enumerate(zip(ls.sop_instance_uids, ls.frame_numbers)):
                for key, entries in labels["boxes"].items():
                    for e in entries:
                        if e["sop_instance_uid"] == sop and frame in (None, e["frame_index"] + 1):
                            boxes.setdefault(w[i].tobytes(), []).append((e["x1"], e["y1"], e["x2"], e["y2"]))
    return OracleDetector(boxes)


def test_run_study_groups_truth_boxes_into_one_lesion_across_phases(phantom, tmp_path):
    out, study = phantom
    classifier = FixedClassifier()
    analyzer = Analyzer(_oracle(out), classifier, [])
    series_scan = scan_studies(out)
    (study_uid, series), = series_scan.items()
    inputs = study_inputs(series, PhaseRules())
    assert sorted(s.phase for s in inputs) == ["AP", "NC", "PVP"]
    result = analyzer.run_study(study_uid, inputs)
    assert result.status == "ok" and result.phase_mode == "AP+PVP"
    assert len(result.lesions) == 1
    lesion = result.lesions[0]
    assert sorted(lesion.lesion.phases) == ["AP", "PVP"]
    assert lesion.decision.cls == "HCC" and lesion.decision.malignant
    truth = json.loads(next(out.rglob("labels.json")).read_text())["lesions"][0]
    assert np.linalg.norm(np.subtract(lesion.lesion.center_mm, truth["centre_mm"])) < 10.0
    assert abs(lesion.lesion.primary.long_axis_mm - max(truth["diameters_mm"][:2])) < 8.0
    assert classifier.seen == lesion.decision.crops
    assert [u.used for u in result.series].count(True) == 2  # NC is not analysed

    # Only PVP available: runs and says so. No AP/PVP: unknown phase or refusal, as configured.
    pvp_only = [s for s in inputs if s.phase == "PVP"]
    assert analyzer.run_study(study_uid, pvp_only).phase_mode == "PVP only"
    unlabelled = [SeriesInput(s.series_uid, "OTHER", "test", s.paths) for s in pvp_only]
    assert analyzer.run_study(study_uid, unlabelled).phase_mode == "unknown phase"
    refusing = Analyzer(_oracle(out), classifier, [], AnalyzerOptions(unknown_phase="refuse"))
    refused = refusing.run_study(study_uid, unlabelled)
    assert refused.status == "not_analysed" and "disabled" in refused.reason


def test_a_candidate_that_cannot_be_loaded_gives_way_to_the_next_and_ignored_series_are_never_used(phantom, tmp_path):
    """A coronal reformat labelled AP with more images than the axial AP is refused by the loader: the axial
    one is then analysed, not skipped. A scout or iodine map (ignored) is not an unknown-phase candidate."""
    out, _ = phantom
    (study_uid, series), = scan_studies(out).items()
    inputs = [s for s in study_inputs(series, PhaseRules()) if s.phase in ("AP", "PVP")]
    junk = []
    for i in range(60):  # more "images" than the real AP: ranked first, and unreadable
        junk.append(tmp_path / f"reformat-{i}.dcm")
        junk[-1].write_bytes(b"not DICOM")
    reformat = SeriesInput("1.2.3.999", "AP", "description matches AP pattern 'art'", tuple(junk))
    analyzer = Analyzer(_oracle(out), FixedClassifier(), [])
    result = analyzer.run_study(study_uid, [reformat, *inputs])
    assert result.status == "ok" and result.phase_mode == "AP+PVP" and len(result.lesions) == 1
    uses = {u.series_uid: u for u in result.series}
    assert not uses["1.2.3.999"].used and uses["1.2.3.999"].notes[0].startswith("not analysed:")
    assert sum(u.used for u in result.series) == 2
    pvp = next(s for s in inputs if s.phase == "PVP")
    unlabelled = SeriesInput(pvp.series_uid, "OTHER", "no phase keyword", pvp.paths)
    ap = next(s for s in inputs if s.phase == "AP")
    iodine = SeriesInput(ap.series_uid, "OTHER", "description matches ignore pattern 'iodine'",
                         ap.paths + pvp.paths, ignored=True)  # more images, but never a candidate
    result = analyzer.run_study(study_uid, [iodine, unlabelled])
    assert result.phase_mode == "unknown phase"
    assert [u.series_uid for u in result.series if u.used] == [pvp.series_uid]
    assert analyzer.run_study(study_uid, [iodine]).status == "not_analysed"


class RaisingDetector(OracleDetector):
    """Fails on one study's images, as a CUDA out-of-memory error would."""

    def __init__(self, boxes, fail_on_width: int) -> None:
        super().__init__(boxes)
        self.fail_on_width = fail_on_width

    def detect(self, slices_u8, slice_spacing_mm=None, partner_u8=None):
        if slices_u8.shape[-1] == self.fail_on_width:
            raise RuntimeError("CUDA out of memory")
        return super().detect(slices_u8, slice_spacing_mm)


def test_a_batch_run_goes_on_past_a_failing_study_and_counts_a_copied_file_once(phantom, tmp_path, capsys):
    import shutil

    from tests.support.ctdata import SeriesSpec, uid, write_series

    out, _ = phantom
    root = tmp_path / "in"
    shutil.copytree(out, root / "phantom")
    small = write_series(root / "small", uid("batch-small"), SeriesSpec("PV 3.0", 4), rows=32, cols=32)
    shutil.copy(small[0], root / "small" / "copy of first.dcm")  # an export copy of one instance
    analyzer = Analyzer(RaisingDetector(_oracle(out).boxes, fail_on_width=32), FixedClassifier(), [])
    assert run_folder(analyzer, root, tmp_path / "results") == 1  # one study failed
    lines = capsys.readouterr().out
    assert "status=failed reason=RuntimeError" in lines and "CUDA" not in lines  # no exception text: paths
    assert lines.index("status=failed") < lines.index("status=ok")  # the failure came first
    (result_file,) = (tmp_path / "results").rglob("result.json")  # the phantom study, after the failure
    assert len(json.loads(result_file.read_text())["lesions"]) == 1
    (small_series,) = scan_studies(root / "small").values()
    assert [len(s.paths) for s in small_series.values()] == [4]


class PairClassifier(FixedClassifier):
    input_mode = "phase-pair"

    def logits(self, crops):
        self.pairs = crops
        return super().logits(crops[:, 0])


def test_phase_pair_classifier_gets_ap_and_pvp_of_each_lesion_slice(phantom):
    out, _ = phantom
    (study_uid, series), = scan_studies(out).items()
    inputs = study_inputs(series, PhaseRules())
    classifier = PairClassifier()
    result = Analyzer(_oracle(out), classifier, []).run_study(study_uid, inputs)
    pairs = classifier.pairs
    assert pairs.shape[1:] == (2, 224, 224) and len(pairs) == result.lesions[0].decision.crops
    # channel 0 is AP, channel 1 PVP: the parenchyma around the lesion enhances more in the portal phase
    whole = pairs.astype(float).mean(axis=(2, 3))
    assert np.all(whole[:, 1] > whole[:, 0] + 5), whole
    # PVP only: each pair is the PVP crop twice
    pvp_only = [s for s in inputs if s.phase == "PVP"]
    Analyzer(_oracle(out), classifier, []).run_study(study_uid, pvp_only)
    assert np.array_equal(classifier.pairs[:, 0], classifier.pairs[:, 1])


class PairOracle(OracleDetector):
    """A detector that takes phase pairs: records the partner it is given with each series."""

    channels = "phase-pair"

    def __init__(self, boxes) -> None:
        super().__init__(boxes)
        self.calls: list[tuple[np.ndarray, np.ndarray | None]] = []

    def detect(self, slices_u8, slice_spacing_mm=None, partner_u8=None):
        self.calls.append((slices_u8, partner_u8))
        return super().detect(slices_u8, slice_spacing_mm)


def test_phase_pair_detector_sees_each_phase_with_the_other_as_its_partner(phantom):
    out, _ = phantom
    (study_uid, series), = scan_studies(out).items()
    inputs = study_inputs(series, PhaseRules())
    detector = PairOracle(_oracle(out).boxes)
    result = Analyzer(detector, FixedClassifier(), []).run_study(study_uid, inputs)
    assert len(result.lesions) == 1  # the oracle's boxes still make one lesion over both phases
    (ap, ap_partner), (pvp, pvp_partner) = detector.calls
    # one grid and one Frame of Reference in the phantom: each partner is the other series, pixel for pixel
    np.testing.assert_array_equal(ap_partner, pvp)
    np.testing.assert_array_equal(pvp_partner, ap)
    # one phase only: no partner, the detector shows the slice alone
    detector.calls.clear()
    Analyzer(detector, FixedClassifier(), []).run_study(study_uid, [s for s in inputs if s.phase == "AP"])
    assert len(detector.calls) == 1 and detector.calls[0][1] is None


def test_phase_pair_detector_gets_no_partner_from_a_tilted_phase_and_the_result_says_so(phantom, tmp_path):
    import shutil

    import pydicom

    out, _ = phantom
    copy = tmp_path / "study"
    shutil.copytree(out, copy)
    (study_uid, series), = scan_studies(copy).items()
    inputs = study_inputs(series, PhaseRules())
    t = np.radians(3.0)  # a gantry tilt on the PVP series only: still axial enough to load
    for path in next(s for s in inputs if s.phase == "PVP").paths:
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, float(np.cos(t)), float(np.sin(t))]
        ds.save_as(path)
    detector = PairOracle(_oracle(out).boxes)
    result = Analyzer(detector, FixedClassifier(), []).run_study(study_uid, inputs)
    assert [partner for _, partner in detector.calls] == [None, None]
    assert any("tilted" in note for note in result.notes)


def test_lesion_needs_one_box_above_the_lesion_threshold(phantom):
    out, _ = phantom
    (study_uid, series), = scan_studies(out).items()
    inputs = study_inputs(series, PhaseRules())
    oracle = _oracle(out)  # every box at confidence 0.9
    oracle.lesion_conf = 0.95
    assert Analyzer(oracle, FixedClassifier(), []).run_study(study_uid, inputs).lesions == []
    oracle.lesion_conf = 0.85
    found = Analyzer(oracle, FixedClassifier(), []).run_study(study_uid, inputs)
    assert len(found.lesions) == 1 and found.candidates["reported"] == 1


def test_a_candidate_too_small_to_crop_is_counted_and_noted_not_reported(phantom):
    out, _ = phantom
    (study_uid, series), = scan_studies(out).items()
    oracle = _oracle(out)
    oracle.lesion_conf = 0.85
    result = Analyzer(oracle, FixedClassifier(), [], options=AnalyzerOptions(min_crop_px=1000.0)).run_study(
        study_uid, study_inputs(series, PhaseRules()))
    assert result.lesions == [] and result.case is None
    assert result.candidates == {"proposed": 1, "reported": 0, "rejected_by_verifier": 0, "too_small": 1}
    assert any("too small to classify" in n for n in result.notes)


class OracleAndAirDetector(OracleDetector):
    """The true boxes plus one box in the air outside the body on every slice (a false candidate)."""

    def detect(self, slices_u8, slice_spacing_mm=None, partner_u8=None):
        return [found + [Det(4, 4, 20, 20, 0.9)] for found in super().detect(slices_u8, slice_spacing_mm)]


class BrightCentreVerifier:
    """Calls a candidate a lesion when its window has tissue at the centre (air is 0 at W400/L40)."""

    input_mode = "phase-pair"
    threshold = 0.5
    candidate_conf = None
    accept_conf = None
    confident_threshold = 0.0
    candidate_score = None

    def logits(self, crops):
        assert crops.shape[1:] == (2, 224, 224)
        tissue = crops[:, :, 100:124, 100:124].mean(axis=(1, 2, 3)) > 10
        return np.where(tissue[:, None], [[-4.0, 4.0]], [[4.0, -4.0]])


def test_verifier_rejects_the_false_candidate_and_keeps_the_lesion(phantom):
    out, _ = phantom
    (study_uid, series), = scan_studies(out).items()
    inputs = study_inputs(series, PhaseRules())
    detector = OracleAndAirDetector(_oracle(out).boxes)  # every box at 0.9
    classifier = FixedClassifier()
    unverified = Analyzer(detector, classifier, []).run_study(study_uid, inputs)
    assert len(unverified.lesions) == 2 and all(les.p_lesion is None for les in unverified.lesions)
    verifier = BrightCentreVerifier()
    verifier.candidate_conf = 0.5
    # candidates the detector is sure of on its own are reported whatever the verifier says
    detector.lesion_conf = 0.85
    sure = Analyzer(detector, classifier, [], verifier=verifier).run_study(study_uid, inputs)
    assert sorted(round(les.p_lesion, 3) for les in sure.lesions) == [0.0, 1.0]
    # below the detector's lesion_conf, the verifier decides
    detector.lesion_conf = 0.95
    result = Analyzer(detector, classifier, [], verifier=verifier).run_study(study_uid, inputs)
    (kept,) = result.lesions
    truth = json.loads(next(out.rglob("labels.json")).read_text())["lesions"][0]
    assert np.linalg.norm(np.subtract(kept.lesion.center_mm, truth["centre_mm"])) < 10.0
    assert kept.p_lesion == pytest.approx(1 / (1 + np.exp(-8.0)))
    assert result.case.crops == kept.decision.crops  # the case averages reported lesions only
    assert any("1 detector candidate(s) rejected by the lesion verifier" in n for n in result.notes)
    assert result.to_dict()["candidates"] == {"proposed": 2, "reported": 1, "rejected_by_verifier": 1, "too_small": 0}
    assert sure.candidates["rejected_by_verifier"] == 0 and unverified.candidates["reported"] == 2
    assert "verify" in result.timings_s
    assert result.to_dict()["lesions"][0]["p_lesion"] == pytest.approx(1.0, abs=1e-3)


def _lesion_and_air_box(phantom):
    """The phantom study and a detector that finds its lesion and a box in the air, both at 0.9 (lesion_conf 0.85)."""
    out, _ = phantom
    (study_uid, series), = scan_studies(out).items()
    detector = OracleAndAirDetector(_oracle(out).boxes)
    detector.lesion_conf = 0.85
    return study_uid, study_inputs(series, PhaseRules()), detector


def test_a_verifier_with_a_second_bar_vetoes_a_confident_false_candidate(phantom):
    study_uid, inputs, detector = _lesion_and_air_box(phantom)
    verifier = BrightCentreVerifier()
    verifier.candidate_conf, verifier.threshold = 0.5, 0.99
    verifier.accept_conf, verifier.confident_threshold = 0.8, 0.3  # the verifier's own accept_conf, not 0.85
    result = Analyzer(detector, FixedClassifier(), [], verifier=verifier).run_study(study_uid, inputs)
    (kept,) = result.lesions  # the air box's p(lesion) ~0.0003 is under 0.3; the lesion's ~1.0 is not
    assert kept.p_lesion > 0.99
    assert any("rejected by the lesion verifier (p(lesion) < 0.99, or < 0.3 at detector confidence >= 0.8)" in n
               for n in result.notes)
    verifier.accept_conf = 0.95  # now both are below accept_conf: the high bar (0.99) holds for both
    assert len(Analyzer(detector, FixedClassifier(), [], verifier=verifier).run_study(study_uid, inputs).lesions) == 1
    verifier.threshold = 1.0  # and nothing reaches 1.0 (sigmoid of 8 is below it)
    assert Analyzer(detector, FixedClassifier(), [], verifier=verifier).run_study(study_uid, inputs).lesions == []


def test_a_verifier_with_a_candidate_score_lets_the_score_decide(phantom):
    from pipeline.evaluate import at_candidate_score, saved_features
    from pipeline.reporting_rule import CandidateScore

    study_uid, inputs, detector = _lesion_and_air_box(phantom)
    verifier = BrightCentreVerifier()
    verifier.candidate_conf, verifier.threshold = 0.5, 0.0  # the two bars alone would keep both
    verifier.candidate_score = CandidateScore((0.0,) * 4, (1.0,) * 4, (1.0, 0.0, 0.0, 0.0), 0.0, 0.0)
    result = Analyzer(detector, FixedClassifier(), [], verifier=verifier).run_study(study_uid, inputs)
    (kept,) = result.lesions  # logit(p) ~ +8 for the lesion, ~ -8 for the air box, against bar 0
    assert kept.p_lesion > 0.99 and kept.candidate_score == pytest.approx(8.0)  # mean logit difference 8
    assert any("1 detector candidate(s) rejected by the lesion verifier (candidate score < 0)" in n for n in result.notes)
    assert result.candidates == {"proposed": 2, "reported": 1, "rejected_by_verifier": 1, "too_small": 0}
    assert result.to_dict()["lesions"][0]["candidate_score"] == pytest.approx(kept.candidate_score, abs=1e-4)
    # the detector's confidence alone, with a bar above 0.9: nothing is reported
    verifier.candidate_score = CandidateScore((0.0,) * 4, (1.0,) * 4, (0.0, 1.0, 0.0, 0.0), 0.0, 0.95)
    assert Analyzer(detector, FixedClassifier(), [], verifier=verifier).run_study(study_uid, inputs).lesions == []
    # a run that keeps every candidate re-scores to the analyzer's own decision
    rule = CandidateScore((0.0, 0.5, 2.0, 1.0), (2.0, 0.2, 0.5, 1.0), (3.0, 2.0, -1.0, 0.5), -1.0, 0.0)
    verifier.candidate_score = CandidateScore(rule.mean, rule.scale, rule.weights, rule.bias, -100.0)
    everything = Analyzer(detector, FixedClassifier(), [], verifier=verifier).run_study(study_uid, inputs).to_dict()
    assert len(everything["lesions"]) == 2
    verifier.candidate_score = rule
    decided = Analyzer(detector, FixedClassifier(), [], verifier=verifier).run_study(study_uid, inputs).to_dict()
    rescored = at_candidate_score({study_uid: everything}, rule)[study_uid]
    assert [les["index"] for les in rescored["lesions"]] == [les["index"] for les in decided["lesions"]] != []
    for les in everything["lesions"]:  # the saved features are the analyzer's, in the same order
        assert rule.score(saved_features(les)) == pytest.approx(les["candidate_score"], abs=0.02)
    fitted_for_more = CandidateScore(rule.mean, rule.scale, rule.weights, rule.bias, 0.0, max_crops_per_view=10)
    verifier.candidate_score = fitted_for_more
    with pytest.raises(ValueError, match="fitted with max_crops_per_view 10, the analyzer uses 5"):
        Analyzer(detector, FixedClassifier(), [], verifier=verifier)


def test_with_a_verifier_the_detector_proposes_down_to_its_candidate_conf(phantom):
    out, _ = phantom
    (study_uid, series), = scan_studies(out).items()
    inputs = study_inputs(series, PhaseRules())
    oracle = _oracle(out)  # every box at confidence 0.9
    oracle.lesion_conf = 0.95  # alone, the detector would report nothing
    verifier = BrightCentreVerifier()
    verifier.candidate_conf = 0.85
    assert len(Analyzer(oracle, FixedClassifier(), [], verifier=verifier).run_study(study_uid, inputs).lesions) == 1
    verifier.candidate_conf = None  # no candidate_conf in its manifest: the detector's own threshold holds
    assert Analyzer(oracle, FixedClassifier(), [], verifier=verifier).run_study(study_uid, inputs).lesions == []


def test_batch_run_writes_result_json_and_evaluate_scores_it(phantom, tmp_path):
    out, study = phantom
    analyzer = Analyzer(_oracle(out), FixedClassifier(), [])
    assert run_folder(analyzer, out, tmp_path / "results") == 0
    (result_file,) = list((tmp_path / "results").rglob("result.json"))
    data = json.loads(result_file.read_text())
    assert result_file.parent.name == data["study_instance_uid"]
    # The same DICOM result objects the node sends: the SR, one SC per lesion, the case summary.
    import pydicom

    sr = pydicom.dcmread(result_file.parent / "sr.dcm")
    assert sr.Modality == "SR" and sr.StudyInstanceUID == data["study_instance_uid"]
    assert sorted(p.name for p in result_file.parent.glob("sc-*.dcm")) == ["sc-001.dcm", "sc-002.dcm"]
    assert data["case"]["class"] == "HCC" and data["case"]["malignant"] is True
    lesion = data["lesions"][0]
    for key in ("class", "probabilities", "center_mm", "long_axis_mm", "short_axis_mm", "phases"):
        assert key in lesion
    report = evaluate(tmp_path / "results", load_phantom_truth(out))
    # The oracle's boxes are the truth: every AP/PVP truth box is found at every IoU.
    for metrics in report["detection"].values():
        assert metrics["box_recall"] == pytest.approx(1.0) and metrics["box_precision"] == pytest.approx(1.0)
        assert metrics["lesion_recall"] == 1.0 and metrics["lesion_precision"] == 1.0
        assert metrics["false_lesions_per_case"] == 0.0
        assert list(metrics["lesion_recall_by_size"].values()) == ["1/1"]  # one lesion, found, in its size bin
    (truth_lesion,) = json.loads(next(out.rglob("labels.json")).read_text())["lesions"]
    contrast = max(abs(truth_lesion["contrast_hu"][p]) for p in ("AP", "PVP"))
    contrast_bin = "0-20 HU" if contrast < 20 else "20-40 HU" if contrast < 40 else ">=40 HU"
    (row,) = report["detection"]["iou_0.1"]["lesion_recall_by_size_and_contrast"].values()
    assert row == {contrast_bin: "1/1"}
    assert f"{contrast_bin} 1/1" in format_report(report)
    assert report["lesion_classification"]["six_class"]["accuracy"]["value"] == 1.0
    # Sweeping the lesion threshold afterwards: the oracle's boxes are all at 0.9.
    sweep = lesion_conf_sweep(tmp_path / "results", load_phantom_truth(out), [0.5, 0.95])
    assert sweep[0.5]["lesion_recall"] == 1.0 and sweep[0.5]["lesion_precision"] == 1.0
    assert sweep[0.95]["lesion_recall"] == 0.0
    assert list(next(iter(sweep[0.95]["lesion_recall_by_size_and_contrast"].values())).values()) == ["0/1"]


def test_enhanced_ct_gives_the_classic_result_and_objects_name_the_key_frame(phantom, tmp_path):
    """The same phantom case written as Enhanced CT (one multi-frame instance per series, rescale in the
    functional groups) must give the classic files' lesion, and the SR and SC must name the key frame."""
    import pydicom

    out, _ = phantom
    enhanced = tmp_path / "enhanced"
    opts = CaseOptions(phases=(ContrastPhase.NC, ContrastPhase.AP, ContrastPhase.PVP), n_slices=12,
                       slice_thickness_mm=5.0, lesion_classes=(LesionClass.HCC,), max_lesions=1)
    make_study(enhanced, 11, 0, opts, WriteOptions(enhanced=True))
    results = {}
    for name, folder in (("classic", out), ("enhanced", enhanced)):
        assert run_folder(Analyzer(_oracle(folder), FixedClassifier(), []), folder, tmp_path / name) == 0
        (result_file,) = (tmp_path / name).rglob("result.json")
        results[name] = json.loads(result_file.read_text())
    (classic,), (lesion,) = results["classic"]["lesions"], results["enhanced"]["lesions"]
    for key in ("long_axis_mm", "short_axis_mm", "volume_ml", "center_mm", "phases"):
        assert lesion[key] == classic[key]
    assert [v["mean_hu"] for v in lesion["views"]] == [v["mean_hu"] for v in classic["views"]]
    primary = max(lesion["views"], key=lambda v: (v["key_box_xyxy"][2] - v["key_box_xyxy"][0])
                  * (v["key_box_xyxy"][3] - v["key_box_xyxy"][1]))
    frame = primary["key_frame_number"]
    labels = json.loads(next(enhanced.rglob("labels.json")).read_text())
    assert any(e["sop_instance_uid"] == primary["key_sop_instance_uid"] and e["frame_index"] + 1 == frame
               for entries in labels["boxes"].values() for e in entries)  # the lesion is on that frame
    folder = next((tmp_path / "enhanced").rglob("result.json")).parent
    sr = pydicom.dcmread(folder / "sr.dcm")
    assert [int(e.value) for e in sr.iterall() if e.keyword == "ReferencedFrameNumber"] == [frame]
    sc = pydicom.dcmread(folder / "sc-001.dcm")
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == primary["key_sop_instance_uid"]
    assert int(sc.SourceImageSequence[0].ReferencedFrameNumber) == frame
    assert "ReferencedFrameNumber" not in pydicom.dcmread(next((tmp_path / "classic").rglob("sc-001.dcm"))
                                                          ).SourceImageSequence[0]


def test_evaluate_command_sweeps_detector_and_verifier_thresholds(phantom, tmp_path, capsys):
    from node.cli import main

    out, _ = phantom
    (study_uid, series), = scan_studies(out).items()
    detector = OracleAndAirDetector(_oracle(out).boxes)
    detector.lesion_conf = 0.95
    analyzer = Analyzer(detector, FixedClassifier(), [], verifier=BrightCentreVerifier())
    analyzer.verifier.candidate_conf = 0.5
    analyzer.verifier.threshold = 0.0  # keep every candidate with its probability, as a sweep run does
    assert run_folder(analyzer, out, tmp_path / "results") == 0
    capsys.readouterr()  # the run's own summary lines
    assert main(["evaluate", str(tmp_path / "results"), "--truth", str(out), "--lesion-conf-sweep", "0.5,0.95",
                 "--p-lesion-sweep", "0.0,0.5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # at lesion_conf 0.5 the detector alone keeps both candidates (0.9); at 0.95 the verifier decides
    assert lines[1].startswith("lesion_conf 0.50 p_lesion 0.50: lesion_recall=1.000 lesion_precision=0.500")
    assert lines[2].startswith("lesion_conf 0.95 p_lesion 0.00: lesion_recall=1.000 lesion_precision=0.500")
    assert lines[3].startswith("lesion_conf 0.95 p_lesion 0.50: lesion_recall=1.000 lesion_precision=1.000")
    assert "false_lesions_per_case=0.00" in lines[3]
    # a second bar above the air box's p(lesion) removes it even at lesion_conf 0.5
    assert main(["evaluate", str(tmp_path / "results"), "--truth", str(out), "--lesion-conf-sweep", "0.5",
                 "--p-lesion-sweep", "0.5", "--p-confident-sweep", "0,0.3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("lesion_conf 0.50 p_lesion 0.50 p_confident 0.00: lesion_recall=1.000 "
                               "lesion_precision=0.500")
    assert lines[1].startswith("lesion_conf 0.50 p_lesion 0.50 p_confident 0.30: lesion_recall=1.000 "
                               "lesion_precision=1.000")
    assert main(["evaluate", str(tmp_path / "results"), "--truth", str(out), "--lesion-conf-sweep", "0.5",
                 "--p-confident-sweep", "0.3"]) == 2
    # a verifier floor above the candidates' 0.9 leaves nothing to keep; at 0.9 nothing changes
    for floor, recall in (("0.95", "0.000"), ("0.9", "1.000")):
        assert main(["evaluate", str(tmp_path / "results"), "--truth", str(out), "--lesion-conf-sweep", "0.95",
                     "--p-lesion-sweep", "0.5", "--candidate-conf", floor]) == 0
        (line,) = capsys.readouterr().out.strip().splitlines()
        assert line.startswith(f"lesion_conf 0.95 p_lesion 0.50: lesion_recall={recall}")
