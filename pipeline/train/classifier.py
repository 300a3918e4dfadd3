"""Train the three LiLNet lesion classifiers (BM, B, M) on phantom crops and write the manifest.

    python -m pipeline.train.classifier --out DIR --cases-per-class K --seed S --epochs E --depth resnet18

Loss per batch (docs/lilnet-reference.md A1): cross-entropy over the 5N joint labels
(target ``c*5 + j`` for row ``b*5 + j``) on both masked heads ``x`` and ``x3``, plus the
self-distillation head ``fc_SD`` distilled from the (detached) AG logits with temperature
T=3 (KL divergence, scaled by T^2). Held-out evaluation uses cases of a different phantom
seed, per crop (AG argmax) and per lesion (mean AG logits over the lesion's AP+PVP crops,
then argmax), measured on the model *reloaded from the saved file* (so the numbers describe
the committed, possibly reduced-precision, weights). ``--paired`` trains on (AP, PVP) phase pairs
of each lesion slice instead of single-phase crops (manifest ``mode = "phase-pair"``).
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.classify.checkpoints import CheckpointMetadata, load_lilnet_checkpoint, save_lilnet_checkpoint
from pipeline.classify.classifier import ag_logits
from pipeline.classify.lilnet import N_TRANSFORMS, LiLNet, aggregate_ag
from pipeline.classify.preprocess import GREY, PHASE_PAIR, classifier_input
from pipeline.phantom import LesionClass
from pipeline.train.classifier_data import ALL_CLASSES, TASKS, cached_crops

log = logging.getLogger(__name__)

SD_TEMPERATURE = 3.0
VERSION = "0.2.0-phantom"
LICENCE = "AGPL-3.0-or-later; trained on synthetic phantoms only - NOT FOR CLINICAL USE"
FILES = {"bm": "classifier-bm.pth.tar", "benign": "classifier-benign.pth.tar",
         "malignant": "classifier-malignant.pth.tar", "lesion": "verifier.pth.tar"}
NAMES = {"bm": "lilnet-bm", "benign": "lilnet-benign", "malignant": "lilnet-malignant", "lesion": "lesion-verifier"}
CROP_POLICY = ("224x224 crop centred on the detector box (crop_around_box, default margin; boxes larger "
               "than the crop are cut larger and resized); training used ground-truth boxes jittered by "
               "up to 15% centre shift and 0.85-1.2 scale; lesion cross-sections < 8 px skipped; AP and "
               "PVP crops classified independently, AG logits averaged per lesion")
PAIR_CROP_POLICY = ("224x224 windows centred on the detector box in its phase and on the same patient position "
                    "in the other phase (nearest slice), stacked as one (AP, PVP) sample; training used "
                    "ground-truth boxes jittered as for grey crops, the PVP window moved by up to 3 px, and "
                    "single_phase_fraction of the pairs replaced by one phase twice; AG logits averaged per lesion")
GREY_COLOUR = "RGB from W400/L40 grey (three copies)"
PAIR_COLOUR = "R = AP, G = PVP, B = their mean, each W400/L40 (one phase twice when the other is missing)"


def joint_targets(labels: Tensor) -> Tensor:
    """Class c of sample b -> targets c*5+j for rows b*5+j."""
    return (labels[:, None] * N_TRANSFORMS + torch.arange(N_TRANSFORMS, device=labels.device)).reshape(-1)


def lilnet_loss(model: LiLNet, inputs: Tensor, labels: Tensor, temperature: float = SD_TEMPERATURE,
                class_weights: Tensor | None = None) -> Tensor:
    x, x3, x_sd = model(inputs)
    tgt = joint_targets(labels)
    # joint label c*5+j carries class c's weight
    weight = None if class_weights is None else torch.repeat_interleave(class_weights, N_TRANSFORMS)
    loss = F.cross_entropy(x, tgt, weight=weight) + F.cross_entropy(x3, tgt, weight=weight)
    if x_sd is not None:
        teacher = aggregate_ag(x, x3).detach()
        loss = loss + F.kl_div(F.log_softmax(x_sd / temperature, dim=1), F.softmax(teacher / temperature, dim=1),
                               reduction="batchmean") * temperature ** 2
    return loss


def augment(crops_u8: np.ndarray, rng: np.random.Generator, single_phase: float = 0.0) -> np.ndarray:
    """Random flips, 90-degree rotations and small intensity jitter, per crop (uint8 in, uint8 out).

    Phase pairs [M, 2, H, W] get the same transform on both phases; with probability
    ``single_phase`` a pair becomes one of its phases twice, as a lesion in a one-phase study is given.
    """
    out = np.empty_like(crops_u8)
    for i, crop in enumerate(crops_u8):
        c = np.rot90(crop, int(rng.integers(4)), axes=(-2, -1))
        if rng.random() < 0.5:
            c = c[..., ::-1]
        if c.ndim == 3 and rng.random() < single_phase:
            c = c[[int(rng.integers(2))] * 2]
        scale, offset = rng.uniform(0.92, 1.08), rng.uniform(-8, 8)
        out[i] = np.clip(c.astype(np.float32) * scale + offset, 0, 255).astype(np.uint8)
    return out


def train_step(model: LiLNet, optimizer: torch.optim.Optimizer, crops_u8: np.ndarray, labels: np.ndarray,
               device: str, class_weights: Tensor | None = None) -> float:
    model.train()
    inputs = classifier_input(crops_u8).to(device)
    loss = lilnet_loss(model, inputs, torch.as_tensor(labels, dtype=torch.long, device=device),
                       class_weights=class_weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def accuracies(logits: np.ndarray, labels: np.ndarray, lesions: np.ndarray) -> tuple[float, float, int]:
    """(per-crop accuracy, per-lesion accuracy, number of lesions)."""
    crop_acc = float((logits.argmax(1) == labels).mean())
    keys = np.unique(lesions)
    hits = [int(logits[lesions == k].mean(0).argmax() == labels[lesions == k][0]) for k in keys]
    return crop_acc, float(np.mean(hits)), len(keys)


def reduce_precision(model: LiLNet, dtype: torch.dtype) -> None:
    """Cast floating parameters and buffers in place (for a smaller file); the loader copies them back to fp32."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            t.data = t.data.to(dtype)


