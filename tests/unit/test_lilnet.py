"""LiLNet network, published-checkpoint compatibility, and classifier preprocessing."""
from __future__ import annotations

import fractions
import hashlib
import logging
import pickle
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from pipeline.classify import checkpoints as ckpt_mod
from pipeline.classify.checkpoints import (
    CheckpointMetadata,
    ModelLoadError,
    load_lilnet_checkpoint,
    save_lilnet_checkpoint,
)
from pipeline.classify.lilnet import (
    LiLNet,
    LiLNetConfigError,
    LiLNetInputError,
    aggregate_ag,
    apply_masks,
    quadrant_masks,
)
from pipeline.classify.preprocess import (
    PreprocessError,
    crop_around_box,
    crop_side,
    resize_u8,
    to_classifier_input,
)

_SCALAR = (getattr(np, "_core", None) or np.core).multiarray.scalar


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Seeded random weights *and* BN statistics, so a load that skipped any tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean") or name.endswith(".bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
            elif tensor.ndim == 1:  # BN weight, below 1 so 16 residual blocks keep logits moderate
                tensor.copy_(0.5 + torch.randn(tensor.shape, generator=gen) * 0.05)
            else:  # conv / linear weight, fan-in scaled
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * (2.0 / fan_in) ** 0.5)


def _sgd_state_after_one_step(model: torch.nn.Module) -> dict:
    """A real SGD state_dict with momentum buffers (grads set directly: no backward needed)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    opt.step()
    opt.zero_grad(set_to_none=True)
    state = opt.state_dict()
    assert all("momentum_buffer" in s for s in state["state"].values())
    return state


class _Numpy1Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes numpy scalars under numpy 1.x's global name, as 2024-era checkpoints have it."""

    def save_global(self, obj, name=None):  # noqa: ANN001 - pickle's signature
        if obj is _SCALAR:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\nscalar\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


_NUMPY1_PICKLE = types.ModuleType("numpy1_pickle")  # torch.save wants a module-like object
_NUMPY1_PICKLE.Pickler = _Numpy1Pickler  # type: ignore[attr-defined]


def _explode() -> None:
    raise AssertionError("the checkpoint was unpickled: arbitrary code ran")


class _Boom:
    """Unpickling this runs _explode: proves a load did (or did not) unpickle."""

    def __reduce__(self):
        return (_explode, ())


def _save_published(
    model: LiLNet, path: Path, optimizer_state: dict, *, numpy1_names: bool = False, drop: tuple[str, ...] = ()
) -> Path:
    """Save exactly like LiLNet's training scripts: DataParallel state_dict + epoch/auc/acc/optimizer."""
    dp = torch.nn.DataParallel(model)  # on CPU it still prefixes every key with 'module.'
    state_dict = {k: v for k, v in dp.state_dict().items() if not k.startswith(drop)} if drop else dp.state_dict()
    payload = {
        "epoch": 7,
        "state_dict": state_dict,
        "auc": np.float64(0.93),
        "acc": torch.tensor(0.9),
        "optimizer": optimizer_state,
    }
    if numpy1_names:
        torch.save(payload, path, pickle_module=_NUMPY1_PICKLE)
    else:
        torch.save(payload, path)
    return path


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """resnet50 LiLNets for N=2 (BM) and N=3 (B/M) saved in the published format, with reference outputs."""
    out = {}
    inp = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(42))
    for n_classes, numpy1 in ((2, False), (3, True)):
        torch.manual_seed(n_classes)
        model = LiLNet(n_classes=n_classes, depth="resnet50", with_sd_head=True)
        _randomise(model, seed=100 + n_classes)
        # The optimizer step moves the weights, so take it before the reference outputs.
        optimizer_state = _sgd_state_after_one_step(model)
        model.eval()
        with torch.no_grad():
            outputs = model(inp)
            ag = model.aggregated_logits(inp)
        path = _save_published(model, tmp_path_factory.mktemp(f"n{n_classes}") / "Time_X.pth.tar", optimizer_state,
                               numpy1_names=numpy1)
        out[n_classes] = types.SimpleNamespace(
            model=model, outputs=outputs, ag=ag, path=path, inp=inp, optimizer_state=optimizer_state
        )
    return out


