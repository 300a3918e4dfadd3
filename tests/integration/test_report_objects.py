"""Result objects (SR + SCs) from a real phantom study result: DCMTK/dicom3tools validate them,
highdicom reads the SR back, UIDs are deterministic, amendments keep tracking UIDs; Grad-CAM works
on a tiny LiLNet. Oracle detector and fixed classifier as in tests/unit/test_analyzer.py."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch

from pipeline.analyzer import Analyzer
from pipeline.batch import scan_studies, study_inputs
from pipeline.imaging import window_u8
from pipeline.phases import PhaseRules
from pipeline.phantom import CaseOptions, ContrastPhase, LesionClass, WriteOptions, make_study
from pipeline.report import build_result_objects, build_sr
from pipeline.report.heatmap import grad_cam
from pipeline.result import ModelInfo, StudyResult
from pipeline.series import load_series
from tests.unit.test_analyzer import FixedClassifier, _oracle

MODELS = [ModelInfo("bm", "1.0", "a" * 64), ModelInfo("benign", "1.0", "b" * 64), ModelInfo("malignant", "1.0", "c" * 64)]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    opts = CaseOptions(phases=(ContrastPhase.AP, ContrastPhase.PVP), n_slices=12, slice_thickness_mm=5.0,
                       lesion_classes=(LesionClass.HCC,), max_lesions=1)
    make_study(out, 11, 0, opts, WriteOptions())
    (study_uid, series), = scan_studies(out).items()
    result = Analyzer(_oracle(out), FixedClassifier(), MODELS).run_study(study_uid, study_inputs(series, PhaseRules()))
    result.models = list(MODELS)
    headers, slices = {}, {}
    for scan in series.values():
        for p in scan.paths:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            headers[ds.SOPInstanceUID] = ds
        ls = load_series(scan.paths)
        for sop, frame, img in zip(ls.sop_instance_uids, ls.frame_numbers, window_u8(ls.hu)):
            slices[sop, frame] = img
    return result, headers, slices


def _heatmap() -> np.ndarray:
    yy, xx = np.mgrid[0:224, 0:224]
    return np.exp(-((xx - 112) ** 2 + (yy - 112) ** 2) / (2 * 30.0**2)).astype(np.float32)


def _write(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _dciodvfy(path: Path) -> list[str]:
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [l for l in lines if l.startswith("Error")]
    assert not errors, f"{path.name}: {errors}"
    return [l for l in lines if l.startswith("Warning")]


def _groups(sr):
    return [g for g in sr.content.get_planar_roi_measurement_groups()]


@pytest.mark.skipif(shutil.which("dciodvfy") is None or shutil.which("dsrdump") is None, reason="needs dicom3tools and dcmtk")
def test_objects_validate_and_round_trip(study, tmp_path):
    result, headers, slices = study
    assert result.status == "ok" and len(result.lesions) == 1
    objs = build_result_objects(result, headers, slices, {result.lesions[0].lesion.index: _heatmap()})
    assert len(objs) == 3 and isinstance(objs[0], hd.sr.Comprehensive3DSR)
    warnings = {}
    for i, ds in enumerate(objs):
        path = _write(ds, tmp_path / f"obj{i}.dcm")
        warnings[path.name] = _dciodvfy(path)
    (tmp_path / "warnings.json").write_text(json.dumps(warnings, indent=1))
    print(json.dumps(warnings, indent=1))
    dump = subprocess.run(["dsrdump", str(tmp_path / "obj0.dcm")], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert "25370001" in dump.stdout or "Hepatocellular carcinoma" in dump.stdout

    sr = hd.sr.srread(tmp_path / "obj0.dcm")
    (group,) = _groups(sr)
    lesion = result.lesions[0]
    view = lesion.lesion.primary
    assert group.finding_type.value == "25370001"
    assert [s.value.value for s in group.finding_sites] == ["10200004"]
    region = group.roi
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == view.key_sop_instance_uid
    b = view.key
    expected = np.array([[b.x1, b.y1], [b.x2, b.y1], [b.x2, b.y2], [b.x1, b.y2], [b.x1, b.y1]])
    np.testing.assert_allclose(region.value, expected, atol=1e-3)
    values = {m.name.meaning: m.value for m in group.get_measurements()}
    assert values["Long axis"] == pytest.approx(view.long_axis_mm, abs=0.01)
    for cls, p in lesion.decision.probabilities.items():
        match = [v for k, v in values.items() if k.startswith("Probability of") and k != "Probability of cancer"
                 and m_code(group, k) == f"P-{cls}"]
        assert match and match[0] == pytest.approx(p, abs=1e-5)
    assert values["Probability of cancer"] == pytest.approx(lesion.decision.p_malignant, abs=1e-5)
    # evidence, contributing equipment, SC header facts
    ev = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
          for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert view.key_sop_instance_uid in ev
    (eq,) = [e for e in sr.ContributingEquipmentSequence if e.get("DeviceUID")]
    assert eq.PurposeOfReferenceCodeSequence[0].CodeValue == "109102" and eq.ManufacturerModelName.startswith("liver-node")
    for sc in objs[1:]:
        assert sc.BurnedInAnnotation == "YES" and sc.SamplesPerPixel == 3 and sc.BitsAllocated == 8
        assert sc.StudyInstanceUID == result.study_instance_uid
        assert sc.SeriesInstanceUID not in {h.SeriesInstanceUID for h in headers.values()}
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == view.key_sop_instance_uid
        assert "PatientName" not in sc or str(sc.PatientName) == str(headers[view.key_sop_instance_uid].PatientName)


def m_code(group, meaning: str) -> str:
    return next(m.name.value for m in group.get_measurements() if m.name.meaning == meaning)


def test_same_inputs_same_uids_and_amendment_keeps_tracking(study, tmp_path):
    result, headers, slices = study
    a = build_result_objects(result, headers, slices, None)
    b = build_result_objects(result, headers, slices, None)
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    assert build_sr(result, headers).SOPInstanceUID == a[0].SOPInstanceUID
    assert a[0].SeriesInstanceUID not in {h.SeriesInstanceUID for h in headers.values()}
    newer = StudyResult(**{**result.__dict__, "models": [replace(MODELS[0], sha256="d" * 64), *MODELS[1:]]})
    c = build_result_objects(newer, headers, slices, None)
    assert not {d.SOPInstanceUID for d in a} & {d.SOPInstanceUID for d in c}
    dev = lambda sr: {e.get("DeviceUID") for e in sr.ContributingEquipmentSequence} - {None}
    assert dev(a[0]) and dev(a[0]) != dev(c[0])

    amended = build_result_objects(result, headers, slices, None, revision=2, predecessor_sr=a[0])
    assert amended[0].SOPInstanceUID != a[0].SOPInstanceUID
    pred = amended[0].PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == a[0].SOPInstanceUID
    track = lambda sr: [g.tracking_uid for g in _groups(hd.sr.Comprehensive3DSR.from_dataset(copy.deepcopy(sr)))]
    assert track(amended[0]) == track(a[0])
    # the PACS lists both revisions under the same series numbers: the description tells them apart
    assert [d.SeriesDescription for d in amended] == [f"{d.SeriesDescription}, rev 2" for d in a]
    for i, obj in enumerate(amended):
        path = _write(obj, tmp_path / f"amended{i}.dcm")
        if shutil.which("dciodvfy"):
            _dciodvfy(path)


@pytest.mark.parametrize("status", ["no_lesion", "not_analysed"])
def test_empty_and_refused_srs_validate(study, tmp_path, status):
    result, headers, slices = study
    if status == "no_lesion":
        r = StudyResult(result.study_instance_uid, "ok", phase_mode="AP+PVP", models=list(MODELS))
        text = "No liver lesion found"
    else:
        r = StudyResult(result.study_instance_uid, "not_analysed", reason="no contrast phase found", models=list(MODELS))
        text = "Study not analysed"
    objs = build_result_objects(r, headers, slices, None)
    assert len(objs) == 1
    path = _write(objs[0], tmp_path / f"{status}.dcm")
    if shutil.which("dciodvfy"):
        _dciodvfy(path)
    if shutil.which("dsrdump"):
        dump = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, timeout=60)
        assert dump.returncode == 0 and text in dump.stdout


def test_grad_cam_on_tiny_lilnet():
    from pipeline.classify.lilnet import LiLNet

    torch.manual_seed(0)
    model = LiLNet(3, depth="resnet18")
    cam = grad_cam(model, torch.randn(1, 3, 224, 224), 1)
    assert cam.shape == (224, 224)
    assert cam.min() >= 0.0 and cam.max() <= 1.0 and cam.max() > cam.min()


def test_sr_carries_the_verifier_probability_when_there_is_one(study, tmp_path):
    from dataclasses import replace

    result, headers, _ = study
    verified = StudyResult(**{**result.__dict__, "lesions": [replace(result.lesions[0], p_lesion=0.93)]})
    for r, expected in ((result, None), (verified, 0.93)):
        path = _write(build_sr(r, headers), tmp_path / "sr.dcm")
        (group,) = _groups(hd.sr.srread(path))
        values = {m.name.value: m.value for m in group.get_measurements()}
        assert values.get("P-LESION") == (None if expected is None else pytest.approx(expected))
        if shutil.which("dciodvfy"):
            _dciodvfy(path)


def test_sources_real_modalities_send_give_valid_objects(study, tmp_path):
    """What anonymisers and real modalities send: Type 2 attributes absent, a Japanese character set with
    code extensions, an issuer of patient ID, a prone patient. The SR and SCs build, carry the same patient
    and study modules, and the SC orients its pixels as the source's grid."""
    import copy

    result, headers, slices = study
    changed = {}
    for sop, ds in headers.items():
        ds = copy.deepcopy(ds)
        for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        ds.PatientName = "Yamada^Tarou=山田^太郎"
        ds.IssuerOfPatientID = "HOSPITAL-A"
        ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]  # prone
        changed[sop] = ds
    objects = build_result_objects(result, changed, slices, None)
    sr, *scs = objects
    assert sr.PatientBirthDate in ("", None) and sr.IssuerOfPatientID == "HOSPITAL-A"
    for sc in scs:
        assert sc.IssuerOfPatientID == "HOSPITAL-A" and list(sc.PatientOrientation) == ["R", "A"]
        assert list(sc.SpecificCharacterSet) == ["ISO 2022 IR 6", "ISO 2022 IR 87"]
    for i, obj in enumerate(objects):
        path = _write(obj, tmp_path / f"o{i}.dcm")
        assert str(pydicom.dcmread(path).PatientName) == "Yamada^Tarou=山田^太郎"
        if shutil.which("dciodvfy"):
            _dciodvfy(path)


