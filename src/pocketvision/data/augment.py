"""Training-time augmentation for classification: fast on CPU, deterministic given a numpy Generator.

One PIL call does the random resized crop (crop + resize + antialias together, so we never resize the
full photo first); everything after that works on the small output as float32. Besides the usual flip
and colour jitter there are two phone-photo effects the Not Hotdog team needed: camera-flash glare and
screen moiré (people photograph a hot dog on someone else's screen).

numpy, Pillow and OpenCV only, so data loading workers do not need torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageOps
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..core.contract import Contract
from ..errors import PocketVisionError, did_you_mean

# OpenCV runs single-threaded in this process and every process forked from it. Its thread pool does not survive
# fork(): a DataLoader worker forked after the pool started hung forever on its first OpenCV call (reproduced: a
# cv2.transform in the parent, then a worker). Parallelism comes from the loader's workers instead, one image each.
cv2.setNumThreads(0)

# ITU-R BT.601 luma weights: the "grey" used by saturation and contrast (same as PIL's convert("L")).
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


class AugmentConfig(BaseModel):
    """Augmentation settings. Unknown keys are errors, so a typo (``hflp``) cannot silently do nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    scale: tuple[float, float] = (0.25, 1.0)  # crop area as a fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect (w/h) relative to the model's aspect
    hflip: float = Field(0.5, ge=0.0, le=1.0)  # probability
    brightness: float = Field(0.3, ge=0.0, le=1.0)  # factor drawn from [1-b, 1+b]
    contrast: float = Field(0.3, ge=0.0, le=1.0)
    saturation: float = Field(0.3, ge=0.0, le=1.0)
    hue: float = Field(0.02, ge=0.0, le=0.5)  # fraction of a full turn of the colour wheel
    # Probability of dropping the colour (saturation 0). A network trained from scratch on colour photos learns
    # colour first: all 8 from-scratch hot-dog nets of the architecture search (benchmarks/RESULTS.md) called every black-and-white photo "not hot dog".
    # Off by default: at 0.1 it fixed grey photos but lost more on blurred, dark and noisy ones (benchmarks/HISTORY.md,
    # "stronger augmentation from scratch"; the same for the policy below).
    grayscale: float = Field(0.0, ge=0.0, le=1.0)
    # "trivial": TrivialAugment (Mueller & Hutter, ICCV 2021, the "wide" magnitudes): one op drawn per photo
    # (identity, shear, translate, rotate, autocontrast, equalize, posterize, solarize, colour, contrast, brightness,
    # sharpness) at a uniformly drawn strength, after the crop and flip. Per-image workers only.
    policy: Literal["none", "trivial"] = "none"
    glare: float = Field(0.15, ge=0.0, le=1.0)  # probability of a camera-flash highlight
    moire: float = Field(0.1, ge=0.0, le=1.0)  # probability of screen moiré

    def __init__(self, **data: Any) -> None:
        # The CLI prints PocketVisionError as one line; pydantic's multi-line report is for developers.
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _config_error(e) from None

    @field_validator("scale")
    @classmethod
    def _check_scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError("scale must satisfy 0 < min <= max <= 1")
        return v

    @field_validator("ratio")
    @classmethod
    def _check_ratio(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1]:
            raise ValueError("ratio must satisfy 0 < min <= max")
        return v


def _config_error(e: ValidationError) -> PocketVisionError:
    parts = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f'unknown option "{key}".{did_you_mean(key, AugmentConfig.model_fields)}')
        else:
            parts.append(f"{key}: {err['msg'].removeprefix('Value error, ')} (got {err['input']!r})")
    return PocketVisionError("Invalid augmentation config: " + "; ".join(parts))


def _hue_matrix(theta: float) -> np.ndarray:
    """Rotate colours about the grey axis (Rodrigues): a linear stand-in for an HSV hue shift that
    keeps greys grey and lets the whole jitter collapse into one 3x3 matrix."""
    k = np.full(3, 1.0 / math.sqrt(3.0))
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return math.cos(theta) * np.eye(3) + math.sin(theta) * kx + (1 - math.cos(theta)) * np.outer(k, k)