# ---------------------------------------------------------------------------------------------
# (a) published-format compatibility


@pytest.mark.parametrize("n_classes", [2, 3])
def test_published_checkpoint_round_trip_gives_identical_ag_logits(published, n_classes, caplog):
    ref = published[n_classes]
    assert torch.isfinite(ref.ag).all() and ref.ag.std() > 0
    with caplog.at_level(logging.WARNING, logger=ckpt_mod.__name__):
        loaded = load_lilnet_checkpoint(ref.path, expected_sha256=_sha(ref.path))
    # The restricted (weights_only) load must have sufficed: no fallback to full unpickling.
    assert "restricted_load_refused" not in caplog.text
    assert loaded.n_classes == n_classes and loaded.has_sd_head and loaded.depth == "resnet50"
    assert not loaded.model.training
    assert loaded.metadata == CheckpointMetadata(epoch=7, auc=pytest.approx(0.93), acc=pytest.approx(0.9))
    assert type(loaded.metadata.auc) is float and type(loaded.metadata.acc) is float
    assert next(loaded.model.parameters()).device.type == "cpu"
    with torch.no_grad():
        ag = loaded.model.aggregated_logits(ref.inp)
        x, x3, x_sd = loaded.model(ref.inp)
    assert ag.shape == (2, n_classes)
    assert torch.equal(ag, ref.ag)
    assert torch.equal(x, ref.outputs.x) and torch.equal(x3, ref.outputs.x3) and torch.equal(x_sd, ref.outputs.x_sd)


def test_published_checkpoint_loads_without_sha_through_restricted_path(published):
    ref = published[3]  # the numpy-1.x-named file: needs the old scalar name allow-listed
    assert b"numpy.core.multiarray" in _pickle_bytes(ref.path)
    loaded = load_lilnet_checkpoint(ref.path, expected_sha256=None)
    with torch.no_grad():
        assert torch.equal(loaded.model.aggregated_logits(ref.inp), ref.ag)


def _pickle_bytes(path: Path) -> bytes:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))


def test_checkpoint_without_sd_head_2fc_mode(published, tmp_path):
    ref = published[2]
    path = _save_published(ref.model, tmp_path / "Time_2fc.pth.tar", ref.optimizer_state, drop=("module.fc_SD.",))
    loaded = load_lilnet_checkpoint(path, expected_sha256=_sha(path))
    assert not loaded.has_sd_head and loaded.model.fc_SD is None
    with torch.no_grad():
        assert torch.equal(loaded.model.aggregated_logits(ref.inp), ref.ag)  # AG never uses fc_SD
        assert loaded.model(ref.inp).x_sd is None


def test_wrong_sha256_fails_before_unpickling(tmp_path, monkeypatch):
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "payload": _Boom()}, path)

    def _no_load(*args, **kwargs):
        raise AssertionError("torch.load called despite a sha256 mismatch")

    monkeypatch.setattr(torch, "load", _no_load)
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        load_lilnet_checkpoint(path, expected_sha256="0" * 64)


def test_untrusted_file_needing_arbitrary_globals_is_refused(tmp_path):
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "payload": _Boom()}, path)
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_lilnet_checkpoint(path, expected_sha256=None)


def test_verified_file_with_other_globals_uses_full_load_fallback(tmp_path, caplog):
    model = LiLNet(n_classes=2, depth="resnet18").eval()
    path = tmp_path / "trusted.pth.tar"
    # fractions.Fraction is harmless but not allow-listed: weights_only refuses it.
    torch.save({"epoch": 2, "state_dict": model.state_dict(), "note": fractions.Fraction(1, 3)}, path)
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_lilnet_checkpoint(path, expected_sha256=None, depth="resnet18")
    with caplog.at_level(logging.WARNING, logger=ckpt_mod.__name__):
        loaded = load_lilnet_checkpoint(path, expected_sha256=_sha(path).upper(), depth="resnet18")
    assert "restricted_load_refused" in caplog.text
    assert loaded.extra["note"] == fractions.Fraction(1, 3) and loaded.metadata.epoch == 2


