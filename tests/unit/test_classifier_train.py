"""Classifier training data, training step, and loading the committed phantom classifier weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.classify.checkpoints import ModelLoadError
from pipeline.classify.classifier import HierarchyLogits, LesionClassifier
from pipeline.classify.lilnet import LiLNet
from pipeline.phantom import LesionClass
from pipeline.train.classifier import joint_targets, lilnet_loss
from pipeline.train.classifier_data import ALL_CLASSES, TASKS, build_crops, task_label

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


def test_task_label_orders_match_reference():
    assert TASKS["bm"] == ("benign", "malignant")
    assert TASKS["benign"] == ("FNH", "HEM", "CYST")
    assert TASKS["malignant"] == ("HCC", "ICC", "MET")
    for i, name in enumerate(TASKS["benign"]):
        assert task_label("benign", LesionClass(name)) == i
        assert task_label("bm", LesionClass(name)) == 0
        assert task_label("malignant", LesionClass(name)) is None
    for i, name in enumerate(TASKS["malignant"]):
        assert task_label("malignant", LesionClass(name)) == i
        assert task_label("bm", LesionClass(name)) == 1
        assert task_label("benign", LesionClass(name)) is None


def test_crop_dataset_labels_follow_forced_classes():
    classes = (LesionClass.HEM, LesionClass.MET)
    data = build_crops(11, 1, max_slices=1, classes=classes)
    assert data.crops.dtype == np.uint8 and data.crops.shape[1:] == (224, 224)
    assert len(data) == len(data.cls) == len(data.lesion) == len(data.phase)
    for case, forced in enumerate(classes):
        sel = data.case == case
        assert np.all(data.cls[sel] == ALL_CLASSES.index(forced))
    assert set(np.unique(data.phase)) <= {0, 1}
    crops, labels, lesions = data.for_task("bm")
    assert len(crops) == len(data)
    assert np.array_equal(labels, (data.cls >= 3).astype(np.int64))
    _, mlabels, _ = data.for_task("malignant")
    assert np.all(mlabels == 2)  # MET
    _, blabels, _ = data.for_task("benign")
    assert np.all(blabels == 1)  # HEM


def test_joint_targets():
    assert joint_targets(torch.tensor([0, 2])).tolist() == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]


def test_training_steps_reduce_loss():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = LiLNet(2, depth="resnet18")
    model.train()
    x = torch.randn(4, 3, 224, 224)
    y = torch.tensor([0, 1, 0, 1])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = lilnet_loss(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0]


@pytest.mark.skipif(not (WEIGHTS / "classifiers.manifest.toml").is_file(), reason="classifier weights not built")
def test_committed_weights_load_and_give_shapes():
    clf = LesionClassifier.from_manifest(WEIGHTS, device="cpu")
    crops = np.random.default_rng(0).integers(0, 256, (3, 224, 224), dtype=np.uint8)
    out = clf.logits(crops, batch_size=2)
    assert isinstance(out, HierarchyLogits)
    assert out.bm.shape == (3, 2) and out.benign.shape == (3, 3) and out.malignant.shape == (3, 3)
    assert np.all(np.isfinite(out.bm))
    assert set(clf.sha256s) == {"bm", "benign", "malignant"}
    assert all(v == "0.1.0-phantom" for v in clf.versions.values())


@pytest.mark.skipif(not (WEIGHTS / "classifiers.manifest.toml").is_file(), reason="classifier weights not built")
def test_manifest_with_wrong_sha256_is_rejected(tmp_path):
    for f in WEIGHTS.glob("classifier-*.pth.tar"):
        (tmp_path / f.name).symlink_to(f)
    text = (WEIGHTS / "classifiers.manifest.toml").read_text()
    clf = LesionClassifier.from_manifest(WEIGHTS, device="cpu")
    good = clf.sha256s["benign"]
    (tmp_path / "classifiers.manifest.toml").write_text(text.replace(good, "0" * 64))
    with pytest.raises(ModelLoadError, match="sha256"):
        LesionClassifier.from_manifest(tmp_path, device="cpu")