def test_the_case_summary_names_what_does_not_fit(study):
    """Twenty lesions: the text stops above the "not for diagnostic use" mark and points to the SR."""
    import dataclasses

    from pipeline.report.sc import render_case_summary

    result, _, slices = study
    (lesion,) = result.lesions
    many = dataclasses.replace(result, lesions=[dataclasses.replace(lesion, lesion=dataclasses.replace(
        lesion.lesion, index=i + 1)) for i in range(20)])
    key = lesion.lesion.primary.key_image
    image = render_case_summary(slices[key], many)
    mark_top = image.shape[0] - max(14, image.shape[1] // 32) - 10  # the mark is drawn there, bottom left
    rows_with_text = np.flatnonzero(image[:, -200:].max(axis=(1, 2)) > 0)  # the text panel's right part
    assert rows_with_text.size and rows_with_text.max() < mark_top


def test_result_uids_carry_the_data_directory_salt(study, tmp_path):
    """Revision 1 of a rebuilt data directory must not reissue the UIDs of the old one's revision 1."""
    from node.index import Index

    result, headers, slices = study
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    salts = [Index(tmp_path / d / "index.sqlite").uid_salt() for d in ("a", "b", "a")]
    assert salts[0] == salts[2] != salts[1] and len(salts[0]) == 32  # kept across restarts, new per directory

    def uids(salt):
        objs = build_result_objects(result, headers, slices, uid_salt=salt)
        return [(o.SeriesInstanceUID, o.SOPInstanceUID) for o in objs]

    first, again, rebuilt = uids(salts[0]), uids(salts[2]), uids(salts[1])
    assert len(first) >= 3 and first == again  # a resend after a crash: the same UIDs
    assert not {u for pair in first for u in pair} & {u for pair in rebuilt for u in pair}
    sr = build_result_objects(result, headers, slices, uid_salt=salts[0])[0]
    assert sr.StudyInstanceUID == result.study_instance_uid  # the study itself is the same

    def tracking(salt):
        sr = build_result_objects(result, headers, slices, uid_salt=salt)[0]
        return [str(item.UID) for c in sr.ContentSequence for g in c.get("ContentSequence", [])
                for item in g.get("ContentSequence", []) if item.ConceptNameCodeSequence[0].CodeValue == "112040"]

    assert tracking(salts[0]) == tracking(salts[2]) and len(tracking(salts[0])) == 2  # lesion 1's, the case's
    assert not set(tracking(salts[0])) & set(tracking(salts[1]))  # another node's findings are not the same ones


def test_header_values_highdicom_cannot_parse_are_left_empty_not_fatal(study):
    result, headers, slices = study
    odd = {}
    for sop, ds in headers.items():
        ds = copy.deepcopy(ds)
        ds.PatientBirthDate, ds.StudyTime, ds.PatientSex = "1980-05-12", "10:15:00", "Male"
        odd[sop] = ds
    objs = build_result_objects(result, odd, slices, None)
    for ds in objs:
        assert not ds.PatientBirthDate and not ds.StudyTime and not ds.PatientSex
        assert ds.PatientID == next(iter(headers.values())).PatientID and ds.StudyDate


def test_a_character_set_highdicom_refuses_gives_results_in_utf8(study, tmp_path):
    """highdicom 0.28 misspells Korean (IR 149): a Korean study used to get no result at all. The headers
    go in as a receiver reads them (encoded, then read back), and come out unchanged."""
    import io

    result, headers, slices = study
    name = "Hong^Gildong=홍^길동"
    received = {}
    for sop, ds in headers.items():
        ds = copy.deepcopy(ds)
        ds.SpecificCharacterSet, ds.PatientName = ["", "ISO 2022 IR 149"], name
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        received[sop] = pydicom.dcmread(buffer)
    before = {sop: (list(ds.SpecificCharacterSet), "PatientBirthDate" in ds) for sop, ds in received.items()}
    objects = build_result_objects(result, received, slices, None)
    assert {sop: (list(ds.SpecificCharacterSet), "PatientBirthDate" in ds) for sop, ds in received.items()} == before
    for i, obj in enumerate(objects):
        assert obj.SpecificCharacterSet == "ISO_IR 192"
        path = _write(obj, tmp_path / f"o{i}.dcm")
        assert str(pydicom.dcmread(path).PatientName) == name
        if shutil.which("dciodvfy"):
            _dciodvfy(path)


def test_an_acr_nema_date_is_left_empty_and_the_caller_header_untouched(study):
    result, headers, slices = study
    odd = {}
    for sop, ds in headers.items():
        ds = copy.deepcopy(ds)
        ds.PatientBirthDate = "1980.05.12"  # pydicom reads it, DICOM's DA forbids it
        del ds.AccessionNumber
        odd[sop] = ds
    for ds in build_result_objects(result, odd, slices, None):
        assert not ds.PatientBirthDate and ds.StudyDate
    assert all(ds.PatientBirthDate == "1980.05.12" and "AccessionNumber" not in ds for ds in odd.values())


def test_sc_says_heatmap_only_when_one_is_drawn(study):
    result, headers, slices = study
    with_map = build_result_objects(result, headers, slices, {result.lesions[0].lesion.index: _heatmap()})
    without = build_result_objects(result, headers, slices, None)
    assert "heatmap" in with_map[1].DerivationDescription
    assert "heatmap" not in without[1].DerivationDescription


def test_the_case_group_names_its_finding_once(study):
    result, headers, slices = study
    sr = build_result_objects(result, headers, slices, None)[0]
    findings = [item for container in sr.ContentSequence if container.ConceptNameCodeSequence[0].CodeValue == "126010"
                for group in container.ContentSequence for item in group.ContentSequence
                if item.ConceptNameCodeSequence[0].CodeValue == "121071"]
    assert len(findings) == 2  # the lesion's group and the case group, one Finding each
