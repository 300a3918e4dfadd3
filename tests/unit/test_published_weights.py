"""`liver-node published-weights`: manifests for the Zenodo LiLNet files, on real checkpoints (no mocks)."""
from __future__ import annotations

import hashlib
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from node.cli import main
from pipeline.analyzer import Analyzer
from pipeline.classify.checkpoints import ModelLoadError, sha256_of
from pipeline.classify.classifier import LesionClassifier
from pipeline.classify.lilnet import LiLNet
from pipeline.detect.detector import DetectorLoadError, LesionDetector
from pipeline.detect.offline import configure_ultralytics_offline
from pipeline.published import CLASSIFIER_FILES, DETECTOR_FILE, VERSION, write_published_manifests

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = ("detector.manifest.toml", "classifiers.manifest.toml")
N_CLASSES = {"bm": 2, "benign": 3, "malignant": 3}


def _save_published(n_classes: int, path: Path, seed: int) -> None:
    """Exactly the published layout (LiLNet's training scripts): a DataParallel ('module.'-prefixed)
    state_dict with epoch/auc/acc/optimizer. resnet50 at width 8: the published keys, a small file."""
    torch.manual_seed(seed)
    model = LiLNet(n_classes=n_classes, depth="resnet50", with_sd_head=True, width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    torch.save({"epoch": 7, "state_dict": torch.nn.DataParallel(model).state_dict(), "auc": np.float64(0.93),
                "acc": torch.tensor(0.9), "optimizer": optimizer.state_dict()}, path)


def _save_yolo(path: Path, nc: int) -> None:
    """A real (untrained) ultralytics checkpoint, built offline from the yaml."""
    configure_ultralytics_offline(REPO / ".yolo")
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    yolo = YOLO("yolov8n.yaml")
    yolo.model = DetectionModel("yolov8n.yaml", nc=nc, verbose=False)
    yolo.model.names = {i: f"c{i}" for i in range(nc)} if nc > 1 else {0: "0:lesion"}
    yolo.save(str(path))


@pytest.fixture(scope="module")
def zenodo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("zenodo")
    for seed, (key, file) in enumerate(CLASSIFIER_FILES.items()):
        _save_published(N_CLASSES[key], folder / file, seed)
    _save_yolo(folder / DETECTOR_FILE, nc=1)
    return folder


@pytest.fixture
def folder(zenodo: Path, tmp_path: Path) -> Path:
    out = tmp_path / "weights"
    shutil.copytree(zenodo, out)
    return out


def test_written_manifests_load_through_the_node_loaders_like_from_published(folder: Path) -> None:
    written = write_published_manifests(folder)
    assert written == [folder / m for m in MANIFESTS]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*MANIFESTS, DETECTOR_FILE, *CLASSIFIER_FILES.values()])

    det = tomllib.loads(written[0].read_text())
    assert det["version"] == VERSION and det["architecture"] == "yolov8n"  # read from the checkpoint
    assert det["input"] == {"imgsz": 512, "window_center": 40, "window_width": 400, "channels": "RGB"}
    assert (det["thresholds"]["conf"], det["thresholds"]["iou"]) == (0.25, 0.5)
    assert "not redistributable" in det["licence"] and "academic" in det["licence"]
    assert det["md5"] == hashlib.md5((folder / DETECTOR_FILE).read_bytes()).hexdigest()
    assert "compare each md5" in written[0].read_text()
    cls = tomllib.loads(written[1].read_text())
    for key, file in CLASSIFIER_FILES.items():
        assert cls[key]["file"] == file and cls[key]["depth"] == "resnet50" and cls[key]["input"]["mode"] == "grey"
        assert cls[key]["sha256"] == sha256_of(folder / file)

    # The analyzer the node builds from the folder: no verifier manifest, so no verifier.
    analyzer = Analyzer.from_weights(folder, device="cpu")
    assert analyzer.verifier is None
    assert [m.version for m in analyzer.models] == [VERSION] * 4
    detector = LesionDetector.from_manifest(folder, device="cpu")
    assert (detector.version, detector.channels) == (VERSION, "RGB")
    assert len(detector.detect(np.zeros((1, 512, 512), np.uint8))) == 1

    crops = np.random.default_rng(0).integers(0, 256, (2, 224, 224), dtype=np.uint8)
    got = LesionClassifier.from_manifest(folder, device="cpu").logits(crops)
    paths = {k: folder / f for k, f in CLASSIFIER_FILES.items()}
    shas = {k: sha256_of(p) for k, p in paths.items()}
    ref = LesionClassifier.from_published(paths, shas, device="cpu").logits(crops)
    for task in N_CLASSES:
        assert getattr(got, task).shape == (2, N_CLASSES[task])
        np.testing.assert_array_equal(getattr(got, task), getattr(ref, task))


