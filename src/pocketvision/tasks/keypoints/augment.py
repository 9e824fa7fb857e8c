"""Keypoint augmentation: one homography moves the pixels *and* the points, so they cannot disagree.

Every geometric step (the contract's resize, flip, rotation, scale, translation, crop = zoom + shift,
perspective) is a 3x3 matrix in continuous pixel coordinates (pixel i spans [i, i+1)); they are
multiplied into one matrix, the image is warped once (one resampling, PIL ``PERSPECTIVE``, which
samples at pixel centres like this convention) and the points are mapped by the same matrix. Points
that leave the frame become invisible (v=0); a mirrored image also swaps its flip pairs (left eye
becomes right eye), the bug that cost the dog-face developer days.

numpy + Pillow only, so data-loading workers do not need torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ...core.contract import Contract
from ...data.augment import AugmentConfig, Augmenter, _config_error
from .metrics import pose_scores


class KeypointAugmentConfig(BaseModel):
    """Geometric + photometric augmentation for keypoints. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    hflip: float = Field(0.5, ge=0.0, le=1.0)  # probability; swaps the flip pairs
    # max degrees either way; "auto": sized from the training labels' own roll (``rotation_for``). 15 stays the
    # default: on faces5's 40-epoch recipe "auto" (27) gave 5.97% NME on clean val, 6.29% / 7.32% on its most rotated
    # / least frontal fifths, against 5.73 / 6.14 / 7.13% at 15 (one seed each; no gain on the rotated faces).
    rotate: float | Literal["auto"] = 15.0
    scale: tuple[float, float] = (0.9, 1.1)  # zoom factor (>1 = crop in, <1 = zoom out with border)
    translate: float = Field(0.06, ge=0.0, le=0.5)  # max shift as a fraction of the side
    perspective: float = Field(0.02, ge=0.0, le=0.25)  # max corner displacement, fraction of the side
    brightness: float = Field(0.3, ge=0.0, le=1.0)
    contrast: float = Field(0.3, ge=0.0, le=1.0)
    saturation: float = Field(0.3, ge=0.0, le=1.0)
    hue: float = Field(0.02, ge=0.0, le=0.5)
    grayscale: float = Field(0.05, ge=0.0, le=1.0)  # probability (some data sets mix in grey photos)
    glare: float = Field(0.0, ge=0.0, le=1.0)
    # probability of hiding a random rectangle (grey or noise, 10-40% of each side); the points under it keep their
    # labels, so the model learns to place an eye behind a hand or a sunglass frame from the rest of the face.
    # Off by default: with 0.3 (and rotation 'auto'), faces5's 40-epoch recipe lost on clean val (5.73% -> 6.16%
    # NME) and on its rotated / least frontal fifths (6.14 -> 6.63%, 7.13 -> 7.80%); rotation alone: see above.
    occlude: float = Field(0.0, ge=0.0, le=1.0)

    @field_validator("rotate")
    @classmethod
    def _degrees(cls, v):
        if v != "auto" and not 0.0 <= float(v) <= 180.0:
            raise ValueError("rotate must be 'auto' or between 0 and 180 degrees")
        return v

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _config_error(e) from None


AUTO_ROTATE_RANGE = (15.0, 45.0)


def rotation_for(points: np.ndarray) -> float:
    """Rotation range (degrees either way) for labelled training points (N, K, 3): 1.5x the 99th percentile of their
    in-plane roll against the mean shape, within 15-45. A data set of upright faces (faces5: 99th percentile 19
    degrees) gets 28, near the 30 that face-alignment models train with (HRNet), so tilted heads beyond the data's
    own tail are seen in training."""
    roll, _ = pose_scores(points)
    if not len(roll):
        return AUTO_ROTATE_RANGE[0]
    return float(np.clip(round(1.5 * np.percentile(np.abs(roll), 99)), *AUTO_ROTATE_RANGE))


