"""Detectors for tests of how slices reach the network: an untrained YOLOv8n behind a real manifest,
with every image handed to ``predict`` recorded (as ultralytics receives it: BGR)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def write_manifest(d: Path, channels: str, extra: str = "") -> None:
    """A detector manifest for ``d/detector.pt``; ``extra`` lines go in its ``[input]`` table."""
    sha = hashlib.sha256((d / "detector.pt").read_bytes()).hexdigest()
    (d / "detector.manifest.toml").write_text(
        f'name = "t"\nversion = "0"\nfile = "detector.pt"\nsha256 = "{sha}"\n'
        f'[input]\nimgsz = 256\nchannels = "{channels}"\n{extra}[thresholds]\nconf = 0.25\niou = 0.5\nmax_det = 100\n')


def recording_detector(d: Path, channels: str, extra: str = "", batch_size: int = 8):
    """An untrained detector loaded from ``d`` through its manifest, and the list of images it is shown."""
    from pipeline.detect.detector import LesionDetector  # noqa: PLC0415
    from pipeline.detect.offline import configure_ultralytics_offline  # noqa: PLC0415

    configure_ultralytics_offline(REPO / ".yolo")
    from ultralytics import YOLO  # noqa: PLC0415

    YOLO("yolov8n.yaml").save(str(d / "detector.pt"))
    write_manifest(d, channels, extra)
    det = LesionDetector.from_manifest(d, device="cpu", batch_size=batch_size)
    seen: list[np.ndarray] = []
    predict = det._model.predict
    det._model.predict = lambda images, **kw: seen.extend(images) or predict(images, **kw)
    return det, seen