def test_a_missing_file_is_named_and_nothing_is_written(folder: Path, capsys: pytest.CaptureFixture) -> None:
    (folder / "Time_B.pth.tar").unlink()
    with pytest.raises(ModelLoadError, match="missing Time_B.pth.tar") as info:
        write_published_manifests(folder)
    assert "Time_BM" not in str(info.value).split("(")[0]  # only what is missing is named as missing
    assert main(["published-weights", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Time_B.pth.tar" in err
    assert not any((folder / m).exists() for m in MANIFESTS)


def test_a_checkpoint_of_another_task_is_refused(folder: Path) -> None:
    shutil.copy(folder / "Time_M.pth.tar", folder / "Time_BM.pth.tar")  # 3 classes where BM has 2
    with pytest.raises(ModelLoadError, match="Time_BM.pth.tar: has 3 classes.*bm model"):
        write_published_manifests(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([DETECTOR_FILE, *CLASSIFIER_FILES.values()])


def test_a_detector_with_other_classes_is_refused(folder: Path) -> None:
    _save_yolo(folder / DETECTOR_FILE, nc=80)  # e.g. the COCO yolov8x.pt the record also hosts
    with pytest.raises(DetectorLoadError, match="80 classes"):
        write_published_manifests(folder)
    assert not any((folder / m).exists() for m in MANIFESTS)


class _Payload:
    """A pickle that runs a command when loaded: what a tampered download could hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_an_unverified_detector_file_is_never_unpickled_in_full(folder: Path, tmp_path: Path) -> None:
    """The hashes come from the file as found, so they cannot vouch for it: ultralytics' full unpickle
    (which runs code) must not happen before the operator has compared the md5 with Zenodo."""
    marker = tmp_path / "payload-ran"
    torch.save({"model": _Payload(marker)}, folder / DETECTOR_FILE)
    with pytest.raises(DetectorLoadError) as refused:
        write_published_manifests(folder)
    assert not marker.exists()
    assert "restricted mode" in str(refused.value)
    assert not any((folder / m).exists() for m in MANIFESTS)


def test_existing_manifests_are_kept_unless_forced(folder: Path) -> None:
    (folder / MANIFESTS[1]).write_text("# the operator's own\n")
    with pytest.raises(FileExistsError, match="classifiers.manifest.toml"):
        write_published_manifests(folder)
    assert (folder / MANIFESTS[1]).read_text() == "# the operator's own\n"
    assert not (folder / MANIFESTS[0]).exists()
    assert main(["published-weights", str(folder)]) == 1
    write_published_manifests(folder, force=True)
    assert tomllib.loads((folder / MANIFESTS[1]).read_text())["bm"]["version"] == VERSION


def test_cli_prints_each_file_with_its_hashes_and_the_next_step(folder: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["published-weights", str(folder)]) == 0
    out = capsys.readouterr().out
    for name in (DETECTOR_FILE, *CLASSIFIER_FILES.values()):
        data = (folder / name).read_bytes()
        assert (f"{name}: sha256 {hashlib.sha256(data).hexdigest()} md5 {hashlib.md5(data).hexdigest()}"
                in out)
    assert f"liver-node run INPUT --out OUT --weights {folder.resolve()}" in out
    assert f'[pipeline] weights_dir = "{folder.resolve()}"' in out
