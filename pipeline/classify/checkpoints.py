"""Load and save LiLNet checkpoints in the published ``Time_{BM,B,M}.pth.tar`` layout.

Layout (``docs/lilnet-reference.md`` A2): a pickled dict ``{'epoch': int, 'state_dict': ...,
'auc': numpy.float64, 'acc': float or tensor, 'optimizer': SGD state_dict}``; the state_dict
was taken from a ``DataParallel`` wrapper, so every key starts with ``module.``.

Security: a ``.pth.tar`` is a pickle. When a sha256 is expected it is checked *before* any
unpickling. Loading first tries ``torch.load(weights_only=True)`` with only the numpy scalar
and dtype globals allow-listed (the published ``auc`` is a numpy.float64); the unrestricted
``weights_only=False`` fallback is used only for a file whose sha256 was verified.

Our own training code saves through ``save_lilnet_checkpoint`` in the same layout, so demo
weights and published weights go through one loader.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.classify.lilnet import DEPTHS, N_TRANSFORMS, LiLNet

log = logging.getLogger(__name__)

DP_PREFIX = "module."
_HEAD_PREFIXES = ("fc.", "fc3.", "fc_ens.", "fc_SD.")
_HASH_CHUNK = 1 << 20


class ModelLoadError(Exception):
    """A checkpoint is missing, unreadable, fails its checksum or does not fit LiLNet."""


@dataclass(frozen=True)
class CheckpointMetadata:
    """Training bookkeeping stored next to the weights (published keys ``epoch/auc/acc``)."""

    epoch: int | None = None
    auc: float | None = None
    acc: float | None = None


@dataclass(frozen=True)
class LoadedClassifier:
    """A LiLNet ready for inference (eval mode, on CPU) plus what the file said about it."""

    model: LiLNet
    n_classes: int
    has_sd_head: bool
    depth: str
    sha256: str
    path: Path
    metadata: CheckpointMetadata
    # Other top-level keys of the file (except state_dict/optimizer), as plain Python values.
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def weights_file(weights_dir: str | os.PathLike[str], name: object, manifest: str) -> Path:
    """A manifest's ``file``: a plain name inside the weights folder (symlinks there are fine), never a
    path that leaves it; only what sits beside the manifests is ever loaded."""
    rel = PurePath(str(name))
    if not str(name) or rel.is_absolute() or ".." in rel.parts:
        raise ModelLoadError(f"{manifest}: file {str(name)!r} must be a name inside the weights folder")
    return Path(weights_dir) / rel


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _numpy_safe_globals() -> list[Any]:
    """Globals a numpy scalar in the pickle needs, under both numpy 1.x and 2.x module names."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 moved numpy.core to numpy._core
    scalar = core.multiarray.scalar
    allowed: list[Any] = [
        # Files written under numpy 1.x name the old path; map it to the same function.
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
    ]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25; BUILD on a dtype checks its class
    if dtypes is not None:
        allowed.extend(
            getattr(dtypes, name)
            for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType")
            if hasattr(dtypes, name)
        )
    return allowed


