"""Pipeline stages on constructed inputs with known answers: series, grouping, matching, hierarchy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipeline.hierarchy import ALL_CLASSES, HierarchyLogits, decide
from pipeline.lesions import Box2D, Lesion, box_iou, group_boxes, iou, match_phases, measure, merge_fragments
from pipeline.series import Geometry, LoadedSeries, SeriesError, load_series
from tests.support.ctdata import SeriesSpec, uid, write_series

REALDATA = Path(__file__).resolve().parents[3] / "shared" / "realdata"


def _series(tmp_path, n=6, **kw):
    return write_series(tmp_path / "s", uid("stage", n), SeriesSpec("AP", n, thickness=2.5), rows=32, cols=32, **kw)


def test_load_sorts_by_position_and_converts_to_hu(tmp_path):
    paths = _series(tmp_path)
    ds = [pydicom.dcmread(p) for p in paths]
    ls = load_series(list(reversed(paths)))
    assert ls.hu.shape == (6, 32, 32)
    pos = ls.geometry.positions
    assert np.all(np.diff(pos) > 0)
    # Slice 0 is the most inferior (lowest z): instance 6 of the writer (z = -12.5).
    lowest = min(ds, key=lambda d: d.ImagePositionPatient[2])
    assert ls.sop_instance_uids[0] == lowest.SOPInstanceUID
    np.testing.assert_array_equal(ls.hu[0], lowest.pixel_array.astype(np.float32))
    assert ls.geometry.slice_spacing == pytest.approx(2.5)
    # Pixel (row 2, column 3) of slice 0 in patient coordinates.
    np.testing.assert_allclose(ls.geometry.to_patient(0, 2, 3),
                               np.array(lowest.ImagePositionPatient, float) + [3 * 0.78125, 2 * 0.78125, 0])


def test_irregular_series_get_reasons(tmp_path):
    paths = _series(tmp_path, n=8)
    ls = load_series(paths[:3] + paths[5:])
    assert any("missing slices" in n for n in ls.notes)
    dup = tmp_path / "dup.dcm"
    d = pydicom.dcmread(paths[1])
    d.SOPInstanceUID = uid("dup")
    d.save_as(dup)
    with pytest.raises(SeriesError, match="share one position"):
        load_series(paths + [dup])
    coronal = tmp_path / "cor"
    coronal.mkdir()
    for i, p in enumerate(paths):
        d = pydicom.dcmread(p)
        d.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        d.ImagePositionPatient = [0, float(i), 0]
        d.save_as(coronal / p.name)
    with pytest.raises(SeriesError, match="not an axial"):
        load_series(sorted(coronal.iterdir()))
    (tmp_path / "labels.json").write_text("{}")
    assert any("non-DICOM" in n for n in load_series(paths + [tmp_path / "labels.json"]).notes)


def test_ircad_headers_load():
    folder = REALDATA / "3dircadb1.1" / "PATIENT_DICOM"
    paths = sorted(folder.iterdir())[:12]
    ls = load_series(paths)
    assert ls.hu.shape[0] == 12
    assert ls.hu.min() < -500 and ls.hu.max() > 100  # HU, not raw stored values
    assert np.all(np.diff(ls.geometry.positions) > 0)


def test_real_enhanced_ct_takes_its_rescale_from_the_shared_functional_group():
    """NEMA's CT0012 (2 frames, JPEG Extended) has no top-level rescale: intercept -1024 sits in the shared
    Pixel Value Transformation Sequence. Its stored background is 1023, i.e. -1 HU."""
    path = REALDATA / "compressed-ct-transfer-syntaxes" / "cornerstone" / "CT0012.fragmented_no_bot_jpeg_baseline.51.dcm"
    ds = pydicom.dcmread(path)
    assert "RescaleIntercept" not in ds
    ls = load_series([path])
    assert ls.hu.shape == (2, 512, 512) and sorted(ls.frame_numbers) == [1, 2]
    raw = ds.pixel_array.astype(np.float32)
    for i, frame in enumerate(ls.frame_numbers):
        np.testing.assert_array_equal(ls.hu[i], raw[frame - 1] - 1024.0)
    assert float(np.median(ls.hu)) == -1.0


def _b(s, x1, y1, x2, y2, c=0.9):
    return Box2D(s, x1, y1, x2, y2, c)


def test_grouping_follows_overlapping_boxes_across_slices():
    per_slice = [
        [_b(0, 10, 10, 20, 20)],
        [_b(1, 11, 11, 21, 21), _b(1, 100, 100, 110, 110)],
        [],  # one missed slice is bridged
        [_b(3, 12, 12, 22, 22), _b(3, 101, 101, 111, 111)],
        [],
        [],
        [_b(6, 12, 12, 22, 22)],  # two missing slices: a new lesion
    ]
    tracks = group_boxes(per_slice, max_skip=1)
    assert sorted(len(t) for t in tracks) == [1, 2, 3]
    assert [b.slice_index for b in max(tracks, key=len)] == [0, 1, 3]
    assert iou(_b(0, 0, 0, 10, 10), _b(0, 5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_box_iou_on_plain_xyxy_tuples() -> None:
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 10, 10), (2, 2, 4, 4)) == pytest.approx(4 / 100)  # contained
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((5, 5, 5, 5), (5, 5, 5, 5)) == 0.0  # empty boxes: no division by zero


def _loaded(series_uid: str, n: int = 5, frame="1.2.3", offset=(0.0, 0.0, 0.0)) -> LoadedSeries:
    origins = np.array([[-100.0 + offset[0], -100.0 + offset[1], 2.5 * i + offset[2]] for i in range(n)])
    geo = Geometry(origins, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (0.5, 0.5), frame)
    hu = np.zeros((n, 100, 100), np.float32)
    hu[:, 20:40, 30:50] = 80.0
    return LoadedSeries(series_uid, hu, geo, tuple(f"sop{i}" for i in range(n)), (None,) * n, "ct", "")


def test_volume_counts_a_slice_the_track_bridges_as_the_mean_of_its_neighbours():
    series = _loaded("ap", n=6)
    full = measure([_b(i, 30, 20, 50, 40) for i in range(1, 6)], series, "AP")
    gap = measure([_b(i, 30, 20, 50, 40) for i in (1, 2, 4, 5)], series, "AP")  # slice 3 missed
    # 5 slices of a 10 x 10 mm ellipse, 2.5 mm apart
    assert full.volume_ml == pytest.approx(5 * np.pi / 4 * 100 * 2.5 / 1000)
    assert gap.volume_ml == pytest.approx(full.volume_ml)


def test_measure_and_match_across_phases():
    ap, pv = _loaded("ap"), _loaded("pv")
    track = [_b(1, 30, 20, 50, 40), _b(2, 28, 18, 52, 42), _b(3, 32, 22, 48, 38)]
    lap = measure(track, ap, "AP")
    assert lap.key.slice_index == 2
    assert lap.long_axis_mm == pytest.approx(12.0) and lap.short_axis_mm == pytest.approx(12.0)
    assert lap.mean_hu == pytest.approx(80.0, abs=15)
    assert lap.key_sop_instance_uid == "sop2"
    np.testing.assert_allclose(lap.center_mm, [-100 + 39.5 * 0.5, -100 + 29.5 * 0.5, 5.0])
    lpv = measure([_b(2, 31, 21, 51, 41)], pv, "PVP")
    far = measure([_b(2, 80, 80, 90, 90)], pv, "PVP")
    lesions = match_phases([[lap], [lpv, far]])
    assert len(lesions) == 2
    assert sorted(lesions[0].phases) == ["AP", "PVP"]
    assert lesions[1].phases == ("PVP",)


def test_without_a_shared_frame_of_reference_nothing_is_matched():
    ap, pv = _loaded("ap"), _loaded("pv")
    lap = measure([_b(2, 30, 20, 50, 40)], ap, "AP")
    lpv = measure([_b(2, 31, 21, 51, 41)], pv, "PVP")  # within 1 mm: matched when the frames are shared
    assert len(match_phases([[lap], [lpv]])) == 1
    assert [les.phases for les in match_phases([[lap], [lpv]], match_mm=-1.0)] == [("AP",), ("PVP",)]


def test_the_primary_view_is_the_largest_in_mm_not_in_pixels():
    fine = _loaded("ap")
    fine = LoadedSeries(fine.series_uid, fine.hu, Geometry(fine.geometry.origins, fine.geometry.row_direction,
                        fine.geometry.column_direction, (0.25, 0.25), fine.geometry.frame_of_reference_uid),
                        fine.sop_instance_uids, fine.frame_numbers, "ct", "")
    lap = measure([_b(2, 20, 20, 60, 60)], fine, "AP")  # 40 px at 0.25 mm: 10 mm
    lpv = measure([_b(2, 10, 10, 40, 40)], _loaded("pv"), "PVP")  # 30 px at 0.5 mm: 15 mm
    lesion = Lesion(1, (lap, lpv))
    assert lesion.primary.phase == "PVP" and lesion.primary.long_axis_mm == pytest.approx(15.0)


def test_enhanced_ct_frames_get_their_own_rescale(tmp_path):
    from pipeline.phantom import CaseOptions, LesionClass, WriteOptions, render_case, sample_case, write_study

    intercepts = set()
    for index in range(8):  # the phantom's header variants: Enhanced CT stores the rescale per frame group
        spec = sample_case(2, index, CaseOptions(n_slices=3, lesion_classes=(LesionClass.MET,)))
        intercepts.add(spec.header.rescale_intercept)
        if spec.header.rescale_intercept != 0:
            break
    assert spec.header.rescale_intercept != 0, intercepts
    case = render_case(spec)
    labels = write_study(case, tmp_path, WriteOptions(enhanced=True))
    for s in labels.series:
        ls = load_series([tmp_path / "dicom" / s.instances[0].path])
        order = np.argsort([case.spec.geometry.z_mm(k) for k in range(3)])
        np.testing.assert_array_equal(ls.hu, case.volumes[s.phase][order])
        frame_of_slice = {inst.slice_index: inst.frame_index + 1 for inst in s.instances}
        assert ls.frame_numbers == tuple(frame_of_slice[int(k)] for k in order)


def test_hierarchy_averages_logits_then_softmaxes():
    # Two crops: malignant-leaning overall; within the malignant branch ICC wins on average.
    logits = HierarchyLogits(
        bm=np.array([[0.0, 2.0], [0.0, 0.0]]),
        benign=np.array([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]]),
        malignant=np.array([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0]]),
    )
    d = decide(logits)
    assert d.malignant and d.cls == "ICC"
    assert d.p_malignant == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert sum(d.probabilities.values()) == pytest.approx(1.0)
    assert set(d.probabilities) == set(ALL_CLASSES)
    benign = decide(HierarchyLogits(np.array([[3.0, 0.0]]), np.array([[0.0, 0.0, 4.0]]), np.array([[9.0, 0, 0]])))
    assert not benign.malignant and benign.cls == "CYST"  # the malignant model's opinion is not used


def test_non_finite_logits_are_an_error_not_a_benign_fnh():
    nan = HierarchyLogits(np.array([[np.nan, np.nan]]), np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="non-finite logits"):
        decide(nan)


def test_a_non_finite_verifier_probability_is_written_as_null(tmp_path):
    import json

    from pipeline.result import LesionResult, StudyResult

    lesion = match_phases([[measure([_b(2, 30, 20, 50, 40)], _loaded("ap"), "AP")]])[0]
    decision = decide(HierarchyLogits(np.zeros((1, 2)), np.zeros((1, 3)), np.zeros((1, 3))))
    result = StudyResult("1.2.3", "ok", lesions=[LesionResult(lesion, decision, p_lesion=float("nan"))])
    written = json.loads(result.write(tmp_path).read_text())
    assert written["lesions"][0]["p_lesion"] is None


def test_a_non_finite_rescale_is_a_series_error_not_nan_pixels(tmp_path):
    paths = _series(tmp_path)
    ds = pydicom.dcmread(paths[2])
    ds.RescaleSlope = "NaN"
    ds.save_as(paths[2], enforce_file_format=True)
    with pytest.raises(SeriesError, match="not finite"):
        load_series(paths)


def test_a_lesion_boxed_twice_on_a_slice_is_one_track_not_two():
    # the detector boxes one lesion twice on slice 1 (a nested box survives NMS): the second box cannot
    # join the track that already took a box on that slice, so it grows a parallel track
    per_slice = [
        [_b(0, 10, 10, 30, 30)],
        [_b(1, 10, 10, 30, 30, 0.9), _b(1, 14, 14, 26, 26, 0.6)],
        [_b(2, 15, 15, 27, 27, 0.5)],
        [_b(3, 100, 100, 110, 110)],  # another lesion, apart in-plane
    ]
    tracks = group_boxes(per_slice)
    assert len(tracks) == 3  # the fragment, as grouping alone leaves it
    merged = merge_fragments(tracks)
    assert len(merged) == 2
    lesion = max(merged, key=len)
    assert [b.slice_index for b in lesion] == [0, 1, 2]  # one box per slice
    assert (lesion[1].x1, lesion[1].y1, lesion[1].x2, lesion[1].y2, lesion[1].confidence) == (10, 10, 30, 30, 0.9)


def test_fragments_join_only_when_they_overlap_on_nearby_slices():
    side_by_side = [[_b(1, 10, 10, 30, 30)], [_b(1, 31, 10, 51, 30)]]  # touching lesions: no overlap
    assert len(merge_fragments(side_by_side)) == 2
    far_in_z = [[_b(1, 10, 10, 30, 30)], [_b(3, 10, 10, 30, 30)]]  # same place, two slices apart
    assert len(merge_fragments(far_in_z)) == 2
    partial = [[_b(1, 10, 10, 30, 30, 0.4)], [_b(2, 16, 10, 36, 30, 0.8)]]  # IoU 0.54 on the next slice
    (joined,) = merge_fragments(partial)
    assert [(b.slice_index, b.x1, b.x2) for b in joined] == [(1, 10, 30), (2, 16, 36)]
    same_slice = [[_b(1, 10, 10, 30, 30, 0.4)], [_b(1, 16, 10, 36, 30, 0.8)]]
    (joined,) = merge_fragments(same_slice)
    assert [(b.x1, b.x2, b.confidence) for b in joined] == [(10, 36, 0.8)]  # the box around both


def test_lesions_side_by_side_stay_apart_when_one_wide_box_bridges_them():
    # two lesions beside each other on slices 0-5; on slice 6 one box covers both (B's centre inside it)
    a = [_b(s, 10, 10, 30, 30) for s in range(6)] + [_b(6, 10, 10, 80, 30)]
    b = [_b(s, 60, 10, 80, 30) for s in range(6)]
    merged = merge_fragments([a, b])
    assert len(merged) == 2
    assert max(bx.width for bx in min(merged, key=lambda t: t[0].x1)[:6]) == 20  # A's own boxes, not a 70-px union


def test_out_of_file_descriptors_is_raised_not_skipped_as_an_unreadable_file(tmp_path):
    """EMFILE is the machine's state, not the file's: dropping the file would analyse part of a series."""
    import subprocess
    import sys

    files = write_series(tmp_path, uid("emfile"), SeriesSpec(slices=2), rows=16, cols=16)
    script = (
        "import os, resource, sys\n"
        "from pipeline.series import read_datasets\n"
        "from pathlib import Path\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "held = []\n"
        "try:\n"
        "    while True:\n"
        "        held.append(os.open(os.devnull, os.O_RDONLY))\n"
        "except OSError:\n"
        "    pass\n"
        "try:\n"
        "    read_datasets([Path(p) for p in sys.argv[1:]])\n"
        "    print('skipped')\n"
        "except OSError as exc:\n"
        "    print('raised', exc.errno)\n")
    out = subprocess.run([sys.executable, "-c", script, *map(str, files)], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=120)
    import errno

    assert out.stdout.split() == ["raised", str(errno.EMFILE)], out.stderr


def _damaged_copy(tmp_path, relative: str, cut: float | None = None, zero_at: int | None = None) -> Path:
    """A real file damaged in a copy: pixel data cut to a share of its length, or bytes zeroed."""
    source = REALDATA / "compressed-ct-transfer-syntaxes" / relative
    path = tmp_path / source.name
    if cut is not None:  # a well-formed file whose pixel data stops early
        ds = pydicom.dcmread(source)
        ds.PixelData = ds.PixelData[:int(len(ds.PixelData) * cut) // 2 * 2]
        ds.save_as(path)
    else:
        data = bytearray(source.read_bytes())
        data[zero_at:zero_at + 200] = bytes(200)
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(("relative", "damage"), [
    ("cornerstone/CT0012.fragmented_no_bot_jpeg_baseline.51.dcm", {"cut": 0.4}),  # StopIteration in pydicom
    ("wg04/CT1_RLE.dcm", {"zero_at": 50000}),  # a Rust panic (BaseException) in pylibjpeg-rle
])
def test_pixel_data_a_decoder_chokes_on_is_a_series_error(tmp_path, relative, damage):
    with pytest.raises(SeriesError, match="pixel data cannot be decoded"):
        load_series([_damaged_copy(tmp_path, relative, **damage)])


def test_a_file_cut_inside_its_header_is_skipped_by_the_scan_and_the_loader(tmp_path):
    from pipeline.batch import scan_studies

    good = write_series(tmp_path / "in", uid("cut"), SeriesSpec("AP", 3), rows=16, cols=16)
    for size in (142, 153):  # BytesLengthException, struct.error
        (tmp_path / "in" / f"cut{size}.dcm").write_bytes(
            (REALDATA / "compressed-ct-transfer-syntaxes" / "wg04" / "CT1_UNC.dcm").read_bytes()[:size])
    (study,) = scan_studies(tmp_path / "in").values()
    assert sum(len(s.paths) for s in study.values()) == 3
    loaded = load_series([*good, tmp_path / "in" / "cut142.dcm", tmp_path / "in" / "cut153.dcm"])
    assert loaded.hu.shape[0] == 3 and "2 non-DICOM or unreadable files skipped" in loaded.notes


def test_a_position_or_orientation_with_the_wrong_number_of_values_is_a_series_error(tmp_path):
    files = _series(tmp_path, n=3)
    ds = pydicom.dcmread(files[1])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1]
    ds.save_as(files[1], enforce_file_format=True)
    with pytest.raises(SeriesError, match="image plane attributes missing or malformed"):
        load_series(files)
