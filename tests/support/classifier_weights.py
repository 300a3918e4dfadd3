"""Weights folders of untrained LiLNet classifiers, saved and described exactly as training does."""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.classify.checkpoints import CheckpointMetadata, save_lilnet_checkpoint
from pipeline.classify.lilnet import LiLNet
from pipeline.train.classifier import parse_args, write_manifest
from pipeline.train.classifier_data import TASKS


def write_untrained_classifiers(out: Path, width: int = 16, flags: tuple[str, ...] = ()) -> Path:
    """Three resnet18 LiLNets (seed 0) and their manifest; ``flags`` are trainer flags such as --paired."""
    torch.manual_seed(0)
    results = []
    for task, classes in TASKS.items():
        name = f"classifier-{task}.pth.tar"
        sha = save_lilnet_checkpoint(LiLNet(len(classes), depth="resnet18", width=width), out / name,
                                     CheckpointMetadata(epoch=0, auc=None, acc=None))
        results.append({"task": task, "file": name, "sha256": sha, "n_train": 0, "n_crops": 0, "n_lesions": 0,
                        "crop_acc": 0.0, "lesion_acc": 0.0})
    args = parse_args(["--out", str(out), "--depth", "resnet18", "--width", str(width), "--weight-dtype", "float32",
                       *flags])
    write_manifest(out, results, args, "test fixture: untrained")
    return out