def contract_matrix(src_w: int, src_h: int, contract: Contract) -> np.ndarray:
    """The contract's resize (squash / centre crop / letterbox) as a 3x3 map from source pixels to model
    input pixels, with the same rounding as :meth:`Contract.fit`."""
    h, w = contract.size
    if contract.resize == "squash":
        return np.diag([w / src_w, h / src_h, 1.0])
    if contract.resize == "center_crop":
        scale = max(h, w) / contract.crop_pct / min(src_w, src_h)
        nw, nh = max(w, round(src_w * scale)), max(h, round(src_h * scale))
        left, top = (nw - w) // 2, (nh - h) // 2
        return np.array([[nw / src_w, 0, -left], [0, nh / src_h, -top], [0, 0, 1.0]])
    # letterbox (ImageOps.pad): fit inside, centred
    ratio = min(w / src_w, h / src_h)
    nw, nh = round(src_w * ratio), round(src_h * ratio)
    nw, nh = (w, nh) if src_w / src_h > w / h else (nw, h)
    nw, nh = min(nw, w), min(nh, h)
    return np.array([[nw / src_w, 0, (w - nw) // 2], [0, nh / src_h, (h - nh) // 2], [0, 0, 1.0]])


def apply_matrix(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Map (N, 2) points by a 3x3 homography."""
    p = np.concatenate([xy, np.ones((len(xy), 1))], axis=1) @ m.T
    return p[:, :2] / p[:, 2:3]


def points_to_source(points: np.ndarray, sizes, contract: Contract) -> np.ndarray:
    """(N, K, >=2) model-input pixel coordinates -> each original image's pixels (the inverse of the
    contract's resize; ``sizes`` = (w, h) per image). Extra columns (scores) pass through."""
    out = np.array(points, np.float64, copy=True)
    for i, (w, h) in enumerate(sizes):
        inv = np.linalg.inv(contract_matrix(int(w), int(h), contract))
        out[i, :, :2] = apply_matrix(inv, out[i, :, :2])
    return out


def hflip_matrix(w: int) -> np.ndarray:
    return np.array([[-1.0, 0, w], [0, 1, 0], [0, 0, 1]])


def random_matrix(rng: np.random.Generator, cfg: KeypointAugmentConfig, w: int, h: int) -> tuple[np.ndarray, bool]:
    """A random geometric transform of the model-input frame -> (3x3, mirrored?)."""
    cx, cy = w / 2, h / 2
    rot = AUTO_ROTATE_RANGE[0] if cfg.rotate == "auto" else float(cfg.rotate)
    ang = math.radians(rng.uniform(-rot, rot))
    s = math.exp(rng.uniform(math.log(cfg.scale[0]), math.log(cfg.scale[1])))
    tx, ty = rng.uniform(-cfg.translate, cfg.translate, 2) * (w, h)
    c, si = math.cos(ang) * s, math.sin(ang) * s
    # rotate + scale about the centre, then shift
    m = np.array([[c, -si, cx - c * cx + si * cy + tx], [si, c, cy - si * cx - c * cy + ty], [0, 0, 1.0]])
    flipped = rng.random() < cfg.hflip
    if flipped:
        m = hflip_matrix(w) @ m
    if cfg.perspective:
        src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
        dst = src + rng.uniform(-cfg.perspective, cfg.perspective, (4, 2)) * (w, h)
        m = homography(src, dst) @ m
    return m, flipped


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 matrix taking 4 points ``src`` to ``dst`` (direct linear transform)."""
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        b.append(u)
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b.append(v)
    h = np.linalg.solve(np.asarray(a, np.float64), np.asarray(b, np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def warp_image(img: Image.Image, m: np.ndarray, size: tuple[int, int], resample=Image.Resampling.BILINEAR) -> Image.Image:
    """Warp ``img`` by ``m`` (source -> output pixels) into an image of ``size`` = (w, h)."""
    inv = np.linalg.inv(m)
    inv = inv / inv[2, 2]
    # Outside the source: mid grey, the same fill as letterbox, so borders carry no colour cue.
    return img.transform(size, Image.Transform.PERSPECTIVE, tuple(inv.ravel()[:8]), resample=resample,
                         fillcolor=(114, 114, 114))


def transform_points(points: np.ndarray, m: np.ndarray, size: tuple[int, int], flip_perm: np.ndarray | None,
                     keep_outside: bool = False) -> np.ndarray:
    """Map (K, 3) x, y, v by ``m``; points leaving the (w, h) frame become v=0 (unless ``keep_outside``);
    ``flip_perm`` (the schema's permutation) relabels a mirrored image's points."""
    out = points.astype(np.float32).copy()
    out[:, :2] = apply_matrix(m, points[:, :2].astype(np.float64))
    if not keep_outside:
        w, h = size
        inside = (out[:, 0] >= 0) & (out[:, 0] < w) & (out[:, 1] >= 0) & (out[:, 1] < h)
        out[~inside, 2] = 0.0
    if flip_perm is not None:
        out = out[flip_perm]
    return out


def draw_occlusion(h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int, np.ndarray | None]:
    """One hidden rectangle of an (h, w) image: 10-40% of each side, anywhere -> (top, left, rh, rw, noise or None
    for mid grey)."""
    rh, rw = (int(round(side * rng.uniform(0.1, 0.4))) for side in (h, w))
    top, left = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
    noise = None if rng.random() < 0.5 else rng.uniform(0, 255, (rh, rw, 3))
    return top, left, rh, rw, noise


def occlude(x: np.ndarray, occ: tuple) -> None:
    """Hide the rectangle ``occ`` (``draw_occlusion``) of ``x`` (H, W, 3 float, in place)."""
    top, left, rh, rw, noise = occ
    x[top:top + rh, left:left + rw] = 114.0 if noise is None else noise


@dataclass
class KeypointDraw:
    """One photo's random choices (``KeypointAugmenter.draw``): ``total`` maps source pixels to model-input pixels
    (the contract's resize and the random geometry), ``points`` are already mapped (and relabelled when mirrored)."""

    total: np.ndarray
    points: np.ndarray
    jitter: tuple[float, float, float, float] | None = None
    glare: tuple | None = None
    gray: bool = False
    occlude: tuple | None = None


class KeypointAugmenter:
    """``(pil_rgb, points (K,3), rng) -> (uint8 HxWx3 at the contract size, points (K,3))``."""

    def __init__(self, cfg: KeypointAugmentConfig | dict | None, contract: Contract, flip_perm: np.ndarray):
        self.cfg = KeypointAugmentConfig(**cfg) if isinstance(cfg, dict) else (cfg or KeypointAugmentConfig())
        self.contract, self.flip_perm = contract, np.asarray(flip_perm)
        h, w = contract.size
        self.size = (w, h)
        self._photo = Augmenter(AugmentConfig(brightness=self.cfg.brightness, contrast=self.cfg.contrast,
                                              saturation=self.cfg.saturation, hue=self.cfg.hue, glare=self.cfg.glare,
                                              moire=0.0, hflip=0.0), contract)
        self._resample = Image.Resampling[contract.interpolation.upper()]

    def __call__(self, img: Image.Image, points: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        if not self.cfg.enabled:
            base = contract_matrix(img.width, img.height, self.contract)
            return np.array(warp_image(img, base, self.size, self._resample)), transform_points(points, base, self.size, None, True)
        d = self.draw(img.width, img.height, points, rng)
        return self.apply(img, d), d.points

    def draw(self, width: int, height: int, points: np.ndarray, rng) -> KeypointDraw:
        """Every random choice for one photo, in one place: the per-image path (``apply``) and the batched one
        (``data/batch_augment.py``) use the same draws."""
        rng = np.random.default_rng(rng)
        c = self.cfg
        m, flipped = random_matrix(rng, c, *self.size)
        total = m @ contract_matrix(width, height, self.contract)
        d = KeypointDraw(total, transform_points(points, total, self.size, self.flip_perm if flipped else None))
        if c.brightness or c.contrast or c.saturation or c.hue:
            d.jitter = self._photo.draw_jitter(rng)
        if c.glare and rng.random() < c.glare:
            d.glare = self._photo.draw_glare(rng)
        d.gray = bool(c.grayscale and rng.random() < c.grayscale)
        if c.occlude and rng.random() < c.occlude:
            d.occlude = draw_occlusion(self.size[1], self.size[0], rng)
        return d

    def apply(self, img: Image.Image, d: KeypointDraw) -> np.ndarray:
        x = np.array(warp_image(img, d.total, self.size, self._resample)).astype(np.float32)
        if d.jitter is not None:
            x = self._photo._jitter(x, d.jitter)
        if d.glare is not None:
            self._photo._glare(x, d.glare)
        if d.gray:
            x[:] = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        if d.occlude is not None:
            occlude(x, d.occlude)
        x += 0.5
        return np.clip(x, 0, 255, out=x).astype(np.uint8)
