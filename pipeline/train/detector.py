"""Train the phantom lesion detector and write ``weights/detector.pt`` + its manifest.

    python -m pipeline.train.detector --out /tmp/det --cases 24 --seed 1000 --epochs 30 \
        --imgsz 256 --model yolov8n.yaml --time 0.2
"""
from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline.classify.checkpoints import sha256_of
from pipeline.detect.channels import ADJACENT, GREY, MODES, PHASE_PAIR
from pipeline.detect.offline import configure_ultralytics_offline
from pipeline.train.detector_data import ExportOptions, export_dataset
from pipeline.train.hard_negatives import load as load_hard_negatives

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
MODEL_YAMLS = ("yolov8n.yaml", "yolov8s.yaml", "yolov8m.yaml", "yolov8l.yaml", "yolov8x.yaml",
               "yolov8n-p2.yaml", "yolov8s-p2.yaml")  # -p2: extra stride-4 head for lesions under ~10 px


class TrainingError(RuntimeError):
    """Training did not produce usable weights."""


def centre_channel_init(detection_model: torch.nn.Module) -> None:
    """Fold the first convolution's three input-channel weights onto the centre (G) channel.

    A detector trained on grey input saw the same slice in R, G and B, so only the sum of the
    three weights mattered. Folded, the network gives on (k-1, k, k+1), or on (other phase, k,
    other phase), exactly what it gave on (k, k, k): 2.5D or phase-pair fine-tuning then starts
    from the grey detector and learns to use the extra channels, instead of starting from
    untrained per-channel differences.
    """
    conv = next(m for m in detection_model.modules() if isinstance(m, torch.nn.Conv2d))
    if conv.in_channels != 3:
        raise TrainingError(f"first convolution takes {conv.in_channels} channels, expected 3")
    with torch.no_grad():
        total = conv.weight.sum(dim=1)
        conv.weight.zero_()
        conv.weight[:, 1] = total


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_manifest(path: Path, *, weights: Path, arch: str, imgsz: int, seed: int, cases: int, command: str,
                   ultra_version: str, metrics: dict[str, float], epochs_run: int, wall_s: float,
                   max_det: int = 100, train_crop: int | None = None, train_upsample: float = 1.0,
                   train_small_repeats: int = 0, train_hard_negatives: int = 0, val_fraction: float = 0.2,
                   version: str = "0.1.0-phantom", channels: str = GREY, slice_spacing_mm: float = 5.0,
                   single_phase_fraction: float = 0.0, partner_jitter_px: int = 0) -> None:
    crop_lines = []
    if train_crop:
        window = ("native-resolution crops of this size" if train_upsample == 1.0
                  else f"{round(train_crop / train_upsample)}-px native windows upsampled to this size")
        crop_lines = [f"train_crop = {train_crop}  # trained on {window}",
                      *([f"train_upsample = {train_upsample:g}"] if train_upsample != 1.0 else []),
                      *([f"train_small_repeats = {train_small_repeats}  # extra crops per slice placed on a "
                         "lesion box under 16 px"] if train_small_repeats else []),
                      *([f"train_hard_negatives = {train_hard_negatives}  # extra crops centred on a trained "
                         "detector's false boxes (pipeline.train.hard_negatives)"] if train_hard_negatives else [])]
    lines = [
        'name = "liver-lesion-detector"',
        f"version = {_toml_str(version)}",
        'task = "detection"',
        f"architecture = {_toml_str(arch)}",
        'classes = ["lesion"]',
        f"file = {_toml_str(weights.name)}",
        f"sha256 = {_toml_str(sha256_of(weights))}",
        'licence = "AGPL-3.0-or-later (ultralytics); trained on synthetic phantoms only - NOT FOR CLINICAL USE"',
        "",
        "[input]",
        f"imgsz = {imgsz}",
        "window_center = 40",
        "window_width = 400",
        f"channels = {_toml_str(channels)}  # pipeline.detect.channels",
        *([f"neighbour_mm = {slice_spacing_mm:g}  # the training slices' spacing: neighbours are sought this far away"]
          if channels == ADJACENT else []),
        *([f"train_single_phase_fraction = {single_phase_fraction:g}  # series shown without their partner phase",
           f"train_partner_jitter_px = {partner_jitter_px}  # largest random shift of the partner phase"]
          if channels == PHASE_PAIR else []),
        *crop_lines,
        "",
        "[thresholds]",
        "conf = 0.25",
        "iou = 0.5",
        f"max_det = {max_det}",
        "",
        "[training]",
        f"data = {_toml_str(f'pipeline.phantom seed {seed} cases {cases} phases AP,PVP')}",
        f"seed = {seed}",
        f"command = {_toml_str(command)}",
        f"ultralytics_version = {_toml_str(ultra_version)}",
        f"torch_version = {_toml_str(torch.__version__)}",
        f"epochs_run = {epochs_run}",
        f"wall_s = {wall_s:.0f}",
        "",
        f"[metrics]  # ultralytics val split (last {val_fraction:.0%} of cases), at conf 0.001 / iou 0.7 (trainer "
        "defaults)",
        f"val_map50 = {metrics.get('metrics/mAP50(B)', float('nan')):.4f}",
        f"val_map50_95 = {metrics.get('metrics/mAP50-95(B)', float('nan')):.4f}",
        f"val_precision = {metrics.get('metrics/precision(B)', float('nan')):.4f}",
        f"val_recall = {metrics.get('metrics/recall(B)', float('nan')):.4f}",
    ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.train.detector", description=__doc__)
    p.add_argument("--out", type=Path, required=True, help="work dir (dataset, runs)")
    p.add_argument("--cases", type=int, default=40)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--model", default="yolov8n.yaml", choices=MODEL_YAMLS)
    p.add_argument("--time", type=float, default=None, help="wall-time bound in hours (ultralytics time=)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--negatives", type=float, default=0.15)
    p.add_argument("--init", type=Path, default=None,
                   help="continue from this checkpoint (absolute path; architecture from --model still recorded)")
    p.add_argument("--pretrained", type=Path, default=None,
                   help="build --model from its yaml, then copy the layers of this checkpoint that match by name and shape")
    p.add_argument("--freeze", type=int, default=0, help="freeze the first N layers (10 = the YOLOv8 backbone)")
    p.add_argument("--warmup-epochs", type=float, default=3.0)
    p.add_argument("--reuse-data", action="store_true", help="reuse <out>/data if data.yaml exists (same seed/cases)")
    p.add_argument("--weights-dir", type=Path, default=REPO / "weights")
    p.add_argument("--crop", type=int, default=None,
                   help="train on native-resolution crops of this size (then --imgsz is the crop size)")
    p.add_argument("--upsample", type=float, default=1.0,
                   help="with --crop: cut crop/upsample native px and resize them to crop px (train at a larger scale)")
    p.add_argument("--small-repeats", type=int, default=0,
                   help="with --crop: extra training crops per slice placed on a lesion box under 16 px")
    p.add_argument("--hard-negatives", type=Path, default=None,
                   help="with --crop: JSON from pipeline.train.hard_negatives; one more training crop centred on each")
    p.add_argument("--infer-imgsz", type=int, default=None,
                   help="inference size written to the manifest (default: 512 x upsample with --crop, else --imgsz)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--scale", type=float, default=0.5, help="ultralytics scale augmentation (+/- gain)")
    p.add_argument("--hsv-v", type=float, default=0.4, help="ultralytics brightness augmentation")
    p.add_argument("--mosaic", type=float, default=0.1)
    p.add_argument("--optimizer", default="AdamW",
                   help="ultralytics optimizer; 'auto' switches to MuSGD past 10k iterations, "
                        "~5x slower per step on CPU")
    p.add_argument("--lr0", type=float, default=0.002)
    p.add_argument("--version", default="0.1.0-phantom", help="model version written to the manifest")
    p.add_argument("--channels", default=GREY, choices=MODES,
                   help="input channels: the slice in all three (published), slices k-1, k, k+1 (2.5D), "
                        "or the slice with the other phase beside it (phase-pair)")
    p.add_argument("--centre-init", action="store_true",
                   help="with --init from a grey detector: fold its first conv onto the centre channel "
                        "(the start of a 2.5D or phase-pair detector)")
    p.add_argument("--single-phase-fraction", type=float, default=0.2,
                   help="phase-pair: fraction of training series shown without their partner phase")
    p.add_argument("--partner-jitter", type=int, default=2,
                   help="phase-pair: largest random shift (native px) of the partner phase, as misregistration")
    args = p.parse_args(argv)
    if args.init is not None and args.pretrained is not None:
        p.error("--init continues a checkpoint, --pretrained seeds a new architecture: give one")
    if args.centre_init and args.init is None:
        p.error("--centre-init needs --init")
    if (args.upsample != 1.0 or args.small_repeats or args.hard_negatives) and not args.crop:
        p.error("--upsample, --small-repeats and --hard-negatives need --crop")
    for flag, path in (("--init", args.init), ("--pretrained", args.pretrained)):
        if path is not None and (not path.is_absolute() or not path.is_file()):
            raise TrainingError(f"{flag} must be an existing absolute path: {path}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    command = "python -m pipeline.train.detector " + shlex.join(list(argv if argv is not None else sys.argv[1:]))
    out = args.out.resolve()
    configure_ultralytics_offline(REPO / ".yolo")
    import ultralytics  # noqa: PLC0415
    import ultralytics.utils.torch_utils as ultra_torch  # noqa: PLC0415
    from ultralytics import YOLO  # noqa: PLC0415

    ultra_torch.NUM_THREADS = args.threads  # select_device() resets torch threads to cpu_count - 1 otherwise

    t0 = time.monotonic()
    train_imgsz = args.crop or args.imgsz
    export_opts = ExportOptions(seed=args.seed, n_cases=args.cases, imgsz=train_imgsz,
                                negative_fraction=args.negatives, val_fraction=args.val_fraction, crop=args.crop,
                                upsample=args.upsample, small_repeats=args.small_repeats, channels=args.channels,
                                single_phase_fraction=args.single_phase_fraction, partner_jitter_px=args.partner_jitter,
                                hard_negatives=load_hard_negatives(args.hard_negatives) if args.hard_negatives else ())
    infer_imgsz = args.infer_imgsz or (round(512 * args.upsample) if args.crop else args.imgsz)
    if args.reuse_data and (out / "data" / "data.yaml").is_file():
        data_yaml = out / "data" / "data.yaml"
        log.info("reusing %s", data_yaml)
    else:
        data_yaml = export_dataset(out / "data", export_opts).data_yaml
    log.info("dataset ready (%.0f s)", time.monotonic() - t0)
    cuda = torch.cuda.is_available()
    if args.init is not None:
        model = YOLO(str(args.init))
        if args.centre_init:
            centre_channel_init(model.model)  # in place: train() seeds its model from this loaded one
    else:
        model = YOLO(args.model)  # built from the yaml, no download
    train_kw = dict(
        data=str(data_yaml), imgsz=train_imgsz, epochs=args.epochs, batch=args.batch,
        device=0 if cuda else "cpu", workers=8 if cuda else 0, amp=False, plots=False, seed=args.seed,
        deterministic=True, project=str(out / "runs"), name="detector", exist_ok=True, mosaic=args.mosaic,
        scale=args.scale, hsv_v=args.hsv_v, hsv_s=0.0, hsv_h=0.0,  # CT: no hue/saturation (would mix 2.5D channels)
        optimizer=args.optimizer, lr0=args.lr0, fliplr=0.5, close_mosaic=0, patience=100, verbose=True,
        warmup_epochs=args.warmup_epochs, freeze=args.freeze or None,
    )
    if args.pretrained is not None:
        train_kw["pretrained"] = str(args.pretrained)
    if args.time:
        train_kw["time"] = args.time
    t1 = time.monotonic()
    model.train(**train_kw)
    wall = time.monotonic() - t1
    trainer = model.trainer
    best = Path(trainer.best)
    if not best.is_file():
        raise TrainingError(f"no best.pt at {best}")
    args.weights_dir.mkdir(parents=True, exist_ok=True)
    dest = args.weights_dir / "detector.pt"
    shutil.copyfile(best, dest)
    if dest.stat().st_size > 10_000_000:  # final_eval normally strips best.pt already
        from ultralytics.utils.torch_utils import strip_optimizer  # noqa: PLC0415

        strip_optimizer(str(dest))
    metrics = {k: float(v) for k, v in (trainer.metrics or {}).items() if isinstance(v, (int, float))}
    arch = Path(args.model).stem
    write_manifest(args.weights_dir / "detector.manifest.toml", weights=dest, arch=arch, imgsz=infer_imgsz,
                   seed=args.seed, cases=args.cases, command=command, ultra_version=ultralytics.__version__,
                   metrics=metrics, epochs_run=int(trainer.epoch) + 1, wall_s=wall, train_crop=args.crop,
                   train_upsample=args.upsample, train_small_repeats=args.small_repeats,
                   train_hard_negatives=len(export_opts.hard_negatives), val_fraction=args.val_fraction,
                   version=args.version, channels=args.channels, slice_spacing_mm=export_opts.slice_thickness_mm,
                   single_phase_fraction=export_opts.single_phase_fraction,
                   partner_jitter_px=export_opts.partner_jitter_px)
    log.info("wrote %s (%.1f MB), train wall %.0f s, metrics %s", dest, dest.stat().st_size / 1e6, wall, metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
