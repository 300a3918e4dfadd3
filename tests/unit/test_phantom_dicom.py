"""Phantom DICOM output: headers, geometry, timing, labels, encodings, determinism and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage

from pipeline.phantom import (CaseOptions, ContrastPhase, LesionClass, OutputSyntax, WriteOptions, read_labels,
                              render_case, sample_case, write_study)
from pipeline.phantom.cli import main as cli_main
from pipeline.phantom.naming import VENDORS

PHASES = (ContrastPhase.NC, ContrastPhase.AP, ContrastPhase.PVP, ContrastPhase.DELAYED)
OPTIONS = CaseOptions(phases=PHASES, n_slices=6, lesion_classes=(LesionClass.HCC, LesionClass.CYST))
DELAY_RANGE = {ContrastPhase.AP: (15, 45), ContrastPhase.PVP: (50, 100), ContrastPhase.DELAYED: (180, 300)}


def tm_seconds(value: str) -> float:
    return int(value[:2]) * 3600 + int(value[2:4]) * 60 + float(value[4:])


def hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.int32) * int(float(ds.RescaleSlope)) + int(float(ds.RescaleIntercept))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path, dict]:
    case = render_case(sample_case(21, 0, OPTIONS))
    folder = tmp_path_factory.mktemp("phantom") / case.spec.case_id
    write_study(case, folder)
    return case, folder, read_labels(folder / "labels.json")


def read_series(folder: Path) -> dict[str, list[pydicom.Dataset]]:
    out: dict[str, list[pydicom.Dataset]] = {}
    for path in sorted((folder / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        out.setdefault(ds.SeriesInstanceUID, []).append(ds)
    return out


def test_series_headers_and_geometry(written) -> None:  # noqa: ANN001
    case, folder, labels = written
    series = read_series(folder)
    assert set(series) == set(labels["phases"])
    assert {labels["phases"][uid] for uid in series} == {p.value for p in PHASES}
    study_uids = {ds.StudyInstanceUID for group in series.values() for ds in group}
    for_uids = {ds.FrameOfReferenceUID for group in series.values() for ds in group}
    assert study_uids == {labels["study_instance_uid"]} and for_uids == {labels["frame_of_reference_uid"]}
    sops = [ds.SOPInstanceUID for group in series.values() for ds in group]
    assert len(sops) == len(set(sops)) == len(PHASES) * 6
    for uid, group in series.items():
        phase = ContrastPhase(labels["phases"][uid])
        ordered = sorted(group, key=lambda d: float(np.dot(d.ImagePositionPatient, [0, 0, 1])))
        zs = [float(d.ImagePositionPatient[2]) for d in ordered]
        assert np.allclose(np.diff(zs), float(ordered[0].SliceThickness))
        numbers = [int(d.InstanceNumber) for d in ordered]
        assert numbers in (list(range(1, 7)), list(range(6, 0, -1)))
        for k, ds in enumerate(ordered):
            assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert ds.PatientName == case.spec.header.patient_name and ds.PatientID.startswith("PH")
            assert (ds.Rows, ds.Columns) == (512, 512)
            assert np.array_equal(hu(ds), case.volumes[phase][k]), "HU round trip is exact"
        first = ordered[0]
        if phase is ContrastPhase.NC:
            assert "ContrastBolusAgent" not in first
        else:
            assert first.ContrastBolusAgent and first.ContrastBolusRoute == "IV"
            delay = tm_seconds(first.SeriesTime) - tm_seconds(first.ContrastBolusStartTime)
            lo, hi = DELAY_RANGE[phase]
            assert lo <= delay <= hi
            for ds in group:
                assert lo <= tm_seconds(ds.AcquisitionTime) - tm_seconds(first.ContrastBolusStartTime) <= hi + 15


def test_non_contrast_series_is_acquired_before_the_bolus(written) -> None:  # noqa: ANN001
    _case, folder, labels = written
    series = read_series(folder)
    by_phase = {labels["phases"][uid]: group for uid, group in series.items()}
    bolus = tm_seconds(by_phase["AP"][0].ContrastBolusStartTime)
    assert max(tm_seconds(ds.AcquisitionTime) for ds in by_phase["NC"]) < bolus
    starts = [tm_seconds(by_phase[p][0].SeriesTime) for p in ("NC", "AP", "PVP", "DELAYED")]
    assert starts == sorted(starts)


def test_labels_boxes_match_written_instances(written) -> None:  # noqa: ANN001
    case, folder, labels = written
    assert labels["normal"] is False and len(labels["lesions"]) == len(case.lesions) >= 2
    assert {les["class"] for les in labels["lesions"]} == {"HCC", "CYST"}
    sops = {}
    for s in labels["series"]:
        for inst in s["instances"]:
            sops[(s["series_instance_uid"], inst["sop_instance_uid"])] = inst
            assert (folder / "dicom" / inst["path"]).is_file()
    n = 0
    for key, boxes in labels["boxes"].items():
        series_uid, sop_uid, slice_index = key.split("/")
        inst = sops[(series_uid, sop_uid)]
        k = int(slice_index)
        assert inst["slice_index"] == k
        ds = pydicom.dcmread(folder / "dicom" / inst["path"])
        assert ds.SOPInstanceUID == sop_uid
        assert abs(float(ds.ImagePositionPatient[2]) - labels["geometry"]["slice_z_mm"][k]) < 1e-3
        for b in boxes:
            rows, cols = np.nonzero(case.lesion_labels[k] == b["lesion_id"])
            assert (b["x1"], b["y1"], b["x2"], b["y2"]) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            assert b["phase"] == labels["phases"][series_uid]
            n += 1
    per_phase = sum(len(bs) for bs in case.boxes)
    assert n == per_phase * len(PHASES)
    for les in labels["lesions"]:
        assert set(les["contrast_hu"]) == {p.value for p in PHASES}
        assert len(les["centre_mm"]) == 3 and min(les["diameters_mm"]) > 3


def test_same_seed_gives_identical_files_and_uids(tmp_path: Path) -> None:
    options = CaseOptions(n_slices=2, lesion_classes=(LesionClass.FNH,))
    for name in ("a", "b"):
        write_study(render_case(sample_case(4, 3, options)), tmp_path / name)
    write_study(render_case(sample_case(5, 3, options)), tmp_path / "c")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.dcm"))
    assert files_a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.dcm"))
    for rel in files_a:
        da, db = pydicom.dcmread(tmp_path / "a" / rel), pydicom.dcmread(tmp_path / "b" / rel)
        assert da.PixelData == db.PixelData and da.SOPInstanceUID == db.SOPInstanceUID
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert (tmp_path / "a" / "labels.json").read_text() == (tmp_path / "b" / "labels.json").read_text()
    other = {pydicom.dcmread(p).StudyInstanceUID for p in (tmp_path / "c").rglob("*.dcm")}
    assert other.isdisjoint({pydicom.dcmread(tmp_path / "a" / files_a[0]).StudyInstanceUID})


@pytest.mark.parametrize("syntax", [OutputSyntax.RLE, OutputSyntax.J2K])
def test_compressed_output_decodes_to_the_same_hu(tmp_path: Path, syntax: OutputSyntax) -> None:
    case = render_case(sample_case(9, 0, CaseOptions(n_slices=2, lesion_classes=())))
    labels = write_study(case, tmp_path, WriteOptions(syntax=syntax))
    for s in labels.series:
        for inst in s.instances:
            ds = pydicom.dcmread(tmp_path / "dicom" / inst.path)
            assert ds.file_meta.TransferSyntaxUID.is_compressed
            assert ds.file_meta.TransferSyntaxUID == s.transfer_syntax_uid
            assert np.array_equal(hu(ds), case.volumes[s.phase][inst.slice_index])


@pytest.mark.parametrize("syntax", [OutputSyntax.EXPLICIT, OutputSyntax.J2K])
def test_enhanced_ct_multiframe(tmp_path: Path, syntax: OutputSyntax) -> None:
    case = render_case(sample_case(2, 0, CaseOptions(n_slices=4, lesion_classes=(LesionClass.MET,))))
    labels = write_study(case, tmp_path, WriteOptions(syntax=syntax, enhanced=True))
    files = sorted((tmp_path / "dicom").rglob("*.dcm"))
    assert len(files) == len(labels.series) == 3
    for s in labels.series:
        ds = pydicom.dcmread(tmp_path / "dicom" / s.instances[0].path)
        assert ds.SOPClassUID == EnhancedCTImageStorage and int(ds.NumberOfFrames) == 4
        arr = ds.pixel_array
        pvt = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
        for inst in s.instances:
            frame = ds.PerFrameFunctionalGroupsSequence[inst.frame_index]
            z = float(frame.PlanePositionSequence[0].ImagePositionPatient[2])
            assert abs(z - case.spec.geometry.z_mm(inst.slice_index)) < 1e-3
            values = arr[inst.frame_index].astype(np.int32) + int(float(pvt.RescaleIntercept))
            assert np.array_equal(values, case.volumes[s.phase][inst.slice_index])
        assert len({i.sop_instance_uid for i in s.instances}) == 1
    keys = {b.key for b in labels.boxes}
    assert all(k.count("/") == 2 for k in keys)


def test_series_descriptions_vary_across_cases() -> None:
    descriptions = {p: set() for p in PHASES}
    for i in range(40):
        spec = sample_case(0, i, CaseOptions(phases=PHASES, n_slices=1, lesion_classes=()))
        for acq in spec.acquisitions:
            descriptions[acq.phase].add(acq.series_description)
    for phase, names in descriptions.items():
        assert len(names) >= 5, (phase, names)
    known = {d.format(thk="") for v in VENDORS for ds in v.descriptions.values() for d in ds}
    assert any("Arterial" in d or "ART" in d for d in descriptions[ContrastPhase.AP])
    assert known


def test_cli_writes_studies_and_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["--out", str(tmp_path), "--cases", "2", "--seed", "3", "--slices", "2", "--phases", "NC,AP,PVP",
                   "--lesion", "HEM", "--syntax", "rle", "--log-level", "WARNING"])
    assert rc == 0
    assert "wrote 2 studies, 12 images" in capsys.readouterr().out
    index = json.loads((tmp_path / "index.json").read_text())
    assert [s["case_id"] for s in index["studies"]] == ["PH0001", "PH0002"]
    for s in index["studies"]:
        labels = read_labels(tmp_path / s["labels"])
        assert {les["class"] for les in labels["lesions"]} == {"HEM"}
        assert sorted(labels["phases"].values()) == ["AP", "NC", "PVP"]
    assert len(list(tmp_path.rglob("*.dcm"))) == 12


def test_cli_rejects_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--out", str(tmp_path), "--lesion", "XYZ"]) == 2
    assert cli_main(["--out", str(tmp_path), "--phases", "NC,FOO"]) == 2
    assert cli_main(["--out", str(tmp_path), "--cases", "0"]) == 2
    assert cli_main(["--help"]) == 0
    capsys.readouterr()
