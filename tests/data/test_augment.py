"""Augmentation: shapes, determinism, and that each effect does what its name says."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pocketvision.core.contract import Contract
from pocketvision.data.augment import AugmentConfig, Augmenter, eval_transform
from pocketvision.errors import PocketVisionError

# Everything random switched off; each test turns on the one effect it is about.
OFF = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, brightness=0.0, contrast=0.0, saturation=0.0,
           hue=0.0, glare=0.0, moire=0.0)


def photo(w: int = 160, h: int = 120, seed: int = 0) -> Image.Image:
    """Smooth gradients + noise: asymmetric left/right, mid-range values so effects have room."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    a = 40 + 150 * np.concatenate([x * np.ones((h, 1, 1)), y * np.ones((1, w, 1)), (x * y)], axis=2)
    a += rng.normal(0, 8, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("size", [(224, 224), (96, 128)])
def test_shape_dtype(size):
    aug = Augmenter(AugmentConfig(glare=0.5, moire=0.5), Contract(size=size))
    rng = np.random.default_rng(0)
    for _ in range(6):
        out = aug(photo(), rng)
        assert out.shape == (*size, 3) and out.dtype == np.uint8 and out.flags.c_contiguous and out.flags.writeable


def test_deterministic_for_equal_seeds():
    aug, img = Augmenter(AugmentConfig(glare=0.5, moire=0.5)), photo()
    a = [aug(img, np.random.default_rng(7)) for _ in range(2)]
    b = aug(img, np.random.default_rng(8))
    assert np.array_equal(a[0], a[1])
    assert not np.array_equal(a[0], b)


def test_hflip_mirrors():
    img = photo(128, 128)
    contract = Contract(size=(64, 64))
    flipped = Augmenter(AugmentConfig(**{**OFF, "hflip": 1.0}), contract)(img, np.random.default_rng(0))
    plain = Augmenter(AugmentConfig(**OFF), contract)(img, np.random.default_rng(0))
    assert np.array_equal(plain, eval_transform(contract)(img))  # full-image crop == the eval resize
    assert np.array_equal(flipped, plain[:, ::-1])
    assert not np.array_equal(flipped, plain)


def test_crop_respects_scale():
    img = Image.fromarray(np.arange(200 * 200 * 3, dtype=np.uint32).reshape(200, 200, 3).astype(np.uint8))
    aug = Augmenter(AugmentConfig(**{**OFF, "scale": (0.25, 0.25)}), Contract(size=(32, 32)))
    rng = np.random.default_rng(0)
    for _ in range(20):
        x0, y0, x1, y1 = aug._crop_box(200, 100, rng)
        assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 100
        assert (x1 - x0) * (y1 - y0) == pytest.approx(0.25 * 200 * 100)
        assert 3 / 4 - 1e-9 <= (x1 - x0) / (y1 - y0) <= 4 / 3 + 1e-9
    assert aug(img, rng).shape == (32, 32, 3)


def test_full_size_crop_never_leaves_the_image():
    """Regression: for a 25x29 image the centred fallback crop's top was -1.8e-15, and PIL's resize refused
    the box ("box offset can't be negative") in a worker, which ended a training run at epoch 74."""
    aug = Augmenter(AugmentConfig(**{**OFF, "scale": (1.0, 1.0), "ratio": (3 / 4, 4 / 3)}), Contract(size=(16, 16)))
    rng = np.random.default_rng(0)
    for w, h in [(25, 29), (25, 31), (29, 31)] + [(w, h) for w in range(20, 60, 3) for h in range(20, 60, 2)]:
        x0, y0, x1, y1 = aug._crop_box(w, h, rng)
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, (w, h)
    assert aug(Image.new("RGB", (25, 29)), rng).shape == (16, 16, 3)


def test_size_override_for_progressive_resizing():
    aug = Augmenter(AugmentConfig(glare=1.0, moire=1.0), Contract(size=(96, 128)))
    img = photo(200, 150)
    assert aug(img, 0).shape == (96, 128, 3)
    assert aug(img, 0, size=(48, 64)).shape == (48, 64, 3)
    assert aug(img, 0).shape == (96, 128, 3)  # the glare/moiré grids are kept per size


def test_glare_brightens():
    img, contract = photo(128, 128), Contract(size=(96, 96))  # square: the full-image crop == eval
    base = eval_transform(contract)(img).astype(int)
    aug = Augmenter(AugmentConfig(**{**OFF, "glare": 1.0}), contract)
    for seed in range(5):
        out = aug(img, np.random.default_rng(seed)).astype(int)
        assert (out >= base).all()  # glare only ever adds light
        assert out.mean() > base.mean() + 1
        assert (out - base).max() > 80  # a blown-out core, not a uniform lift
        assert (out == 255).all(axis=2).any()


def test_moire_bounded_and_coloured():
    grey = Image.new("RGB", (128, 128), (128, 128, 128))
    contract = Contract(size=(96, 96))
    base = eval_transform(contract)(grey).astype(int)
    aug = Augmenter(AugmentConfig(**{**OFF, "moire": 1.0}), contract)
    for seed in range(5):
        out = aug(grey, np.random.default_rng(seed)).astype(int)
        diff = out - base
        assert np.abs(diff).max() <= 0.12 * 128 + 1  # low amplitude: at most 12% of the pixel value
        assert np.abs(diff).mean() > 1  # ... but visible
        assert (out[..., 0] != out[..., 2]).mean() > 0.3  # colour fringes on a grey input


def test_jitter_changes_colour_within_range():
    img, contract = photo(), Contract(size=(64, 64))
    base = eval_transform(contract)(img).astype(float)
    aug = Augmenter(AugmentConfig(**{**OFF, "brightness": 0.3}), contract)
    ratios = [aug(img, np.random.default_rng(s)).mean() / base.mean() for s in range(10)]
    assert min(ratios) > 0.68 and max(ratios) < 1.32 and max(ratios) - min(ratios) > 0.1


def test_grayscale_drops_the_colour_and_only_when_drawn():
    img, contract = photo(), Contract(size=(64, 64))
    grey = Augmenter(AugmentConfig(**{**OFF, "grayscale": 1.0}), contract)(img, np.random.default_rng(0)).astype(int)
    assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 1 and np.abs(grey[..., 1] - grey[..., 2]).max() <= 1
    colour = Augmenter(AugmentConfig(**OFF), contract)(img, np.random.default_rng(0)).astype(float)
    luma = colour @ np.array([0.299, 0.587, 0.114])
    assert np.abs(grey[..., 0] - luma).max() <= 1.5  # the same crop in BT.601 grey, same brightness
    half = Augmenter(AugmentConfig(**{**OFF, "grayscale": 0.5}), contract)
    outs = [half(img, np.random.default_rng(s)) for s in range(40)]
    n_grey = sum(int(np.array_equal(o[..., 0], o[..., 2])) for o in outs)
    assert 10 <= n_grey <= 30, n_grey
    # the default (0) draws nothing extra: configs that predate the option keep their random sequence
    a = Augmenter(AugmentConfig(glare=0.5, moire=0.5))(img, np.random.default_rng(3))
    b = Augmenter(AugmentConfig(glare=0.5, moire=0.5, grayscale=0.0))(img, np.random.default_rng(3))
    assert np.array_equal(a, b)


def test_trivial_augment_applies_one_op_per_photo():
    from pocketvision.data.augment import _TRIVIAL_OPS, trivial_op
    img, contract = photo(), Contract(size=(64, 64))
    small = img.resize((64, 64))
    base = np.asarray(small).astype(int)
    for op, name in enumerate(_TRIVIAL_OPS):
        for level in (0, 15, 30):
            out = np.asarray(trivial_op(small, op, level, negative=bool(level % 2)))
            assert out.shape == (64, 64, 3) and out.dtype == np.uint8, name
        strong = np.asarray(trivial_op(small, op, 30, negative=False)).astype(int)
        changed = np.abs(strong - base).mean()
        assert (changed == 0) == (name == "identity"), (name, changed)  # each op does something, at full strength
    aug = Augmenter(AugmentConfig(**{**OFF, "policy": "trivial"}), contract)
    draws = [aug.draw(160, 120, np.random.default_rng(s)) for s in range(200)]
    assert len({d.policy[0] for d in draws}) == len(_TRIVIAL_OPS)  # every op is drawn
    a, b = (aug(img, np.random.default_rng(5)) for _ in range(2))
    assert np.array_equal(a, b)  # deterministic per seed
    with pytest.raises(PocketVisionError, match="policy"):
        AugmentConfig(policy="randaug")


def test_disabled_equals_eval_transform():
    img = photo(300, 200)
    for contract in (Contract(), Contract(size=(96, 128), resize="center_crop")):
        out = Augmenter(AugmentConfig(enabled=False), contract)(img, np.random.default_rng(0))
        assert np.array_equal(out, eval_transform(contract)(img))


def test_non_rgb_input_is_converted():
    out = Augmenter(contract=Contract(size=(32, 32)))(Image.new("L", (50, 40), 90), np.random.default_rng(0))
    assert out.shape == (32, 32, 3)


def test_config_validation_raises_user_errors():
    assert AugmentConfig().hflip == 0.5 and AugmentConfig(hue=0.1).hue == 0.1
    with pytest.raises(PocketVisionError, match='unknown option "hflp".*Did you mean "hflip"'):
        AugmentConfig(hflp=0.5)
    with pytest.raises(PocketVisionError, match="hflip"):
        AugmentConfig(hflip=1.5)
    with pytest.raises(PocketVisionError, match="scale"):
        AugmentConfig(scale=(0.9, 0.2))
    with pytest.raises(PocketVisionError, match="ratio"):
        AugmentConfig(ratio=(0.0, 1.0))
    assert Augmenter({"glare": 0.0}).cfg.glare == 0.0  # a plain dict from a config file works too
