"""Lesion detector inference: a YOLO checkpoint described by ``weights/detector.manifest.toml``.

Input: windowed (W400/L40) uint8 slices [N, H, W] of one series in slice order; output: per slice a
list of ``Detection`` in input-pixel coordinates. Thresholds, input size and how slices fill the
three input channels (``pipeline.detect.channels``) come from the manifest.
"""
from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.classify.checkpoints import ModelLoadError, sha256_of, weights_file
from pipeline.detect.channels import GREY, PHASE_PAIR, check_mode, neighbour_offset, slice_rgb
from pipeline.detect.offline import configure_ultralytics_offline, restricted_unpickling

log = logging.getLogger(__name__)

MANIFEST_NAME = "detector.manifest.toml"
# ultralytics writes its settings and font here: YOLO_CONFIG_DIR when set (the systemd units point it
# at the state directory, as the install tree is read-only to the service), else the checkout's .yolo
DEFAULT_CONFIG_DIR = Path(__file__).resolve().parents[2] / ".yolo"


def config_dir_default() -> Path:
    return Path(os.environ.get("YOLO_CONFIG_DIR") or DEFAULT_CONFIG_DIR)


class DetectorLoadError(ModelLoadError):
    """Manifest missing/invalid, weights missing, sha256 mismatch, or the checkpoint failed to load."""


@dataclass(frozen=True)
class Detection:
    x1: float
    y1: float
    x2: float
    y2: float
    confidence: float


@dataclass(frozen=True)
class DetectorManifest:
    name: str
    version: str
    sha256: str
    weights: Path
    imgsz: int
    conf: float
    iou: float
    max_det: int
    classes: tuple[str, ...]
    # Hysteresis: boxes down to ``conf`` extend a lesion across slices, but a lesion is kept only
    # when one of its boxes reaches ``lesion_conf`` (defaults to ``conf``: no hysteresis).
    lesion_conf: float = 0.0
    channels: str = GREY  # pipeline.detect.channels mode
    neighbour_mm: float | None = None  # adjacent-slices: z distance of the neighbours it was trained with


def read_manifest(weights_dir: Path) -> DetectorManifest:
    path = Path(weights_dir).resolve() / MANIFEST_NAME
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text())
        return DetectorManifest(
            name=str(raw["name"]), version=str(raw["version"]), sha256=str(raw["sha256"]).lower(),
            weights=weights_file(path.parent, raw["file"], MANIFEST_NAME), imgsz=int(raw["input"]["imgsz"]),
            conf=float(raw["thresholds"]["conf"]), iou=float(raw["thresholds"]["iou"]),
            max_det=int(raw["thresholds"]["max_det"]), classes=tuple(raw.get("classes", ("lesion",))),
            lesion_conf=float(raw["thresholds"].get("lesion_conf", raw["thresholds"]["conf"])),
            channels=check_mode(str(raw["input"].get("channels", GREY))),
            neighbour_mm=float(raw["input"]["neighbour_mm"]) if "neighbour_mm" in raw["input"] else None,
        )
    except OSError as exc:
        raise DetectorLoadError(f"{path}: cannot read manifest: {exc}") from exc
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DetectorLoadError(f"{path}: invalid manifest: {exc!r}") from exc