HEAD_PREFIXES = ("fc3.", "fc.", "fc_SD.")  # their shapes depend on the class count


def init_backbone(model: LiLNet, path: Path) -> None:
    """Start from another LiLNet checkpoint's backbone and fc_ens (transfer), keeping fresh class heads."""
    source = load_lilnet_checkpoint(path, None, depth=model.depth).model.float().state_dict()
    keep = {k: v for k, v in source.items() if not k.startswith(HEAD_PREFIXES)}
    missing, unexpected = model.load_state_dict(keep, strict=False)
    if unexpected or any(not k.startswith(HEAD_PREFIXES) for k in missing):
        raise ValueError(f"{path}: backbone does not fit (missing {missing[:4]}, unexpected {unexpected[:4]})")
    log.info("initialised backbone from %s (%d tensors)", path, len(keep))


def train_task(task: str, train, test, args, device: str, out: Path) -> dict:
    rng = np.random.default_rng([args.seed, list(TASKS).index(task)])
    torch.manual_seed(args.seed)
    crops, labels, _ = train.for_task(task)
    tcrops, tlabels, tlesions = test.for_task(task)
    n = len(TASKS[task])
    class_weights = None
    if args.balance:  # inverse frequency: metastases come 2-5 per case and would dominate otherwise
        counts = np.bincount(labels, minlength=n).astype(np.float64)
        class_weights = torch.as_tensor(counts.sum() / (n * np.maximum(counts, 1)), dtype=torch.float32,
                                        device=device)
    model = LiLNet(n, depth=args.depth, with_sd_head=True, width=args.width)
    if args.init_backbone:
        init_backbone(model, args.init_backbone)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * int(np.ceil(len(crops) / args.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=max(steps, 1))
    t0 = time.time()
    for epoch in range(args.epochs):
        order = rng.permutation(len(crops))
        losses = []
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            if len(idx) < 2:
                continue
            losses.append(train_step(model, optimizer, augment(crops[idx], rng, args.single_phase), labels[idx], device,
                                     class_weights))
            sched.step()
        log.info("task=%s epoch=%d loss=%.4f elapsed=%.0fs", task, epoch, np.mean(losses), time.time() - t0)
    fp32 = accuracies(ag_logits(model, tcrops, device), tlabels, tlesions)
    model = model.cpu()
    reduce_precision(model, getattr(torch, args.weight_dtype))
    path = out / FILES[task]
    sha = save_lilnet_checkpoint(model, path, CheckpointMetadata(epoch=args.epochs, auc=None, acc=None))
    loaded = load_lilnet_checkpoint(path, sha, depth=args.depth).model.to(device)
    crop_acc, lesion_acc, n_les = accuracies(ag_logits(loaded, tcrops, device), tlabels, tlesions)
    log.info("task=%s held-out crop_acc=%.3f lesion_acc=%.3f (fp32 before save %.3f/%.3f) lesions=%d crops=%d",
             task, crop_acc, lesion_acc, fp32[0], fp32[1], n_les, len(tlabels))
    return {"task": task, "sha256": sha, "file": FILES[task], "crop_acc": crop_acc, "lesion_acc": lesion_acc,
            "crop_acc_fp32": fp32[0], "lesion_acc_fp32": fp32[1], "n_lesions": n_les, "n_crops": len(tlabels),
            "n_train": len(labels), "train_s": round(time.time() - t0, 1), "size": path.stat().st_size}


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def checkpoint_lines(args, classes, r: dict, command: str) -> list[str]:
    """The manifest lines that describe one trained LiLNet file (shared by the classifiers and the verifier)."""
    return [
        f"architecture = {_q('lilnet-' + args.depth)}",
        f"depth = {_q(args.depth)}",
        f"width = {args.width}  # backbone base width (torchvision: 64); the loader reads it from conv1",
        "classes = [" + ", ".join(_q(c) for c in classes) + "]",
        f"file = {_q(r['file'])}",
        f"sha256 = {_q(r['sha256'])}",
        f"stored_dtype = {_q(args.weight_dtype)}",
        f"licence = {_q(LICENCE)}",
        f"training_seed = {args.seed}",
        f"command = {_q(command)}",
    ]


def write_manifest(out: Path, results: list[dict], args, command: str) -> Path:
    lines = ["# LiLNet-architecture lesion classifiers trained on synthetic phantoms (pipeline.train.classifier).", ""]
    for r in results:
        task = r["task"]
        lines += [
            f"[{task}]",
            f"name = {_q(NAMES[task])}",
            f"version = {_q(VERSION)}",
            f"task = {_q(task)}",
            *checkpoint_lines(args, TASKS[task], r, command),
            "",
            f"[{task}.input]",
            "size = [224, 224]",
            f"mode = {_q(PHASE_PAIR if args.paired else GREY)}",
            f"colour = {_q(PAIR_COLOUR if args.paired else GREY_COLOUR)}",
            "normalise_mean = [0.5, 0.5, 0.5]",
            "normalise_std = [0.5, 0.5, 0.5]",
            f"crop_policy = {_q(PAIR_CROP_POLICY if args.paired else CROP_POLICY)}",
            "",
            f"[{task}.training_data]",
            'source = "pipeline.phantom (AP+PVP, 40 slices x 5 mm)"',
            f"phantom_seed = {args.data_seed}",
            f"cases = {args.cases_per_class * len(args.classes)}",
            f"cases_per_class = {args.cases_per_class}",
            "classes = [" + ", ".join(_q(c.value) for c in args.classes) + "]",
            f"class_balanced_loss = {'true' if args.balance else 'false'}",
            f"initial_backbone = {_q(args.init_backbone.name if args.init_backbone else 'random (torchvision init)')}",
            f"max_slices_per_lesion_phase = {args.max_slices}",
            f"single_phase_fraction = {args.single_phase if args.paired else 0.0}",
            f"train_crops = {r['n_train']}",
            f"epochs = {args.epochs}",
            "",
            f"[{task}.held_out]",
            f"phantom_seed = {args.test_seed}",
            f"cases = {args.test_cases_per_class * 6}",
            f"crops = {r['n_crops']}",
            f"lesions = {r['n_lesions']}",
            f"crop_accuracy = {r['crop_acc']:.4f}",
            f"lesion_accuracy = {r['lesion_acc']:.4f}",
            "",
        ]
    path = out / "classifiers.manifest.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.train.classifier", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="weights directory to write")
    p.add_argument("--cases-per-class", type=int, default=6)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--data-seed", type=int, default=2000, help="phantom seed of the training cases")
    p.add_argument("--test-seed", type=int, default=3000, help="phantom seed of the held-out cases")
    p.add_argument("--test-cases-per-class", type=int, default=2)
    p.add_argument("--max-slices", type=int, default=2, help="slices per lesion per phase")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--depth", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    p.add_argument("--width", type=int, default=64, help="backbone base width (64 = torchvision)")
    p.add_argument("--weight-dtype", default="float16", choices=["float32", "float16", "bfloat16", "float8_e4m3fn"])
    p.add_argument("--cache", type=Path, default=Path("/tmp/classifier-crops"))
    p.add_argument("--tasks", default="bm,benign,malignant")
    p.add_argument("--classes", default=ALL_CLASSES, type=lambda s: tuple(LesionClass(c) for c in s.split(",")),
                   help="lesion classes of the rendered training cases (e.g. HCC,ICC,MET for the malignant task)")
    p.add_argument("--init-backbone", type=Path, default=None,
                   help="LiLNet checkpoint whose backbone starts training (e.g. the trained BM model)")
    p.add_argument("--balance", action="store_true", help="inverse-frequency class weights in the loss")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--paired", action="store_true",
                   help="phase-pair input: AP and PVP of one lesion slice in one sample (manifest mode phase-pair)")
    p.add_argument("--single-phase", type=float, default=0.2,
                   help="with --paired: fraction of training pairs given as one phase twice")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    command = "python -m pipeline.train.classifier " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    t0 = time.time()
    extra = {} if args.classes == ALL_CLASSES else {"classes": args.classes}
    if args.paired:
        extra["paired"] = True
    train = cached_crops(args.cache, args.data_seed, args.cases_per_class, max_slices=args.max_slices, **extra)
    test = cached_crops(args.cache, args.test_seed, args.test_cases_per_class, max_slices=args.max_slices,
                        jitter=True, **({"paired": True} if args.paired else {}))
    log.info("data train=%d test=%d crops in %.0fs", len(train), len(test), time.time() - t0)
    args.out.mkdir(parents=True, exist_ok=True)
    results = [train_task(t, train, test, args, device, args.out) for t in args.tasks.split(",")]
    path = write_manifest(args.out, results, args, command)
    for r in results:
        log.info("RESULT %s", r)
    log.info("manifest=%s total_wall=%.0fs", path, time.time() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
