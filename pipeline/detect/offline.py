"""Configure ultralytics to never touch the network; call before ``import ultralytics``.

See docs/ultralytics-offline.md: YOLO_OFFLINE stops the import-time DNS probe, YOLO_AUTOINSTALL=0
stops pip installs, a local Arial.ttf stops the font download, and ``settings.update`` disables
sync and the experiment-tracker callbacks.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_FONT_CANDIDATES = (Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),)


class OfflineConfigError(RuntimeError):
    """No TTF font could be installed for ultralytics."""


def _find_font() -> Path:
    try:
        import matplotlib  # noqa: PLC0415

        mpl = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if mpl.is_file():
            return mpl
    except ImportError:
        pass
    for cand in _FONT_CANDIDATES:
        if cand.is_file():
            return cand
    raise OfflineConfigError("no DejaVuSans.ttf found (matplotlib or /usr/share/fonts)")


def configure_ultralytics_offline(config_dir: Path) -> Path:
    """Set env vars, install the font and (if importable) update settings. Idempotent.

    Returns the absolute config dir. Must run before the first ``import ultralytics`` for the
    env vars to take effect on import.
    """
    config_dir = Path(config_dir).resolve()
    ultra_dir = config_dir / "Ultralytics"
    ultra_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    font = ultra_dir / "Arial.ttf"
    if not font.is_file() or font.stat().st_size == 0:
        shutil.copyfile(_find_font(), font)
        log.debug("installed %s", font)
    from ultralytics import settings  # noqa: PLC0415  (env is set now)

    settings.update({
        "sync": False, "clearml": False, "comet": False, "dvc": False, "mlflow": False, "raytune": False,
        "tensorboard": False, "wandb": False,
        "runs_dir": str(config_dir / "runs"), "weights_dir": str(config_dir / "weights"),
        "datasets_dir": str(config_dir / "datasets"),
    })
    return config_dir


@contextlib.contextmanager
def restricted_unpickling(enabled: bool = True) -> Iterator[None]:
    """ultralytics' opt-in restricted loading (its ULTRALYTICS_SAFE_LOAD flag, read once at import) for
    this block only: torch.load(weights_only=True) with ultralytics' allow-list of model classes."""
    if not enabled:
        yield
        return
    from ultralytics.nn import tasks  # noqa: PLC0415 - after configure_ultralytics_offline

    saved = tasks.SAFE_LOAD
    tasks.SAFE_LOAD = True
    try:
        yield
    finally:
        tasks.SAFE_LOAD = saved