class LesionDetector:
    def __init__(self, model: Any, manifest: DetectorManifest, device: str, batch_size: int = 16) -> None:
        self._model = model
        self._manifest = manifest
        self._device = device
        self.batch_size = batch_size
        self.half = False  # fp16 inference, used on CUDA only (no fp16 kernels worth having on CPU)

    @classmethod
    def from_manifest(cls, weights_dir: Path, device: str | None = None, batch_size: int = 16,
                      config_dir: Path | None = None, restricted: bool = False) -> LesionDetector:
        """``restricted``: for a file whose sha256 nobody has checked against its source (the manifest then
        only pins what was found), unpickle with ultralytics' weights_only allow-list, so that it can rebuild
        known model classes but never run code."""
        manifest = read_manifest(weights_dir)
        if not manifest.weights.is_file():
            raise DetectorLoadError(f"{manifest.weights}: weights file missing")
        actual = sha256_of(manifest.weights)
        if actual != manifest.sha256:
            raise DetectorLoadError(f"{manifest.weights.name}: sha256 {actual} does not match manifest {manifest.sha256}")
        config_dir = config_dir or config_dir_default()
        try:
            configure_ultralytics_offline(config_dir)
        except OSError as exc:
            raise DetectorLoadError(f"{config_dir}: ultralytics config folder not usable ({exc.__class__.__name__}: "
                                    f"{exc.strerror or exc}); set YOLO_CONFIG_DIR to a writable folder") from None
        import torch  # noqa: PLC0415
        from ultralytics import YOLO  # noqa: PLC0415

        if device is None:
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        try:
            with restricted_unpickling(restricted):
                model = YOLO(str(manifest.weights.resolve()), task="detect")
        except Exception as exc:  # ultralytics raises assorted errors for bad checkpoints
            how = " in restricted mode (known ultralytics model classes only)" if restricted else ""
            raise DetectorLoadError(f"{manifest.weights.name}: load failed{how}: {exc}") from exc
        log.info("loaded %s %s (%s) on %s", manifest.name, manifest.version, manifest.sha256[:12], device)
        return cls(model, manifest, device, batch_size)

    @property
    def name(self) -> str:
        return self._manifest.name

    @property
    def version(self) -> str:
        return self._manifest.version

    @property
    def sha256(self) -> str:
        return self._manifest.sha256

    @property
    def lesion_conf(self) -> float:
        return self._manifest.lesion_conf

    @property
    def device(self) -> str:
        return self._device

    def _precision(self) -> int | None:
        # ultralytics 8.4 replaced `half=` with `quantize=` (half= still works but warns on every call)
        return 16 if self.half and self._device.startswith("cuda") else None

    @property
    def channels(self) -> str:
        return self._manifest.channels

    @property
    def class_names(self) -> dict[int, str]:
        """The checkpoint's own class names (the pipeline takes every box as a lesion)."""
        return dict(getattr(self._model, "names", None) or {})

    @property
    def architecture(self) -> str | None:
        """The stem of the model yaml the checkpoint was built from (e.g. yolov8x), when it says."""
        yaml = getattr(getattr(self._model, "model", None), "yaml", None)
        yaml_file = yaml.get("yaml_file") if isinstance(yaml, dict) else None
        return Path(str(yaml_file)).stem if yaml_file else None

    def detect(self, slices_u8: np.ndarray, slice_spacing_mm: float | None = None,
               partner_u8: np.ndarray | None = None) -> list[list[Detection]]:
        """Detect lesions on windowed uint8 slices [N, H, W] of one series in slice order (or one [H, W]
        slice as N=1; in ``adjacent-slices`` mode it is then its own neighbour). ``slice_spacing_mm``
        picks the neighbours nearest the manifest's ``neighbour_mm`` (adjacent slices when unknown).
        ``partner_u8`` (same shape; ``phase-pair`` mode only, ignored otherwise) is the other contrast
        phase on this grid (``pipeline.detect.partner``); without it the slice stands in for it."""
        arr = np.asarray(slices_u8)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.dtype != np.uint8:
            raise ValueError(f"expected uint8 [N, H, W], got {arr.dtype} {arr.shape}")
        partner = None
        if partner_u8 is not None and self._manifest.channels == PHASE_PAIR:
            partner = np.asarray(partner_u8)
            partner = partner[None] if partner.ndim == 2 else partner
            if partner.shape != arr.shape or partner.dtype != np.uint8:
                raise ValueError(f"partner must be uint8 {arr.shape}, got {partner.dtype} {partner.shape}")
        out: list[list[Detection]] = []
        m = self._manifest
        offset = neighbour_offset(slice_spacing_mm, m.neighbour_mm)
        for start in range(0, arr.shape[0], self.batch_size):
            stop = min(start + self.batch_size, arr.shape[0])
            # ultralytics takes numpy images as BGR
            chunk = [slice_rgb(arr, k, m.channels, offset, partner)[..., ::-1] for k in range(start, stop)]
            results = self._model.predict(chunk, imgsz=m.imgsz, conf=m.conf, iou=m.iou, max_det=m.max_det,
                                          device=self._device, quantize=self._precision(), verbose=False)
            for r in results:
                data = r.boxes.data.detach().cpu().numpy() if r.boxes is not None else np.zeros((0, 6))
                out.append([Detection(float(d[0]), float(d[1]), float(d[2]), float(d[3]), float(d[4])) for d in data])
        return out