def test_missing_fc3_is_named(tmp_path):
    model = LiLNet(n_classes=2, depth="resnet18")
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not k.startswith("fc3.")}
    path = tmp_path / "no_fc3.pth.tar"
    torch.save({"epoch": 1, "state_dict": state, "auc": np.float64(0.5), "acc": torch.tensor(0.5)}, path)
    with pytest.raises(ModelLoadError, match=r"fc3\.weight"):
        load_lilnet_checkpoint(path, expected_sha256=_sha(path), depth="resnet18")


def test_wrong_depth_names_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "r18.pth.tar"
    save_lilnet_checkpoint(LiLNet(n_classes=2, depth="resnet18"), path, CheckpointMetadata(epoch=1))
    with pytest.raises(ModelLoadError, match=r"missing keys .*layer1\.0\.conv3\.weight"):
        load_lilnet_checkpoint(path, expected_sha256=None, depth="resnet50")


def test_fc_sd_shape_must_match_n(tmp_path):
    model = LiLNet(n_classes=3, depth="resnet18")
    state = model.state_dict()
    state["fc_SD.weight"] = torch.zeros(2, state["fc_SD.weight"].shape[1])
    state["fc_SD.bias"] = torch.zeros(2)
    path = tmp_path / "bad_sd.pth.tar"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ModelLoadError, match="fc_SD"):
        load_lilnet_checkpoint(path, expected_sha256=None, depth="resnet18")


def test_save_lilnet_checkpoint_round_trip_resnet18(tmp_path):
    torch.manual_seed(0)
    model = LiLNet(n_classes=3, depth="resnet18")
    _randomise(model, seed=5)
    model.eval()
    path = tmp_path / "demo.pth.tar"
    digest = save_lilnet_checkpoint(model, path, CheckpointMetadata(epoch=3, auc=0.8, acc=0.75))
    assert digest == _sha(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # our own files need no allow-list
    assert set(raw) == {"epoch", "state_dict", "auc", "acc", "optimizer"}
    assert all(k.startswith("module.") for k in raw["state_dict"])
    loaded = load_lilnet_checkpoint(path, expected_sha256=digest, depth="resnet18")
    inp = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.model.aggregated_logits(inp), model.aggregated_logits(inp))
    assert loaded.metadata == CheckpointMetadata(epoch=3, auc=0.8, acc=0.75)


def test_state_dict_key_count_matches_reference():
    model = LiLNet(n_classes=2, depth="resnet50", with_sd_head=True)
    keys = model.state_dict()
    assert len(keys) == 326
    assert len(LiLNet(n_classes=2, depth="resnet50", with_sd_head=False).state_dict()) == 324
    tv = {k: v.shape for k, v in torchvision.models.resnet50(weights=None).state_dict().items()
          if not k.startswith("fc.")}
    assert len(tv) == 318
    ours = {k: v.shape for k, v in keys.items() if not k.startswith(("fc.", "fc3.", "fc_SD.", "fc_ens."))}
    assert ours == tv  # same names and shapes as torchvision's backbone
    assert "mask3" not in keys and "mask4" not in keys
    heads = {k: tuple(v.shape) for k, v in keys.items() if k.split(".")[0] in ("fc", "fc3", "fc_SD", "fc_ens")}
    assert heads == {
        "fc3.weight": (10, 1024), "fc3.bias": (10,), "fc_SD.weight": (2, 2048), "fc_SD.bias": (2,),
        "fc_ens.weight": (1024, 2048), "fc_ens.bias": (1024,), "fc.weight": (10, 1024), "fc.bias": (10,),
    }


# ---------------------------------------------------------------------------------------------
# (b) AG head and masks


