"""The shipped demo weights, end to end through ``Analyzer.run_study``, on freshly generated phantoms.

One clear case per class (a single lesion of at least 20 mm on every axis, chosen from the case
spec before rendering, never from what the model says), from a phantom seed not used in training:
the case class must be right and a reported lesion must sit on the true one. This is a smoke test
of the trained networks, not their accuracy figure (that is ``liver-node evaluate``, in the README).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.analyzer import Analyzer
from pipeline.batch import scan_studies, study_inputs
from pipeline.phases import PhaseRules
from pipeline.phantom import LesionClass
from tests.support.phantoms import write_clear_case

REPO = Path(__file__).resolve().parents[2]
SEED = 7300  # never used by pipeline/train (detector 1000, classifiers 2000/3000) nor the evaluation set


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.from_weights(REPO / "weights", device="cpu")


@pytest.mark.parametrize("cls", list(LesionClass), ids=lambda c: c.value)
def test_clear_case_gets_its_class(analyzer, tmp_path, cls):
    study = write_clear_case(tmp_path, cls, SEED)
    labels = json.loads(study.labels_path.read_text())
    (series,) = scan_studies(study.folder).values()
    result = analyzer.run_study(labels["study_instance_uid"], study_inputs(series, PhaseRules()))

    assert result.status == "ok", result.reason
    assert result.phase_mode == "AP+PVP"
    assert result.case is not None, "no lesion found"
    assert result.case.cls == cls.value, result.case.probabilities
    truth = labels["lesions"][0]
    nearest = min(np.linalg.norm(np.subtract(les.lesion.center_mm, truth["centre_mm"])) for les in result.lesions)
    assert nearest <= max(truth["diameters_mm"]) / 2, f"closest lesion centre {nearest:.1f} mm from the truth"



def test_result_names_every_model_with_its_manifest_version(analyzer):
    import tomllib

    manifests = {p.name: tomllib.loads(p.read_text()) for p in (REPO / "weights").glob("*.manifest.toml")}
    classifiers = manifests["classifiers.manifest.toml"]
    expected = {manifests["detector.manifest.toml"]["name"]: manifests["detector.manifest.toml"]["version"]}
    expected |= {classifiers[k]["name"]: classifiers[k]["version"] for k in ("bm", "benign", "malignant")}
    if "verifier.manifest.toml" in manifests:
        expected[manifests["verifier.manifest.toml"]["name"]] = manifests["verifier.manifest.toml"]["version"]
    assert {m.name: m.version for m in analyzer.models} == expected
    assert all(len(m.sha256) == 64 and int(m.sha256, 16) >= 0 for m in analyzer.models)


def test_lesion_overlays_carry_the_classifier_grad_cam(analyzer, tmp_path):
    """The worker and `liver-node run` hand ``Analyzer.heatmap`` to the result objects: the SC of a
    lesion blends the decided class's Grad-CAM in (and says so), unlike the same SC built without it."""
    import pydicom

    from pipeline.classify.preprocess import crop_around_box
    from pipeline.outputs import write_result_objects

    study = write_clear_case(tmp_path, LesionClass.HCC, SEED)
    labels = json.loads(study.labels_path.read_text())
    (series,) = scan_studies(study.folder).values()
    inputs = study_inputs(series, PhaseRules())
    result = analyzer.run_study(labels["study_instance_uid"], inputs)
    assert result.lesions and analyzer.heatmap is not None
    first = result.lesions[0]
    key = first.lesion.primary.key
    crop = crop_around_box(np.full((256, 256), 100, np.uint8), (key.x1, key.y1, key.x2, key.y2))
    cam = analyzer.heatmap(crop, first.decision)
    assert cam.shape == (224, 224) and 0.0 <= cam.min() and cam.max() <= 1.0

    with_map = write_result_objects(result, inputs, tmp_path / "with", heatmap=analyzer.heatmap)
    without = write_result_objects(result, inputs, tmp_path / "without")
    sc_with, sc_without = (pydicom.dcmread(paths[1]) for paths in (with_map, without))
    assert "heatmap" in sc_with.DerivationDescription and "heatmap" not in sc_without.DerivationDescription
    assert sc_with.SOPInstanceUID == sc_without.SOPInstanceUID  # same result, drawn two ways
    assert np.abs(sc_with.pixel_array.astype(int) - sc_without.pixel_array.astype(int)).sum() > 0
