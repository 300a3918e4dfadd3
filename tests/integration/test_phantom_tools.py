"""Phantom files checked by independent DICOM tools: dciodvfy (dicom3tools), dcmdump (DCMTK), SimpleITK.

Every written instance, in every encoding and in Enhanced CT, must pass ``dciodvfy`` with no
errors, and the tools must read the pixels back to the phantom's HU exactly.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.phantom import (Case, CaseOptions, ContrastPhase, LesionClass, OutputSyntax, StudyLabels, WriteOptions,
                              render_case, sample_case, write_study)

PHASES = (ContrastPhase.NC, ContrastPhase.AP, ContrastPhase.PVP, ContrastPhase.DELAYED)
VARIANTS = {
    "explicit": WriteOptions(OutputSyntax.EXPLICIT),
    "rle": WriteOptions(OutputSyntax.RLE),
    "j2k": WriteOptions(OutputSyntax.J2K),
    "enhanced": WriteOptions(OutputSyntax.EXPLICIT, enhanced=True),
    "enhanced-j2k": WriteOptions(OutputSyntax.J2K, enhanced=True),
}


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Case, Path, StudyLabels]]:
    root = tmp_path_factory.mktemp("phantom-tools")
    out = {}
    for i, (name, options) in enumerate(VARIANTS.items()):
        # different cases cover both pixel representations / intercepts and instance orders
        case = render_case(sample_case(30 + i, i, CaseOptions(phases=PHASES, n_slices=3,
                                                              lesion_classes=(LesionClass.ICC,))))
        folder = root / name
        out[name] = (case, folder, write_study(case, folder, options))
    return out


def _files(folder: Path) -> list[Path]:
    files = sorted((folder / "dicom").rglob("*.dcm"))
    assert files
    return files


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dciodvfy_reports_no_errors(studies, variant: str) -> None:  # noqa: ANN001
    _case, folder, _labels = studies[variant]
    for path in _files(folder):
        proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        report = proc.stdout + proc.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, f"{path}:\n" + "\n".join(errors)
        expected = "EnhancedCTImage" if VARIANTS[variant].enhanced else "CTImage"
        assert expected in report.split()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dcmdump_reads_every_file(studies, variant: str) -> None:  # noqa: ANN001
    _case, folder, _labels = studies[variant]
    for path in _files(folder):
        proc = subprocess.run(["dcmdump", "-q", "+P", "0020,000d", "+P", "0008,103e", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "StudyInstanceUID" in proc.stdout
        assert "E:" not in proc.stderr and "W:" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("variant", ["explicit", "rle", "j2k"])
def test_simpleitk_series_reader_gives_phantom_hu(studies, variant: str) -> None:  # noqa: ANN001
    case, folder, labels = studies[variant]
    g = case.spec.geometry
    for series in labels.series:
        series_dir = folder / "dicom" / Path(series.instances[0].path).parent
        reader = sitk.ImageSeriesReader()
        names = reader.GetGDCMSeriesFileNames(str(series_dir), series.series_instance_uid)
        assert len(names) == g.n_slices
        reader.SetFileNames(names)
        image = reader.Execute()
        assert image.GetSize() == (g.cols, g.rows, g.n_slices)
        assert np.allclose(image.GetSpacing(), (g.pixel_spacing_mm, g.pixel_spacing_mm, g.slice_thickness_mm))
        assert np.allclose(image.GetOrigin(), g.position(0), atol=1e-3)
        assert np.array_equal(sitk.GetArrayFromImage(image).astype(np.int32), case.volumes[series.phase])


@pytest.mark.parametrize("variant", ["enhanced", "enhanced-j2k"])
def test_simpleitk_reads_enhanced_ct(studies, variant: str) -> None:  # noqa: ANN001
    case, folder, labels = studies[variant]
    for series in labels.series:
        image = sitk.ReadImage(str(folder / "dicom" / series.instances[0].path))
        array = sitk.GetArrayFromImage(image).astype(np.int32).reshape(-1, case.spec.geometry.rows,
                                                                       case.spec.geometry.cols)
        assert array.shape[0] == case.spec.geometry.n_slices
        for inst in series.instances:
            assert np.array_equal(array[inst.frame_index], case.volumes[series.phase][inst.slice_index])
