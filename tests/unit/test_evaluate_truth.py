"""Phantom ground truth as `liver-node evaluate` reads it from labels.json."""
from __future__ import annotations

import json
from pathlib import Path

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
