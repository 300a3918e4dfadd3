"""`liver-node deidentify` on a real phantom study laced with identifiers, read back byte by byte."""
from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.cli import main
from pipeline.batch import scan_studies, study_inputs
from pipeline.phantom import CaseOptions, ContrastPhase, LesionClass, WriteOptions, make_study
from pipeline.phases import PhaseRules

CANARY = "CANARY"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A 3-phase study whose headers name the patient everywhere a real one might, plus a screen
    capture with burned-in text, and the node's results layout with two revisions."""
    root = tmp_path_factory.mktemp("deid")
    opts = CaseOptions(phases=(ContrastPhase.NC, ContrastPhase.AP, ContrastPhase.PVP), n_slices=6,
                       slice_thickness_mm=5.0, lesion_classes=(LesionClass.HCC,), max_lesions=1)
    make_study(root / "in", 7460, 0, opts, WriteOptions())
    uids: dict[str, set[str]] = {"study": set(), "series": set(), "sop": set()}
    for path in sorted((root / "in").rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = f"{CANARY}^ANNA", f"{CANARY}-77", "19800512"
        ds.InstitutionName, ds.ReferringPhysicianName = f"{CANARY} HOSPITAL", f"{CANARY}^DOC"
        ds.AccessionNumber, ds.OtherPatientIDs, ds.StudyDescription = f"{CANARY}-ACC", f"{CANARY}-OLD", f"{CANARY} study"
        ds.SeriesDescription = f"{ds.get('SeriesDescription', '')} {CANARY} protocol"
        block = ds.private_block(0x0011, "SITE PRIVATE", create=True)
        block.add_new(0x01, "LO", f"{CANARY} private")
        ds.save_as(path, enforce_file_format=True)
        uids["study"].add(ds.StudyInstanceUID)
        uids["series"].add(ds.SeriesInstanceUID)
        uids["sop"].add(ds.SOPInstanceUID)
    capture = pydicom.dcmread(path)
    capture.SOPClassUID, capture.BurnedInAnnotation = "1.2.840.10008.5.1.4.1.1.7", "YES"
    capture.SOPInstanceUID = capture.SOPInstanceUID + ".9"
    capture.save_as(root / "in" / "capture.dcm", enforce_file_format=True)
    study = next(iter(uids["study"]))
    sop = sorted(uids["sop"])[0]
    series = sorted(uids["series"])[0]
    for revision, n_lesions in ((1, 0), (2, 1)):
        folder = root / "results" / "abc" / f"rev-{revision}"
        folder.mkdir(parents=True)
        lesions = [{"index": 1, "tracking_uid": "2.25.1234", "class": "HCC",
                    "views": [{"series_uid": series, "key_sop_instance_uid": sop,
                               "boxes": [{"sop_instance_uid": sop, "xyxy": [1, 2, 3, 4]}]}]}][:n_lesions]
        (folder / "result.json").write_text(json.dumps({"study_instance_uid": study, "status": "ok", "lesions": lesions,
                                                        "phases": [{"series_uid": series, "phase": "AP"}]}))
    return root, root / "in", uids


def _export(root: Path, name: str, key: str = "key") -> Path:
    out = root / name
    assert main(["deidentify", str(root / "in"), "--out", str(out), "--key", str(root / key),
                 "--results", str(root / "results")]) == 0
    return out


def test_nothing_identifying_leaves_and_the_images_stay_usable(source):
    root, original, uids = source
    out = _export(root, "out")
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == len(uids["sop"])  # every CT image; not the burned-in capture
    secrets = [CANARY.encode(), b"19800512", *(u.encode() for group in uids.values() for u in group)]
    for path in [*files, *out.rglob("result.json")]:
        raw = path.read_bytes()
        assert not [s for s in secrets if s in raw], path.name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "key").stat().st_mode) == 0o600

    originals = [ds for ds in map(pydicom.dcmread, original.rglob("*.dcm"))
                 if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"]
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES" and ds.PatientName == ds.PatientID.replace("-", "^", 1)
        assert not ds.get("PatientBirthDate") and not ds.get("StudyDate") and "InstitutionName" not in ds
        assert not [e for e in ds if e.tag.is_private]
        twins = [o for o in originals if list(o.ImagePositionPatient) == list(ds.ImagePositionPatient)
                 and np.array_equal(o.pixel_array, ds.pixel_array)]  # the same slice of the same phase
        assert len(twins) == 1
        assert twins[0].RescaleIntercept == ds.RescaleIntercept and list(twins[0].PixelSpacing) == list(ds.PixelSpacing)
    if shutil.which("dciodvfy"):
        proc = subprocess.run(["dciodvfy", str(files[0])], capture_output=True, text=True, timeout=60)
        assert not [l for l in (proc.stdout + proc.stderr).splitlines() if l.startswith("Error")]


def test_phases_survive_from_timing_and_results_follow_the_new_uids(source):
    root, original, _ = source
    out = _export(root, "out2")
    (study_in, series_in), = scan_studies(original).items()
    (study_out, series_out), = scan_studies(out).items()
    phases = [sorted(s.phase for s in study_inputs(series, PhaseRules())) for series in (series_in, series_out)]
    assert phases[0] == phases[1] == ["AP", "NC", "PVP"]  # descriptions gone, contrast timing kept
    (result_path,) = out.rglob("result.json")
    result = json.loads(result_path.read_text())
    assert result_path.parent == out / study_out and result["study_instance_uid"] == study_out
    (lesion,) = result["lesions"]  # the newest revision (rev-2), not rev-1
    exported_sops = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in out.rglob("*.dcm")}
    assert lesion["views"][0]["key_sop_instance_uid"] in exported_sops
    assert lesion["views"][0]["series_uid"] in series_out and result["phases"][0]["series_uid"] in series_out


