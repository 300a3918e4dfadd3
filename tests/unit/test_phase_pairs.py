"""Phase-pair classifier input: (AP, PVP) windows at one patient position, built, encoded and loaded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.classify.checkpoints import ModelLoadError
from pipeline.classify.classifier import LesionClassifier
from pipeline.classify.preprocess import PreprocessError, classifier_input, to_classifier_input, to_phase_pair_input
from pipeline.lesion_crops import PhaseImages, lesion_crops
from pipeline.lesions import Box2D, match_phases, measure
from pipeline.phantom import LesionClass
from pipeline.series import Geometry, LoadedSeries
from pipeline.train.classifier import augment
from pipeline.train.classifier_data import PAIRED, build_crops
from tests.support.classifier_weights import write_untrained_classifiers


def _images(uid: str, phase: str, value: int, frame: str | None = "1.2.3", n: int = 4,
            origin=(-100.0, -100.0), spacing=(0.5, 0.5)) -> PhaseImages:
    origins = np.array([[origin[0], origin[1], 5.0 * i] for i in range(n)])
    geo = Geometry(origins, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), spacing, frame)
    windowed = np.zeros((n, 300, 300), np.uint8)
    windowed[:, 100:120, 140:160] = value  # the lesion, at the same patient place in every phase
    hu = windowed.astype(np.float32)
    return PhaseImages(LoadedSeries(uid, hu, geo, tuple(f"{uid}{i}" for i in range(n)), (None,) * n, "ct", ""),
                       phase, windowed)


def _lesions(*views):
    return match_phases([[measure([Box2D(2, *box, 0.9)], im.series, im.phase)] for im, box in views])


def test_pair_input_channels_and_grey_equivalence():
    rng = np.random.default_rng(0)
    ap, pvp = rng.integers(0, 256, (2, 3, 224, 224), dtype=np.uint8)
    x = to_phase_pair_input(np.stack([ap, pvp], axis=1))
    assert x.shape == (3, 3, 224, 224)
    back = ((x * 0.5 + 0.5) * 255).round().to(torch.int32).numpy()
    assert np.array_equal(back[:, 0], ap) and np.array_equal(back[:, 1], pvp)
    assert np.abs(back[:, 2] - (ap.astype(int) + pvp) / 2).max() <= 0.5
    # one phase twice is exactly the published grey input
    assert torch.equal(to_phase_pair_input(np.stack([ap, ap], axis=1)), to_classifier_input(ap))
    assert torch.equal(classifier_input(ap), to_classifier_input(ap))
    with pytest.raises(PreprocessError, match=r"\[B, 2, H, W\]"):
        to_phase_pair_input(np.stack([ap, ap, ap], axis=1))


def test_geometry_to_index_inverts_to_patient():
    geo = _images("s", "AP", 1, spacing=(0.7, 0.6)).series.geometry
    assert geo.to_index(geo.to_patient(2, 37.0, 81.5)) == pytest.approx((2, 37.0, 81.5))
    assert geo.to_index(geo.to_patient(3, 0, 0) + np.array([0, 0, 12.0])) is None  # beyond the last slice


def test_lesion_seen_in_one_phase_gets_the_other_phase_window():
    ap, pvp = _images("ap", "AP", 200), _images("pvp", "PVP", 60)
    (lesion,) = _lesions((pvp, (140, 100, 160, 120)))  # the detector found it in PVP only
    crops, owners = lesion_crops([lesion], {"ap": ap, "pvp": pvp}, paired=True, max_per_view=5, min_px=6)
    assert crops.shape == (1, 2, 224, 224) and owners == [lesion.index]
    assert crops[0, 0, 112, 112] == 200 and crops[0, 1, 112, 112] == 60  # channel order AP, PVP
    grey, _ = lesion_crops([lesion], {"ap": ap, "pvp": pvp}, paired=False, max_per_view=5, min_px=6)
    assert grey.shape == (1, 224, 224) and np.array_equal(grey[0], crops[0, 1])


def test_pair_maps_through_patient_coordinates_between_grids():
    ap = _images("ap", "AP", 200)  # lesion x -30..-20 mm, y -50..-40 mm
    # PVP: another field of view and half the pixel size, with the lesion drawn at the same patient place
    pvp = _images("pvp", "PVP", 0, origin=(-110.0, -90.0), spacing=(0.25, 0.25))
    image = np.zeros((4, 600, 600), np.uint8)
    image[:, 160:200, 320:360] = 60
    pvp = PhaseImages(pvp.series, "PVP", image)
    (lesion,) = _lesions((ap, (140, 100, 160, 120)))
    crops, _ = lesion_crops([lesion], {"ap": ap, "pvp": pvp}, paired=True, max_per_view=5, min_px=6)
    assert crops[0, 0, 112, 112] == 200 and crops[0, 1, 112, 112] == 60
    # native PVP pixels: the 10 mm lesion is 40 px wide there, centred on the crop
    assert crops[0, 1, 112 - 19, 112 - 19] == 60 and crops[0, 1, 112 - 22, 112] == 0


def test_no_shared_frame_of_reference_gives_the_crop_twice():
    ap, pvp = _images("ap", "AP", 200), _images("pvp", "PVP", 60, frame="9.9")
    (lesion,) = _lesions((ap, (140, 100, 160, 120)))
    crops, _ = lesion_crops([lesion], {"ap": ap, "pvp": pvp}, paired=True, max_per_view=5, min_px=6)
    assert np.array_equal(crops[0, 0], crops[0, 1]) and crops[0, 0, 112, 112] == 200


def test_paired_training_data_and_single_phase_augmentation():
    data = build_crops(11, 1, max_slices=1, classes=(LesionClass.HCC,), paired=True)
    assert data.crops.shape[1:] == (2, 224, 224) and np.all(data.phase == PAIRED)
    grey = build_crops(11, 1, max_slices=1, classes=(LesionClass.HCC,))
    assert len(grey) == 2 * len(data)  # one pair per lesion slice instead of one crop per phase
    # an HCC enhances in AP and washes out in PVP: the two phases of a pair differ at the lesion
    centre = data.crops[:, :, 100:124, 100:124].astype(float).mean(axis=(2, 3))
    assert np.all(centre[:, 0] > centre[:, 1])
    rng = np.random.default_rng(0)
    single = augment(data.crops, rng, single_phase=1.0)
    assert all(np.array_equal(p[0], p[1]) for p in single)
    mixed = augment(data.crops, rng, single_phase=0.0)
    assert not any(np.array_equal(p[0], p[1]) for p in mixed)


def test_classifier_input_mode_from_manifest(weights_dir_factory):
    grey_dir, pair_dir, mixed_dir = weights_dir_factory
    grey = LesionClassifier.from_manifest(grey_dir, device="cpu")
    pair = LesionClassifier.from_manifest(pair_dir, device="cpu")
    assert (grey.input_mode, pair.input_mode) == ("grey", "phase-pair")
    crops = np.random.default_rng(0).integers(0, 256, (2, 2, 224, 224), dtype=np.uint8)
    assert pair.logits(crops).bm.shape == (2, 2)
    # a grey crop is its phase twice
    np.testing.assert_allclose(pair.logits(crops[:, 0]).bm, pair.logits(crops[:, [0, 0]]).bm, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[M,H,W\]"):
        grey.logits(crops)
    with pytest.raises(ModelLoadError, match="one input mode"):
        LesionClassifier.from_manifest(mixed_dir, device="cpu")


@pytest.fixture(scope="module")
def weights_dir_factory(tmp_path_factory):
    """Untrained width-8 weights described by manifests in grey mode, phase-pair mode, and mixed."""
    grey = write_untrained_classifiers(tmp_path_factory.mktemp("grey"), width=8)
    pair = write_untrained_classifiers(tmp_path_factory.mktemp("pair"), width=8, flags=("--paired",))
    mixed = tmp_path_factory.mktemp("mixed")
    for f in pair.glob("*.pth.tar"):
        (mixed / f.name).symlink_to(f)
    text = (pair / "classifiers.manifest.toml").read_text()
    (mixed / "classifiers.manifest.toml").write_text(text.replace('mode = "phase-pair"', 'mode = "grey"', 1))
    return grey, pair, mixed
