"""Manifests for the published LiLNet weights (Zenodo record 12646854), so the node loads them like its own.

The node loads models only through manifests (``detector.manifest.toml``, ``classifiers.manifest.toml``)
that pin each file's sha256. ``write_published_manifests`` writes both next to the four Zenodo files
with the published settings (``../shared/docs/lilnet-reference.md`` A1-A4, beside the repository).
No verifier manifest is written: the analyzer runs without one, reporting on the detector's confidence alone.

The hashes are taken from the files as found, so they only pin what the operator downloaded; the
manifests say so, and carry the md5 too because that is what the Zenodo record lists.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import tomllib
from pathlib import Path

from pipeline.classify.checkpoints import ModelLoadError, load_lilnet_checkpoint, sha256_of
from pipeline.classify.classifier import MANIFEST_NAME as CLASSIFIERS_MANIFEST, TASK_CLASSES
from pipeline.detect.detector import (MANIFEST_NAME as DETECTOR_MANIFEST, DetectorLoadError, LesionDetector,
                                      read_manifest)

ZENODO_RECORD = "12646854"
VERSION = f"lilnet-zenodo-{ZENODO_RECORD}"
DETECTOR_FILE = "best.pt"
CLASSIFIER_FILES = {"bm": "Time_BM.pth.tar", "benign": "Time_B.pth.tar", "malignant": "Time_M.pth.tar"}
LICENCE = (f"academic-use licence of the LiLNet authors (Zenodo record {ZENODO_RECORD}); not redistributable: "
           "do not ship these files or copies of them")
_HASH_NOTE = (f"# sha256 and md5 were recorded from the files as found in this folder, not checked against any "
              f"source:\n# compare each md5 with the one Zenodo record {ZENODO_RECORD} lists before using them.\n")


def _md5_of(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def _q(value: object) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _detector_text(sha256: str, md5: str, architecture: str, names: object) -> str:
    return (
        f"# Published LiLNet lesion detector (YOLOv8x), written by `liver-node published-weights`.\n{_HASH_NOTE}"
        f'name = "lilnet-detector"\nversion = "{VERSION}"\ntask = "detection"\n'
        f"architecture = {_q(architecture)}  # from the checkpoint's model yaml\n"
        f'classes = ["lesion"]  # checkpoint class names: {json.dumps(names)}\n'
        f'file = "{DETECTOR_FILE}"\nsha256 = "{sha256}"\nmd5 = "{md5}"\nlicence = {_q(LICENCE)}\n\n'
        # Published inference: one grey slice in all three channels, 512 px, conf 0.25, NMS IoU 0.5,
        # ultralytics' default max_det. W400/L40 is the node's window; the LiLNet code states none.
        '[input]\nimgsz = 512\nwindow_center = 40\nwindow_width = 400\nchannels = "RGB"\n\n'
        "[thresholds]  # as published; no lesion_conf: a lesion is kept from conf\n"
        "conf = 0.25\niou = 0.5\nmax_det = 300\n"
    )


def _classifiers_text(digests: dict[str, tuple[str, str]]) -> str:
    parts = [f"# Published LiLNet classifiers (ResNet50), written by `liver-node published-weights`.\n{_HASH_NOTE}"]
    for key, file in CLASSIFIER_FILES.items():
        sha256, md5 = digests[file]
        classes = ", ".join(_q(c) for c in TASK_CLASSES[key])
        parts.append(
            f'\n[{key}]\nname = "{file}"\nversion = "{VERSION}"\ntask = "{key}"\narchitecture = "lilnet-resnet50"\n'
            f'depth = "resnet50"\nclasses = [{classes}]\nfile = "{file}"\nsha256 = "{sha256}"\nmd5 = "{md5}"\n'
            f"licence = {_q(LICENCE)}\n\n"
            f'[{key}.input]  # LiLNet test transform: grey crop x3, 224x224, normalised to [-1, 1]\n'
            'size = [224, 224]\nmode = "grey"\nnormalise_mean = [0.5, 0.5, 0.5]\nnormalise_std = [0.5, 0.5, 0.5]\n'
        )
    return "".join(parts)


def _check_classifier(key: str, path: Path, sha256: str) -> None:
    # No expected sha256: the restricted (weights_only) unpickle only. A hash taken from the file itself
    # proves nothing, so it must not unlock the loader's full unpickle of an unverified download.
    loaded = load_lilnet_checkpoint(path, None, depth="resnet50")
    want = len(TASK_CLASSES[key])
    if loaded.n_classes != want:
        raise ModelLoadError(f"{path.name}: has {loaded.n_classes} classes, but the {key} model "
                             f"({'/'.join(TASK_CLASSES[key])}) has {want}; is it another task's file?")
    if loaded.sha256 != sha256:
        raise ModelLoadError(f"{path.name}: changed while it was being checked")


def _check_detector(folder: Path, sha256: str, md5: str) -> str:
    """Load best.pt through the node's own loader, from a staging folder holding a link to it and the
    manifest, so nothing is written beside the weights before they have loaded; return the final text."""
    with tempfile.TemporaryDirectory(prefix="published-weights-") as tmp:
        staging = Path(tmp)
        os.symlink((folder / DETECTOR_FILE).resolve(), staging / DETECTOR_FILE)
        (staging / DETECTOR_MANIFEST).write_text(_detector_text(sha256, md5, "yolov8x", {}), encoding="utf-8")
        # offline ultralytics; restricted unpickling: the sha256 was taken from the file, so it proves nothing
        detector = LesionDetector.from_manifest(staging, device="cpu", restricted=True)
        names = detector.class_names
        if len(names) != 1:  # every box is taken as a lesion: a COCO yolov8x.pt would report 80 kinds
            raise DetectorLoadError(f"{DETECTOR_FILE}: has {len(names)} classes, the lesion detector has 1; "
                                    "is it the yolov8x.pt initial weights?")
        text = _detector_text(sha256, md5, detector.architecture or "yolov8x", names)
        (staging / DETECTOR_MANIFEST).write_text(text, encoding="utf-8")
        read_manifest(staging)  # the final text still parses as the loader reads it
    return text


def write_published_manifests(folder: Path, *, force: bool = False) -> list[Path]:
    """Check the four Zenodo files in ``folder`` load as the node needs, then write ``detector.manifest.toml``
    and ``classifiers.manifest.toml`` beside them; return their paths. Raises ModelLoadError (or its
    DetectorLoadError) for a missing or unusable file and FileExistsError for an existing manifest without
    ``force``; on any error nothing is written."""
    folder = Path(folder)
    names = [DETECTOR_FILE, *CLASSIFIER_FILES.values()]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:  # all four: the analyzer needs a detector and all three classifiers
        raise ModelLoadError(f"{folder}: missing {', '.join(missing)} (the Zenodo record {ZENODO_RECORD} "
                             f"files {', '.join(names)} are all needed)")
    targets = [folder / DETECTOR_MANIFEST, folder / CLASSIFIERS_MANIFEST]
    existing = [t.name for t in targets if t.exists()]
    if existing and not force:
        raise FileExistsError(f"{folder}: {', '.join(existing)} already there; pass --force (force=True) to replace")

    digests = {n: (sha256_of(folder / n), _md5_of(folder / n)) for n in names}
    for key, file in CLASSIFIER_FILES.items():
        _check_classifier(key, folder / file, digests[file][0])
    texts = {targets[0]: _check_detector(folder, *digests[DETECTOR_FILE]),
             targets[1]: _classifiers_text(digests)}
    tomllib.loads(texts[targets[1]])  # our own template: a slip here must not reach the folder

    # Both to temporary names first, then renamed: a failed write leaves no half manifest.
    tmps: dict[Path, Path] = {}
    try:
        for target, text in texts.items():
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
            tmps[target] = Path(name)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(name, 0o644)  # mkstemp makes it 0600; the node may run as another user
        for target, tmp in tmps.items():
            os.replace(tmp, target)
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
    return targets