def test_the_same_key_gives_the_same_pseudonyms_another_key_others(source):
    root, _, _ = source

    def names(out: Path) -> set[tuple[str, str]]:
        return {(ds.PatientID, ds.StudyInstanceUID) for ds in
                (pydicom.dcmread(p, stop_before_pixels=True) for p in out.rglob("*.dcm"))}

    first, again, other = names(_export(root, "a")), names(_export(root, "b")), names(_export(root, "c", key="key2"))
    assert len(first) == 1 and first == again and not first & other


def test_an_output_inside_the_input_is_refused(source, capsys):
    root, original, _ = source
    assert main(["deidentify", str(original), "--out", str(original / "x"), "--key", str(root / "key")]) == 2
    assert "must not be inside" in capsys.readouterr().err


def test_an_enhanced_ct_study_keeps_its_frame_times_shifted_and_its_phases(tmp_path):
    opts = CaseOptions(phases=(ContrastPhase.NC, ContrastPhase.AP, ContrastPhase.PVP), n_slices=4,
                       slice_thickness_mm=5.0, lesion_classes=(LesionClass.CYST,), max_lesions=1)
    make_study(tmp_path / "in", 7461, 0, opts, WriteOptions(enhanced=True))
    dates = {pydicom.dcmread(p, stop_before_pixels=True).get("AcquisitionDateTime", "")[:8]
             for p in (tmp_path / "in").rglob("*.dcm")}
    assert main(["deidentify", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--key", str(tmp_path / "k")]) == 0
    for path in (tmp_path / "out").rglob("*.dcm"):
        raw = path.read_bytes()
        assert not [d for d in dates if d and d.encode() in raw]
        if shutil.which("dciodvfy"):  # still a valid Enhanced CT image (its technical macros are kept)
            proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
            assert not [l for l in (proc.stdout + proc.stderr).splitlines() if l.startswith("Error")]
    phases = [sorted(s.phase for s in study_inputs(next(iter(scan_studies(tmp_path / d).values())), PhaseRules()))
              for d in ("in", "out")]
    assert phases[0] == phases[1] == ["AP", "NC", "PVP"]