def _inside(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> tuple[float, float, float, float]:
    """Clamp a crop box to the image: rounding can put a full-height crop's top at -1.8e-15 (e.g. a 25x29 photo),
    and PIL refuses any box outside the image, which killed a training run mid-epoch."""
    return max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)


class Augmenter:
    """``Augmenter(cfg, contract)(pil_rgb_image, rng[, size]) -> uint8 HxWx3`` at ``size`` (default: the contract's)."""

    def __init__(self, cfg: AugmentConfig | None = None, contract: Contract | None = None) -> None:
        if isinstance(cfg, dict):
            cfg = AugmentConfig(**cfg)
        self.cfg = cfg if cfg is not None else AugmentConfig()
        self.contract = contract if contract is not None else Contract()
        if not isinstance(self.cfg, AugmentConfig) or not isinstance(self.contract, Contract):
            raise PocketVisionError("Augmenter(cfg, contract) needs an AugmentConfig and a Contract.")
        h, w = self.contract.size
        self._resample = Image.Resampling[self.contract.interpolation.upper()]
        # ratio=(1, 1) should mean "no distortion" for non-square models too, so shift by the model's aspect.
        self._log_ratio = (math.log(self.cfg.ratio[0] * w / h), math.log(self.cfg.ratio[1] * w / h))
        self._grid_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def decode_hint(self) -> tuple[int, int]:
        """Smallest (w, h) to JPEG-draft-decode to so that even the smallest crop is not upscaled."""
        m = math.ceil(max(self.contract.size) / math.sqrt(self.cfg.scale[0]))
        return m, m

    def _grids(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre grids for glare/moiré, one pair per output size (progressive resizing uses several)."""
        if (h, w) not in self._grid_cache:
            self._grid_cache[h, w] = (np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None])
        return self._grid_cache[h, w]

    def __call__(self, img: Image.Image, rng: np.random.Generator | int | None,
                 size: tuple[int, int] | None = None) -> np.ndarray:
        """A fresh, writable uint8 HxWx3 array (np.asarray of a PIL image is read-only: torch warns).
        ``size`` (h, w) overrides the contract's output size, e.g. for progressive resizing."""
        if not self.cfg.enabled:
            return np.array(self.contract.fit(img))
        if img.mode != "RGB":
            img = img.convert("RGB")
        return self.apply(img, self.draw(img.width, img.height, rng), size)

    def draw(self, width: int, height: int, rng: np.random.Generator | int | None) -> Draw:
        """Every random choice for one ``width`` x ``height`` image, in one place: the per-image path (``apply``)
        and the batched one (``data/batch_augment.py``) use the same draws, so their distributions cannot drift."""
        cfg = self.cfg
        rng = np.random.default_rng(rng)  # a Generator passes through unchanged
        d = Draw(box=self._crop_box(width, height, rng), flip=bool(rng.random() < cfg.hflip))
        moire, glare = rng.random() < cfg.moire, rng.random() < cfg.glare
        if cfg.policy == "trivial":  # drawn only when asked for: other configs keep their random sequence
            d.policy = (int(rng.integers(len(_TRIVIAL_OPS))), int(rng.integers(_TRIVIAL_BINS)),
                        bool(rng.random() < 0.5))
        if cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue or cfg.grayscale:
            d.jitter = self.draw_jitter(rng)
        # Camera effects after the jitter: glare is blown-out white, whatever the white balance did.
        if moire:
            d.moire = (rng.uniform(3.0, 6.0), rng.uniform(0, math.pi),
                       math.radians(rng.uniform(2.0, 10.0)) * rng.choice((-1.0, 1.0)), rng.uniform(0.94, 1.06),
                       rng.uniform(-1.0, 1.0), rng.uniform(0.1, 0.4), rng.uniform(0.04, 0.12), rng.uniform(0.3, 1.0))
        if glare:
            d.glare = self.draw_glare(rng)
        return d

    def draw_jitter(self, rng: np.random.Generator) -> tuple[float, float, float, float]:
        """(brightness, contrast, saturation factors, hue angle in radians). Grey is saturation 0, so both the
        per-image and the batched path (one 3x3 matrix per image) carry it with no code of their own."""
        cfg = self.cfg
        j = (rng.uniform(1 - cfg.brightness, 1 + cfg.brightness), rng.uniform(1 - cfg.contrast, 1 + cfg.contrast),
             rng.uniform(1 - cfg.saturation, 1 + cfg.saturation), 2 * math.pi * rng.uniform(-cfg.hue, cfg.hue))
        # Drawn only when asked for, so that configs without it keep their random sequence (and their numbers).
        if cfg.grayscale and rng.random() < cfg.grayscale:
            j = (j[0], j[1], 0.0, 0.0)
        return j

    @staticmethod
    def draw_glare(rng: np.random.Generator) -> tuple:
        """(centre x, y as fractions of the side, radius as a fraction of the short side, minor/major axis ratio,
        angle, halo strength, edge hardness, exposure lift (1: none))."""
        return (rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85), rng.uniform(0.04, 0.14), rng.uniform(0.45, 1.0),
                rng.uniform(0, math.pi), rng.uniform(0.1, 0.35), rng.uniform(0.0, 1.0),
                rng.uniform(1.03, 1.15) if rng.random() < 0.5 else 1.0)

    def apply(self, img: Image.Image, d: Draw, size: tuple[int, int] | None = None) -> np.ndarray:
        h, w = size or self.contract.size
        small = img.resize((w, h), self._resample, box=d.box, reducing_gap=None)
        if d.flip:
            # Flip the small output, and in PIL: a reversed numpy view would make every later op strided.
            small = small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if d.policy is not None:
            small = trivial_op(small, *d.policy)
        out = np.array(small)
        if d.jitter is None and d.moire is None and d.glare is None:
            return out
        x = out.astype(np.float32)
        if d.jitter is not None:
            x = self._jitter(x, d.jitter)
        if d.moire is not None:
            self._moire(x, d.moire)
        if d.glare is not None:
            self._glare(x, d.glare)
        x += 0.5  # round, not truncate, in the uint8 cast
        return np.clip(x, 0.0, 255.0, out=x).astype(np.uint8)

    # -- the individual steps --------------------------------------------------------------------
    def _crop_box(self, width: int, height: int, rng: np.random.Generator) -> tuple[float, float, float, float]:
        """torchvision's RandomResizedCrop sampling, with float boxes (PIL resamples sub-pixel crops)."""
        area = width * height
        for _ in range(10):
            a = area * rng.uniform(*self.cfg.scale)
            r = math.exp(rng.uniform(*self._log_ratio))
            cw, ch = math.sqrt(a * r), math.sqrt(a / r)
            if cw <= width and ch <= height:
                x0, y0 = rng.uniform(0, width - cw), rng.uniform(0, height - ch)
                return _inside(x0, y0, x0 + cw, y0 + ch, width, height)
        # Extreme aspect or scale near 1: the largest centred crop with an allowed aspect.
        r = min(max(width / height, math.exp(self._log_ratio[0])), math.exp(self._log_ratio[1]))
        cw, ch = (height * r, height) if width / height > r else (width, width / r)
        x0, y0 = (width - cw) / 2, (height - ch) / 2
        return _inside(x0, y0, x0 + cw, y0 + ch, width, height)

    @staticmethod
    def jitter_matrix(fb: float, fc: float, fs: float, theta: float) -> np.ndarray:
        """Brightness -> contrast -> saturation -> hue, all linear in RGB: one 3x3 matrix (the contrast offset
        is added separately: it depends on the image's mean grey)."""
        sat = fs * np.eye(3) + (1 - fs) * np.outer(np.ones(3), _LUMA)
        return (_hue_matrix(theta) @ sat * (fb * fc)).astype(np.float32)

    def _jitter(self, x: np.ndarray, j: tuple[float, float, float, float]) -> np.ndarray:
        fb, fc, fs, theta = j
        # Contrast pivots on the mean grey. OpenCV's per-channel mean and its 3x4 colour transform (matrix and
        # offset in one SIMD pass) take a fifth of the time numpy's (N, 3) @ (3, 3) does: at 224 px that matmul
        # was a third of the whole augmentation.
        mean_luma = float(np.dot(cv2.mean(x)[:3], _LUMA)) * fb
        m = np.empty((3, 4), np.float32)
        m[:, :3] = self.jitter_matrix(fb, fc, fs, theta)
        # Saturation and hue leave grey (v, v, v) unchanged, so the contrast offset passes straight through.
        m[:, 3] = (1 - fc) * mean_luma
        return cv2.transform(x, m)

    def _glare(self, x: np.ndarray, g: tuple) -> None:
        """Phone-flash specular highlight: a soft ellipse blown out to white with a faint wide halo."""
        h, w = x.shape[:2]
        xx, yy = self._grids(h, w)
        s = min(h, w)
        fcx, fcy, fra, rb_ratio, ang, halo, hard, lift = g
        cx, cy, ra = fcx * w, fcy * h, fra * s
        rb = ra * rb_ratio
        hard = np.float32(hard)  # edge sharpness: wet/glossy surfaces give hard edges
        if lift != 1.0:  # the flash also lifts the whole exposure a little
            x *= np.float32(lift)
        dx, dy = xx - np.float32(cx), yy - np.float32(cy)
        cos, sin = np.float32(math.cos(ang)), np.float32(math.sin(ang))
        d2 = ((dx * cos + dy * sin) / np.float32(ra)) ** 2 + ((dy * cos - dx * sin) / np.float32(rb)) ** 2
        # Core: a Gaussian-to-super-Gaussian scaled past 1 and clipped = blown-out centre with a soft
        # edge, which is what a flash on a glossy bun looks like; an unclipped Gaussian reads as fog.
        m = np.exp(d2 * (1 - hard + hard * np.sqrt(d2)) * np.float32(-0.5)) * np.float32(1.5)
        m += np.float32(halo) * np.exp(d2 * np.float32(-0.5 / 9.0))  # faint halo, 3x the radius
        np.minimum(m, 1.0, out=m)
        x += (255.0 - x) * m[..., None]

    def _moire(self, x: np.ndarray, mo: tuple) -> None:
        """Photo of a screen: two fine gratings (screen pixels vs. sensor) at a small angle multiply into
        slow beat bands; the R, G, B sub-pixels sit at different phases, hence the rainbow fringes."""
        h, w = x.shape[:2]
        xx, yy = self._grids(h, w)
        period, th1, dth, k_ratio, curve_u, fine, amp, fringe_u = mo  # period in output pixels
        th2 = th1 + dth
        k1 = 2 * math.pi / period
        k2 = k1 * k_ratio
        # A gently curved second grating: screens are photographed off-axis through a lens.
        curve = curve_u * math.pi / (h * h + w * w)
        dx, dy = xx - np.float32(w / 2), yy - np.float32(h / 2)
        a = dx * np.float32(k1 * math.cos(th1)) + dy * np.float32(k1 * math.sin(th1))
        b = dx * np.float32(k2 * math.cos(th2)) + dy * np.float32(k2 * math.sin(th2))
        b += np.float32(curve) * (dx * dx + dy * dy)
        # cos(a)cos(b) = (cos(a-b) + cos(a+b)) / 2: the slow beat plus a fine texture near the pixel
        # pitch. The camera's low-pass optics attenuate the fine term most, so it gets the smaller weight.
        waves = np.empty((4, h, w), np.float32)
        np.cos(a - b, out=waves[0]), np.sin(a - b, out=waves[1])
        np.cos(a + b, out=waves[2]), np.sin(a + b, out=waves[3])
        # Per channel: cos(t + phi) = cos t cos phi - sin t sin phi. One (N, 4) @ (4, 3) matmul gives the
        # HxWx3 factor directly (broadcasting into a last axis of 3 is 4x slower). The weights
        # (1 - fine) + fine = 1, so the relative change of any pixel is at most amp.
        factor = waves.reshape(4, -1).T @ moire_coefficients(fine, amp, fringe_u)
        factor += 1.0
        x *= factor.reshape(h, w, 3)


