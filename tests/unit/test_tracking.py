"""Tracking UIDs follow lesions across revisions, whatever their size ranks become."""
from __future__ import annotations

import numpy as np

from pipeline.hierarchy import HierarchyLogits, decide
from pipeline.lesions import Box2D, match_phases, measure
from pipeline.report.sr import tracking_uid
from pipeline.report.tracking import carry_tracking
from pipeline.result import LesionResult, StudyResult
from pipeline.series import Geometry, LoadedSeries

STUDY = "1.2.826.0.1.3680043.8.498.777"


def _series() -> LoadedSeries:
    origins = np.array([[-100.0, -100.0, 2.5 * i] for i in range(5)])
    geo = Geometry(origins, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (0.5, 0.5), "1.2.3")
    return LoadedSeries("s", np.zeros((5, 300, 300), np.float32), geo, tuple(f"sop{i}" for i in range(5)),
                        (None,) * 5, "ct", "")


def _result(boxes: list[tuple[int, int, int]]) -> StudyResult:
    """One lesion per (x, y, side in px) on slice 2; indices ranked by size, as the analyzer ranks them."""
    series = _series()
    seen = [measure([Box2D(2, x, y, x + side, y + side, 0.9)], series, "PVP") for x, y, side in boxes]
    decision = decide(HierarchyLogits(np.zeros((1, 2)), np.zeros((1, 3)), np.zeros((1, 3))))
    return StudyResult(STUDY, status="ok", lesions=[LesionResult(les, decision) for les in match_phases([seen])])


def test_a_larger_lesion_found_later_does_not_take_the_others_uids(tmp_path):
    a, b, c = (100, 100, 30), (200, 200, 20), (30, 200, 60)
    first = carry_tracking(_result([a, b]), None, revision=1)
    assert [r.tracking_uid for r in first.lesions] == [tracking_uid(STUDY, 1), tracking_uid(STUDY, 2)]
    first.write(tmp_path / "rev-1")
    second = carry_tracking(_result([a, b, c]), tmp_path / "rev-1" / "result.json", revision=2)
    by_index = {r.lesion.index: r.tracking_uid for r in second.lesions}
    # c is the largest, so it ranks first now; a and b keep their UIDs under their new indices
    assert by_index[2] == first.lesions[0].tracking_uid and by_index[3] == first.lesions[1].tracking_uid
    assert by_index[1] not in {r.tracking_uid for r in first.lesions}
    second.write(tmp_path / "rev-2")
    third = carry_tracking(_result([a, c]), tmp_path / "rev-2" / "result.json", revision=3)  # b gone
    assert {r.tracking_uid for r in third.lesions} == {by_index[1], by_index[2]}


def test_another_model_or_node_gives_its_lesions_other_tracking_uids_and_the_sr_agrees():
    from pipeline.report.sr import uid_key
    from pipeline.result import ModelInfo

    models = [ModelInfo("det", "1", "a" * 64)]
    keys = [uid_key(models, "salt-a"), uid_key(models, "salt-b"), uid_key([ModelInfo("det", "2", "b" * 64)], "salt-a")]
    uids = [carry_tracking(_result([(100, 100, 30)]), None, revision=1, key=k).lesions[0].tracking_uid for k in keys]
    assert len(set(uids)) == 3
    assert uids[0] == tracking_uid(STUDY, 1, keys[0])  # what the SR writes for a lesion given no UID


def test_an_amendment_follows_the_last_report_written_not_only_the_revision_before(tmp_path):
    from node.worker import earlier_report

    study = tmp_path / "results" / "study"
    (study / "rev-1").mkdir(parents=True)
    for name in ("sr.dcm", "result.json"):
        (study / "rev-1" / name).write_text("x")
    (study / "rev-2").mkdir()  # analysed, then its objects failed: a result.json, no SR, nothing reported
    (study / "rev-2" / "result.json").write_text("x")
    assert earlier_report(study / "rev-3", 3) == study / "rev-1"  # predecessor and tracking from one report
    assert earlier_report(study / "rev-1", 1) is None