def _read_checkpoint(path: Path, data: bytes, verified: bool) -> Any:
    """Unpickle the very bytes that were hashed, not the file again (it could change in between)."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refusals surface as UnpicklingError naming the unexpected global.
        if not verified:
            raise ModelLoadError(
                f"{path.name}: restricted (weights_only) load failed ({_first_line(exc)}); a full "
                "load is only allowed for a file whose expected sha256 is given and matches"
            ) from exc
        log.warning("checkpoint=%s event=restricted_load_refused fallback=full_unpickle reason=%r",
                    path.name, _first_line(exc))
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path.name}: not a readable torch checkpoint: {_first_line(exc)}") from exc
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
            AttributeError, ImportError) as exc:
        raise ModelLoadError(f"{path.name}: full load failed: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars -> Python numbers where they hold one value; else as is."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.item()
    return value


def _optional_float(value: Any, key: str, path: Path) -> float | None:
    value = _plain(value)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    log.warning("checkpoint=%s event=metadata_not_numeric key=%s type=%s", path.name, key, type(value).__name__)
    return None


def _strip_prefix(state_dict: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    keys = list(state_dict)
    prefixed = [k for k in keys if k.startswith(DP_PREFIX)]
    if prefixed and len(prefixed) != len(keys):
        raise ModelLoadError(f"{path.name}: state_dict mixes '{DP_PREFIX}'-prefixed and plain keys")
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ModelLoadError(f"{path.name}: state_dict entry {key!r} is {type(value).__name__}, not a tensor")
        out[key[len(DP_PREFIX):] if prefixed else key] = value
    return out


def _head_shape_checks(sd: Mapping[str, torch.Tensor], path: Path) -> tuple[int, bool]:
    """Derive N from fc and check fc3 / fc_SD against it; return (N, has_sd_head)."""
    missing_heads = [k for k in ("fc.weight", "fc.bias", "fc3.weight", "fc3.bias", "fc_ens.weight", "fc_ens.bias")
                     if k not in sd]
    if missing_heads:
        raise ModelLoadError(f"{path.name}: not a LiLNet checkpoint, missing head keys: {', '.join(missing_heads)}")
    joint = sd["fc.weight"].shape[0]
    if sd["fc.weight"].ndim != 2 or joint % N_TRANSFORMS or joint < 2 * N_TRANSFORMS:
        raise ModelLoadError(f"{path.name}: fc.weight {tuple(sd['fc.weight'].shape)} is not [5N, 1024] with N >= 2")
    n_classes = joint // N_TRANSFORMS
    if sd["fc3.weight"].shape[0] != joint:
        raise ModelLoadError(
            f"{path.name}: fc3.weight has {sd['fc3.weight'].shape[0]} outputs, fc has {joint} (5N, N={n_classes})"
        )
    has_sd = "fc_SD.weight" in sd or "fc_SD.bias" in sd
    if has_sd:
        if "fc_SD.weight" not in sd or "fc_SD.bias" not in sd:
            raise ModelLoadError(f"{path.name}: fc_SD head is incomplete (need fc_SD.weight and fc_SD.bias)")
        if sd["fc_SD.weight"].shape[0] != n_classes:
            raise ModelLoadError(
                f"{path.name}: fc_SD.weight has {sd['fc_SD.weight'].shape[0]} outputs, expected N={n_classes}"
            )
    return n_classes, has_sd


def _build_and_load(sd: dict[str, torch.Tensor], depth: str, path: Path) -> tuple[LiLNet, int, bool]:
    n_classes, has_sd = _head_shape_checks(sd, path)
    if depth not in DEPTHS:
        raise ModelLoadError(f"{path.name}: unknown depth {depth!r}; expected one of {sorted(DEPTHS)}")
    conv1 = sd.get("conv1.weight")
    width = int(conv1.shape[0]) if isinstance(conv1, torch.Tensor) and conv1.ndim == 4 else 64
    try:
        model = LiLNet(n_classes=n_classes, depth=depth, with_sd_head=has_sd, width=width)
    except ValueError as exc:
        raise ModelLoadError(f"{path.name}: {exc}") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(
            f"{path.name}: state_dict does not fit LiLNet({depth}, N={n_classes}); "
            f"missing keys {_short(missing)}; unexpected keys {_short(unexpected)}"
        )
    wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if sd[k].shape != v.shape]
    if wrong:
        raise ModelLoadError(f"{path.name}: tensor shapes do not fit LiLNet({depth}): {_short(wrong)}")
    model.load_state_dict(sd, strict=True)
    model.eval()
    return model, n_classes, has_sd


def _short(items: list[str], limit: int = 8) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} (+{len(items) - limit} more)"


def load_lilnet_checkpoint(
    path: str | os.PathLike[str], expected_sha256: str | None, depth: str = "resnet50"
) -> LoadedClassifier:
    """Load a published or project LiLNet checkpoint onto the CPU in eval mode.

    ``expected_sha256`` (hex) is verified before anything is unpickled; a mismatch raises
    ModelLoadError. Without it only the restricted (weights_only) load is attempted.
    """
    ckpt_path = Path(path)
    if not ckpt_path.is_file():
        raise ModelLoadError(f"checkpoint not found: {ckpt_path}")
    try:
        data = ckpt_path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{ckpt_path.name}: cannot read: {exc}") from exc
    actual = hashlib.sha256(data).hexdigest()
    verified = False
    if expected_sha256 is not None:
        if actual != expected_sha256.strip().lower():
            raise ModelLoadError(
                f"{ckpt_path.name}: sha256 mismatch (expected {expected_sha256.strip().lower()}, file has {actual}); "
                "not loading"
            )
        verified = True

    raw = _read_checkpoint(ckpt_path, data, verified)
    if not isinstance(raw, Mapping) or "state_dict" not in raw:
        raise ModelLoadError(f"{ckpt_path.name}: expected a dict with a 'state_dict' key, got {type(raw).__name__}")
    state_dict = raw["state_dict"]
    if not isinstance(state_dict, Mapping):
        raise ModelLoadError(f"{ckpt_path.name}: 'state_dict' is {type(state_dict).__name__}, not a mapping")
    model, n_classes, has_sd = _build_and_load(_strip_prefix(state_dict, ckpt_path), depth, ckpt_path)

    epoch = _plain(raw.get("epoch"))
    metadata = CheckpointMetadata(
        epoch=int(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None,
        auc=_optional_float(raw.get("auc"), "auc", ckpt_path),
        acc=_optional_float(raw.get("acc"), "acc", ckpt_path),
    )
    extra = {
        k: _plain(v) for k, v in raw.items()
        if k not in ("state_dict", "optimizer", "epoch", "auc", "acc") and isinstance(k, str)
    }
    log.info(
        "checkpoint=%s event=loaded depth=%s n_classes=%d sd_head=%s epoch=%s auc=%s sha256=%s verified=%s",
        ckpt_path.name, depth, n_classes, has_sd, metadata.epoch, metadata.auc, actual[:12], verified,
    )
    return LoadedClassifier(
        model=model, n_classes=n_classes, has_sd_head=has_sd, depth=depth, sha256=actual,
        path=ckpt_path, metadata=metadata, extra=MappingProxyType(extra),
    )


def save_lilnet_checkpoint(
    model: LiLNet | nn.DataParallel,
    path: str | os.PathLike[str],
    metadata: CheckpointMetadata,
    optimizer_state: Mapping[str, Any] | None = None,
) -> str:
    """Write ``{'epoch','state_dict','auc','acc','optimizer'}`` with ``module.``-prefixed keys.

    Same layout as the published files so one loader serves both; metadata is stored as plain
    Python numbers (loads under weights_only without any allow-list). The file is written to a
    temporary name and renamed, so a crash never leaves a half-written checkpoint. Returns the
    sha256 of the written file, for the weights manifest.
    """
    inner = model.module if isinstance(model, nn.DataParallel) else model
    if not isinstance(inner, LiLNet):
        raise TypeError(f"expected a LiLNet (or DataParallel of one), got {type(inner).__name__}")
    state_dict = {f"{DP_PREFIX}{k}": v.detach().cpu() for k, v in inner.state_dict().items()}
    payload = {
        "epoch": metadata.epoch,
        "state_dict": state_dict,
        "auc": metadata.auc,
        "acc": metadata.acc,
        "optimizer": dict(optimizer_state) if optimizer_state is not None else None,
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    digest = sha256_of(target)
    log.info("checkpoint=%s event=saved depth=%s n_classes=%d sha256=%s", target.name, inner.depth,
             inner.n_classes, digest[:12])
    return digest