def moire_coefficients(fine: float, amp: float, fringe_u: float) -> np.ndarray:
    """(4, 3): per channel, the weights of cos(a-b), sin(a-b), cos(a+b), sin(a+b) in the moiré factor."""
    fringe = fringe_u * 2 * math.pi / 3
    phi = np.array([-fringe, 0.0, fringe])
    return (amp * np.stack([(1 - fine) * np.cos(phi), -(1 - fine) * np.sin(phi),
                            fine * np.cos(phi), -fine * np.sin(phi)])).astype(np.float32)


@dataclass
class Draw:
    """One image's random augmentation choices (``Augmenter.draw``). ``box``: the crop in source pixels (x0, y0,
    x1, y1); ``jitter``: (brightness, contrast, saturation factors, hue angle); ``moire``/``glare``: their
    parameters, None when the effect is off for this image."""

    box: tuple[float, float, float, float]
    flip: bool = False
    jitter: tuple[float, float, float, float] | None = None
    moire: tuple | None = None
    glare: tuple | None = None
    policy: tuple[int, int, bool] | None = None  # TrivialAugment: (op index, strength bin, negative sign)


_TRIVIAL_BINS = 31
_TRIVIAL_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
                "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")


def trivial_op(img: Image.Image, op: int, level: int, negative: bool) -> Image.Image:
    """One TrivialAugmentWide op at strength ``level`` of 0..30 (torchvision's magnitude table: shear 0.99, rotate
    135 degrees, enhance factors 1 +- 0.99, posterize 8..2 bits, solarize 255..0). Translation is 14% of the side
    at most: the paper's 32 pixels at 224 px. Geometric ops fill with black, as in the paper."""
    name, f = _TRIVIAL_OPS[op], level / (_TRIVIAL_BINS - 1)
    sign = -1.0 if negative else 1.0
    w, h = img.size
    if name == "identity":
        return img
    if name in ("shear_x", "shear_y", "translate_x", "translate_y"):
        # Image.transform maps output to input pixels: (a, b, c, d, e, f) with x_in = a x + b y + c.
        m = {"shear_x": (1, sign * 0.99 * f, 0, 0, 1, 0), "shear_y": (1, 0, 0, sign * 0.99 * f, 1, 0),
             "translate_x": (1, 0, sign * 0.14 * f * w, 0, 1, 0),
             "translate_y": (1, 0, 0, 0, 1, sign * 0.14 * f * h)}[name]
        return img.transform(img.size, Image.Transform.AFFINE, m, Image.Resampling.NEAREST, fillcolor=(0, 0, 0))
    if name == "rotate":
        return img.rotate(sign * 135.0 * f, Image.Resampling.NEAREST, fillcolor=(0, 0, 0))
    if name in ("brightness", "color", "contrast", "sharpness"):
        enhance = {"brightness": ImageEnhance.Brightness, "color": ImageEnhance.Color,
                   "contrast": ImageEnhance.Contrast, "sharpness": ImageEnhance.Sharpness}[name]
        return enhance(img).enhance(1.0 + sign * 0.99 * f)
    if name == "posterize":
        return ImageOps.posterize(img, 8 - round(6 * f))
    if name == "solarize":
        return ImageOps.solarize(img, round(255 * (1 - f)))
    if name == "autocontrast":
        return ImageOps.autocontrast(img)
    return ImageOps.equalize(img)


# Short sides of the low-resolution views (px): thumbnails, crops from a wide shot, photos from another app, where a
# subject fills a few dozen pixels. Drawn log-uniformly per photo, so no one size is taught.
LOW_RES_SIDES = (32, 112)


def low_resolution(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The photo as a low-resolution copy would show it: downscaled (with antialiasing) so that its short side is
    drawn from ``LOW_RES_SIDES``; the contract's resize then scales it back up, blurred as such a photo is."""
    lo, hi = LOW_RES_SIDES
    side = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    w, h = img.size
    if min(w, h) <= side:
        return img
    k = side / min(w, h)
    return img.resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BILINEAR, reducing_gap=2.0)


def eval_transform(contract: Contract) -> Callable[[Image.Image], np.ndarray]:
    """What validation/inference does: exactly the contract's resize, nothing random."""
    return contract.fit