def test_ag_equals_hand_written_mean(published):
    ref = published[3]
    x, x3, _ = ref.outputs
    batch, n_classes = ref.ag.shape
    expected = torch.zeros(batch, n_classes)
    for b in range(batch):
        for c in range(n_classes):
            vals = [x[b * 5 + j, c * 5 + j] for j in range(5)] + [x3[b * 5 + j, c * 5 + j] for j in range(5)]
            expected[b, c] = sum(vals) / 10
    torch.testing.assert_close(ref.ag, expected, rtol=1e-6, atol=1e-5)  # summation order differs
    assert torch.equal(aggregate_ag(x, x3), ref.ag)


@pytest.mark.parametrize("k,h", [(7, 3), (14, 7)])
def test_quadrant_masks_zero_exact_regions(k, h):
    masks = quadrant_masks(k)
    assert masks.shape == (5, 1, k, k)
    regions = {1: (slice(0, h), slice(0, h)), 2: (slice(0, h), slice(h, k)),
               3: (slice(h, k), slice(0, h)), 4: (slice(h, k), slice(h, k))}
    assert torch.equal(masks[0], torch.ones(1, k, k))
    for j, (rows, cols) in regions.items():
        expected = torch.ones(k, k)
        expected[rows, cols] = 0
        assert torch.equal(masks[j, 0], expected), f"mask {j}"
    if k == 7:  # right/bottom quadrants are the wider ones
        assert int((masks[4, 0] == 0).sum()) == 16 and int((masks[1, 0] == 0).sum()) == 9


def test_apply_masks_matches_reference_concat_view_order():
    f = torch.randn(3, 4, 7, 7)
    masks = quadrant_masks(7)
    reference = torch.cat([f * masks[j] for j in range(5)], dim=1).view(-1, 4, 7, 7)
    assert torch.equal(apply_masks(f, masks), reference)
    out = apply_masks(f, masks)
    assert torch.equal(out[1 * 5 + 2], f[1] * masks[2])  # row b*5 + j


def test_masks_are_buffers_that_follow_the_model_but_not_the_state_dict():
    model = LiLNet(n_classes=2, depth="resnet18").double()
    assert model.mask3.dtype == torch.float64 and model.mask4.shape == (5, 1, 7, 7)
    assert not any(k.startswith("mask") for k in model.state_dict())
    # resnet18 layer3/layer4 widths
    assert model.fc3.in_features == 256 and model.fc_ens.in_features == 512


@pytest.mark.parametrize("shape", [(1, 3, 256, 256), (3, 224, 224), (1, 1, 224, 224), (0, 3, 224, 224)])
def test_input_shape_is_checked(shape):
    model = LiLNet(n_classes=2, depth="resnet18")
    with pytest.raises(LiLNetInputError, match="224"):
        model.aggregated_logits(torch.zeros(shape))


# ---------------------------------------------------------------------------------------------
# (c) preprocessing and crop geometry


def _coords_image(h: int = 512, w: int = 512, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, size=(h, w), dtype=np.uint8)  # no zeros: padding shows


def test_crop_small_box_is_native_and_centred():
    img = _coords_image()
    crop = crop_around_box(img, (100, 150, 140, 170))  # centre (120, 160)
    assert crop.shape == (224, 224) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, img[160 - 112:160 + 112, 120 - 112:120 + 112])


def test_crop_half_pixel_centre_rounds_to_nearest():
    img = _coords_image()
    crop = crop_around_box(img, (100.0, 100.0, 121.0, 121.0))  # centre 110.5 -> origin floor(-1.0) = -1
    np.testing.assert_array_equal(crop[1:, 1:], img[0:223, 0:223])
    assert (crop[0, :] == 0).all() and (crop[:, 0] == 0).all()


def test_crop_at_image_edge_pads_without_shifting():
    img = _coords_image()
    crop = crop_around_box(img, (0, 0, 20, 20))  # centre (10, 10): origin (-102, -102)
    assert crop.shape == (224, 224)
    assert (crop[:102, :] == 0).all() and (crop[:, :102] == 0).all()
    np.testing.assert_array_equal(crop[102:, 102:], img[0:122, 0:122])
    far = crop_around_box(img, (500, 490, 512, 512))  # bottom-right corner
    assert (far[-100:, :] == 0).all() and (far[:, -100:] == 0).all()


