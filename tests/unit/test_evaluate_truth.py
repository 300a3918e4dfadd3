"""Phantom ground truth as `liver-node evaluate` reads it from labels.json."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.evaluate import load_phantom_truth


def test_a_lesion_between_slices_has_no_contrast_and_does_not_break_the_truth(tmp_path: Path) -> None:
    """A 5 mm cyst can fall between two 5 mm slices: the phantom writes its contrast as null."""
    labels = {
        "study_instance_uid": "1.2.3",
        "lesions": [
            {"lesion_id": 1, "class": "CYST", "diameters_mm": [8.2, 7.1, 7.6], "contrast_hu": {"AP": -73.0, "PVP": -99.2}},
            {"lesion_id": 2, "class": "CYST", "diameters_mm": [5.4, 4.9, 4.9], "contrast_hu": {"AP": None, "PVP": None}},
        ],
        "boxes": {"5": [{"phase": "PVP", "sop_instance_uid": "1.2.3.4", "lesion_id": 1,
                         "x1": 10.0, "y1": 11.0, "x2": 20.0, "y2": 19.0}]},
    }
    (tmp_path / "PH0001").mkdir()
    (tmp_path / "PH0001" / "labels.json").write_text(json.dumps(labels))
    truth = load_phantom_truth(tmp_path)["1.2.3"]
    assert truth.case_class == "CYST" and not truth.normal
    assert truth.lesion_contrast_hu == {1: 99.2}
    assert truth.lesion_diameters_mm == {1: 8.2, 2: 5.4}
    assert truth.boxes == {("1.2.3.4", 1): [(1, (10.0, 11.0, 20.0, 19.0))]}  # no frame_index: a classic instance


def test_frames_of_one_multi_frame_instance_are_separate_images(tmp_path: Path) -> None:
    """Enhanced CT: one SOP Instance per series, so a box counts only on its own frame."""
    from pipeline.evaluate import detection_metrics

    box = {"phase": "AP", "sop_instance_uid": "1.2.3.9", "lesion_id": 1, "x1": 10.0, "y1": 10.0, "x2": 20.0, "y2": 20.0}
    labels = {"study_instance_uid": "1.2.3", "lesions": [{"lesion_id": 1, "class": "HCC"}],
              "boxes": {"a": [{**box, "frame_index": 4}]}}
    (tmp_path / "PH0001").mkdir()
    (tmp_path / "PH0001" / "labels.json").write_text(json.dumps(labels))
    truths = load_phantom_truth(tmp_path)

    def found(frame: int) -> float:
        view = {"boxes": [{"sop_instance_uid": "1.2.3.9", "frame_number": frame, "xyxy": [10, 10, 20, 20]}]}
        return detection_metrics({"1.2.3": {"lesions": [{"views": [view]}]}}, truths)["iou_0.5"]["lesion_recall"]

    assert found(5) == 1.0 and found(4) == 0.0


def _truth_dir(tmp_path: Path, boxes: list[tuple[int, list[float]]], classes: dict[int, str]) -> Path:
    labels = {"study_instance_uid": "1.2.3", "lesions": [{"lesion_id": k, "class": c} for k, c in classes.items()],
              "boxes": {"a": [{"phase": "AP", "sop_instance_uid": "1.2.3.9", "frame_index": 0, "lesion_id": k,
                               "x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3]} for k, b in boxes]}}
    (tmp_path / "PH0001").mkdir()
    (tmp_path / "PH0001" / "labels.json").write_text(json.dumps(labels))
    return tmp_path


def _lesion(*xyxys) -> dict:
    return {"views": [{"boxes": [{"sop_instance_uid": "1.2.3.9", "xyxy": list(b)} for b in xyxys]}]}


def test_a_lesion_reported_twice_counts_once_and_the_other_report_as_a_duplicate(tmp_path: Path) -> None:
    from pipeline.evaluate import detection_metrics

    truths = load_phantom_truth(_truth_dir(tmp_path, [(1, [10, 10, 30, 30])], {1: "HCC"}))
    twice = {"1.2.3": {"lesions": [_lesion((10, 10, 30, 30)), _lesion((12, 12, 30, 30))]}}  # e.g. AP-only, PVP-only
    m = detection_metrics(twice, truths)["iou_0.1"]
    assert m["lesion_recall"] == 1.0 and m["lesion_precision"] == 0.5
    assert m["false_lesions_per_case"] == 1.0 and m["duplicate_lesions_per_case"] == 1.0


def test_boxes_are_matched_one_to_one_at_the_best_pairing_not_greedily(tmp_path: Path) -> None:
    """T1 overlaps P1 most, but only P1 overlaps T2: the pairing T1-P2, T2-P1 finds both."""
    from pipeline.evaluate import detection_metrics

    truths = load_phantom_truth(_truth_dir(tmp_path, [(1, [0, 0, 10, 10]), (2, [8, 0, 18, 10])],
                                           {1: "HCC", 2: "MET"}))
    m = detection_metrics({"1.2.3": {"lesions": [_lesion((2, 0, 14, 10)), _lesion((0, 0, 4, 10))]}}, truths)["iou_0.3"]
    assert m["box_recall"] == 1.0 and m["box_precision"] == 1.0 and m["lesion_recall"] == 1.0


def test_a_case_with_no_answer_counts_as_a_classification_error(tmp_path: Path) -> None:
    from pipeline.evaluate import evaluate

    truth_dir = _truth_dir(tmp_path / "truth", [(1, [10, 10, 30, 30])], {1: "HCC"}) if (tmp_path / "truth").mkdir() \
        is None else None
    results = tmp_path / "results" / "1.2.3"
    results.mkdir(parents=True)
    results.joinpath("result.json").write_text(json.dumps(
        {"study_instance_uid": "1.2.3", "lesions": [], "case": None}))  # nothing found in a malignant case
    report = evaluate(tmp_path / "results", load_phantom_truth(truth_dir))
    case = report["case_classification"]
    assert case["n"] == 1 and case["no_answer"] == 1
    assert case["benign_malignant"]["accuracy"]["value"] == 0.0 and case["six_class"]["accuracy"]["value"] == 0.0


def _write_result(folder: Path, result: dict) -> None:
    (folder / result["study_instance_uid"]).mkdir(parents=True)
    (folder / result["study_instance_uid"] / "result.json").write_text(json.dumps(result))


def test_one_report_spanning_two_lesions_is_classified_against_one_of_them_only(tmp_path: Path) -> None:
    """Classification pairs lesions one-to-one as detection does: n is the number of lesions found."""
    from pipeline.evaluate import evaluate

    truth = _truth_dir(tmp_path / "truth", [(1, [0, 0, 10, 10]), (2, [10, 0, 20, 10])], {1: "HCC", 2: "MET"}) \
        if (tmp_path / "truth").mkdir() is None else None
    wide = {**_lesion((0, 0, 20, 10)), "class": "HCC", "p_malignant": 0.9}  # IoU 0.5 with each
    _write_result(tmp_path / "results", {"study_instance_uid": "1.2.3", "status": "ok", "lesions": [wide],
                                         "case": {"class": "HCC", "p_malignant": 0.9}})
    report = evaluate(tmp_path / "results", load_phantom_truth(truth))
    assert report["detection"]["iou_0.1"]["lesion_recall"] == 0.5
    assert report["lesion_classification"]["n"] == 1


def test_a_normal_case_that_was_not_analysed_is_not_counted_clean(tmp_path: Path) -> None:
    from pipeline.evaluate import evaluate, format_report, load_csv_truth

    (tmp_path / "truth.csv").write_text("study_instance_uid,class\n1.1,\n1.2,normal\n")
    _write_result(tmp_path / "results", {"study_instance_uid": "1.1", "status": "ok", "lesions": [], "case": None})
    _write_result(tmp_path / "results", {"study_instance_uid": "1.2", "status": "not_analysed", "lesions": [],
                                         "case": None})
    report = evaluate(tmp_path / "results", load_csv_truth(tmp_path / "truth.csv"))
    assert report["normal_cases"] == {"n": 2, "with_no_lesion_found": 1, "not_analysed": 1}
    assert "1/2 with no lesion found (1 not analysed)" in format_report(report)


def test_csv_truth_reads_a_spreadsheet_export_and_refuses_an_unknown_class(tmp_path: Path) -> None:
    from pipeline.evaluate import load_csv_truth

    path = tmp_path / "truth.csv"
    path.write_bytes("\ufeffstudy_instance_uid,class\n1.1, hcc \n1.2,none\n1.3,NORMAL\n1.4,\n".encode("utf-8"))
    truths = load_csv_truth(path)
    assert truths["1.1"].case_class == "HCC" and not truths["1.1"].normal
    assert all(truths[u].normal and truths[u].case_class is None for u in ("1.2", "1.3", "1.4"))
    path.write_text("study_instance_uid,class\n1.1,adenoma\n")
    with pytest.raises(ValueError, match="line 2: class 'adenoma'"):
        load_csv_truth(path)
