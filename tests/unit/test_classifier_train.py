"""Classifier training data, training step, and loading classifier weights through their manifest."""
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
from tests.support.classifier_weights import write_untrained_classifiers

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
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """A weights folder in the shipped layout: three resnet18 LiLNets saved and described as training does."""
    return write_untrained_classifiers(tmp_path_factory.mktemp("weights"))


def test_manifest_weights_load_and_give_shapes(weights_dir):
    clf = LesionClassifier.from_manifest(weights_dir, device="cpu")
    crops = np.random.default_rng(0).integers(0, 256, (3, 224, 224), dtype=np.uint8)
    out = clf.logits(crops, batch_size=2)
    assert isinstance(out, HierarchyLogits)
    assert out.bm.shape == (3, 2) and out.benign.shape == (3, 3) and out.malignant.shape == (3, 3)
    assert np.all(np.isfinite(out.bm))
    assert set(clf.sha256s) == {"bm", "benign", "malignant"}


def test_manifest_with_wrong_sha256_is_rejected(weights_dir, tmp_path):
    for f in weights_dir.glob("classifier-*.pth.tar"):
        (tmp_path / f.name).symlink_to(f)
    text = (weights_dir / "classifiers.manifest.toml").read_text()
    good = LesionClassifier.from_manifest(weights_dir, device="cpu").sha256s["benign"]
    (tmp_path / "classifiers.manifest.toml").write_text(text.replace(good, "0" * 64))
    with pytest.raises(ModelLoadError, match="sha256"):
        LesionClassifier.from_manifest(tmp_path, device="cpu")


def test_class_weights_shift_the_loss_towards_the_weighted_class():
    torch.manual_seed(0)
    model = LiLNet(3, depth="resnet18", width=8, with_sd_head=False).eval()
    x = torch.randn(4, 3, 224, 224)
    labels = torch.tensor([0, 0, 1, 2])
    with torch.no_grad():
        plain = lilnet_loss(model, x, labels)
        uniform = lilnet_loss(model, x, labels, class_weights=torch.ones(3))
        per_class = [lilnet_loss(model, x[labels == c], labels[labels == c]) for c in range(3)]
        only_2 = lilnet_loss(model, x, labels, class_weights=torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(plain, uniform)
    assert torch.allclose(only_2, per_class[2], atol=1e-5)


def test_classifier_eval_scores_lesions_through_the_hierarchy():
    from pipeline.train.classifier_data import CropSet
    from pipeline.train.classifier_eval import score

    # lesion 7: two HCC crops; lesion 9: one CYST crop that the logits call HEM
    data = CropSet(np.zeros((3, 4, 4), np.uint8), np.array([3, 3, 2]), np.array([7, 7, 9]), np.array([0, 1, 0]),
                   np.array([0, 0, 1]))
    logits = HierarchyLogits(bm=np.array([[0.0, 3.0], [0.0, 1.0], [2.0, 0.0]]),
                             benign=np.array([[0.0, 0.0, 0.0]] * 2 + [[0.0, 2.0, 1.0]]),
                             malignant=np.array([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    s = score(logits, data)
    assert (s["lesions"], s["benign_malignant"], s["six_class"]) == (2, 1.0, 0.5)
    assert s["errors"] == {"CYST->HEM": 1}
    assert score(logits, data, rows=np.array([0, 1]))["six_class"] == 1.0