def test_crop_large_box_zooms_out_and_keeps_lesion_whole():
    img = np.zeros((512, 512), dtype=np.uint8)
    img[150:350, 100:400] = 200  # a 300 x 200 "lesion", box exactly around it
    crop = crop_around_box(img, (100, 150, 400, 350))
    assert crop.shape == (224, 224)
    assert crop_side(300, 200) == 330
    rows, cols = np.nonzero(crop > 100)
    assert cols.min() > 5 and cols.max() < 218  # whole lesion inside, with margin
    width = cols.max() - cols.min() + 1
    assert abs(width - 300 * 224 / 330) <= 2
    assert abs((cols.min() + cols.max()) / 2 - 111.5) <= 1.0
    assert abs((rows.min() + rows.max()) / 2 - 111.5) <= 1.0
    # Scale rule: native while box * 1.1 fits, continuous beyond.
    assert crop_side(200, 50) == 224 and crop_side(224 / 1.1, 10) == 224 and crop_side(210, 10) == 231


def test_crop_rejects_bad_boxes():
    img = _coords_image(64, 64)
    for box in [(10, 10, 10, 20), (np.nan, 0, 5, 5), (100, 100, 120, 120), (1, 2, 3)]:
        with pytest.raises(PreprocessError):
            crop_around_box(img, box)
    with pytest.raises(PreprocessError):
        crop_around_box(img.astype(np.float32), (1, 1, 5, 5))


def test_classifier_input_range_channels_and_identity_resize():
    crops = np.stack([_coords_image(224, 224, s) for s in range(3)])
    crops[0, 0, 0], crops[0, 0, 1] = 0, 255
    out = to_classifier_input(crops)
    assert out.shape == (3, 3, 224, 224) and out.dtype == torch.float32
    assert out[0, 0, 0, 0] == -1.0 and out[0, 0, 0, 1] == 1.0
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    expected = torch.from_numpy(crops).float() / 255.0 * 2.0 - 1.0
    torch.testing.assert_close(out[:, 0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(300, 260), (512, 512), (100, 150), (224, 224)])
def test_resize_close_to_pil_bilinear(shape):
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 256, size=(shape[0] // 8 + 2, shape[1] // 8 + 2)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((shape[1], shape[0]), Image.BICUBIC))
    img = np.clip(smooth.astype(np.int16) + rng.integers(-20, 21, size=shape), 0, 255).astype(np.uint8)
    pil = np.asarray(Image.fromarray(img).convert("RGB").resize((224, 224), Image.BILINEAR))[..., 0]
    ours = resize_u8(torch.from_numpy(img).unsqueeze(0), 224)[0].numpy()
    assert np.abs(ours.astype(int) - pil.astype(int)).max() <= 1


def test_classifier_input_mixed_shapes_and_errors():
    crops = [_coords_image(224, 224, 1), _coords_image(300, 200, 2), _coords_image(224, 224, 3)]
    out = to_classifier_input(crops)
    assert out.shape == (3, 3, 224, 224)
    single = to_classifier_input(crops[1])
    torch.testing.assert_close(single[0], out[1], rtol=0, atol=0)
    with pytest.raises(PreprocessError):
        to_classifier_input([crops[0].astype(np.float32)])
    with pytest.raises(PreprocessError):
        to_classifier_input([])


def test_narrow_width_round_trip_infers_width_from_conv1(tmp_path):
    torch.manual_seed(3)
    model = LiLNet(n_classes=3, depth="resnet18", width=16).eval()
    assert model.conv1.out_channels == 16 and model.fc_ens.in_features == 128 and model.fc3.in_features == 64
    path = tmp_path / "narrow.pth.tar"
    digest = save_lilnet_checkpoint(model, path, CheckpointMetadata(epoch=1))
    loaded = load_lilnet_checkpoint(path, expected_sha256=digest, depth="resnet18")
    assert loaded.model.width == 16
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model.aggregated_logits(x), loaded.model.aggregated_logits(x))


def test_width_must_be_a_multiple_of_four():
    with pytest.raises(LiLNetConfigError, match="multiple of 4"):
        LiLNet(n_classes=2, depth="resnet18", width=10)
