"""Phone-photo shifts of held-out images: what a model meets on its users' phones and not in its val split.

Each corruption is a deterministic function of (pixels, seed) on uint8 NHWC images already at the
contract's size, so every model compared sees byte-identical inputs (parity, budgets, calibration,
benchmarks). They follow the common corruptions of Hendrycks & Dietterich (2019, ImageNet-C) that a phone
actually produces — JPEG re-compression by messengers, focus/motion blur, under/over exposure, sensor noise at
night, a tilted hand, a flash, photographing a screen (moiré) — at one realistic severity each, not the
benchmark's extreme levels. Torch-free (numpy + Pillow).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from ..errors import PocketVisionError


def _per_image(fn: Callable[[Image.Image, np.random.Generator], Image.Image]):
    def apply(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.stack([np.asarray(fn(Image.fromarray(a), rng).convert("RGB"), dtype=np.uint8) for a in x])
    return apply


def _jpeg(im: Image.Image, rng) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(rng.integers(12, 25)))  # a messenger's re-compression
    return Image.open(io.BytesIO(buf.getvalue()))


def _blur(im: Image.Image, rng) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1.5, 2.5)) * im.width / 224))


def _rotate(im: Image.Image, rng) -> Image.Image:
    # A tilted hand: rotate, then zoom so no black corner enters the frame (as a phone's crop would).
    deg = float(rng.choice([-1, 1]) * rng.uniform(15, 25))
    r = np.deg2rad(abs(deg))
    zoom = np.cos(r) + np.sin(r)
    w, h = im.size
    rot = im.rotate(deg, resample=Image.BILINEAR)
    cw, ch = w / zoom, h / zoom
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    return rot.resize((w, h), Image.BILINEAR, box=box)


def _gamma(x: np.ndarray, gain: float, gamma: float) -> np.ndarray:
    return (np.clip((x / 255.0) ** gamma * gain, 0, 1) * 255 + 0.5).astype(np.uint8)


def _dark(x: np.ndarray, rng) -> np.ndarray:
    # Under-exposed and noisy, as a phone at night: low gain, then photon/read noise.
    y = _gamma(x.astype(np.float32), 0.45, 1.4).astype(np.float32)
    return np.clip(y + rng.normal(0, 6, x.shape), 0, 255).astype(np.uint8)


def _bright(x: np.ndarray, rng) -> np.ndarray:
    return _gamma(x.astype(np.float32), 1.35, 0.7)


def _noise(x: np.ndarray, rng) -> np.ndarray:
    return np.clip(x.astype(np.float32) + rng.normal(0, 14, x.shape), 0, 255).astype(np.uint8)


def _flash(x: np.ndarray, rng) -> np.ndarray:
    # On-camera flash: a bright, washed-out centre falling off to dark corners, with a cool cast.
    n, h, w, _ = x.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    d2 = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2
    light = (0.55 + 0.9 * np.exp(-d2 / 0.35))[None, :, :, None]
    y = x.astype(np.float32) * light
    grey = y.mean(3, keepdims=True)
    y = 0.7 * y + 0.3 * grey + np.array([0, 4, 12], np.float32)
    return np.clip(y, 0, 255).astype(np.uint8)


def _moire(x: np.ndarray, rng) -> np.ndarray:
    # A photo of a screen: the camera's pixel grid beats against the display's, giving coloured fringes.
    n, h, w, _ = x.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty_like(x)
    for i in range(n):
        a, f = rng.uniform(0, np.pi), rng.uniform(0.35, 0.6)
        phase = f * (xx * np.cos(a) + yy * np.sin(a))
        wave = np.stack([np.sin(phase), np.sin(phase + 2.1), np.sin(phase + 4.2)], -1)
        out[i] = np.clip(x[i].astype(np.float32) * (0.82 + 0.18 * wave), 0, 255).astype(np.uint8)
    return out


def _gray(x: np.ndarray, rng) -> np.ndarray:
    g = (x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return np.repeat(g + 0.5, 3, -1).astype(np.uint8)


CORRUPTIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "jpeg": _per_image(_jpeg), "blur": _per_image(_blur), "dark": _dark, "bright": _bright, "noise": _noise,
    "rotate": _per_image(_rotate), "flash": _flash, "moire": _moire, "gray": _gray,
}


def corrupt(pixels: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """One corruption of every image (uint8 NHWC -> uint8 NHWC), deterministic for a seed."""
    if kind not in CORRUPTIONS:
        raise PocketVisionError(f"unknown corruption {kind!r} (choose from: {', '.join(CORRUPTIONS)}).")
    if not len(pixels):
        return pixels
    rng = np.random.default_rng([seed, sorted(CORRUPTIONS).index(kind)])
    return CORRUPTIONS[kind](np.ascontiguousarray(pixels), rng)


def shifted_copy(pixels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Every image once, each under one corruption (cycled through all kinds): a shifted twin of a held-out set
    at the cost of one more pass. -> (pixels, the corruption of each image)."""
    kinds = list(CORRUPTIONS)
    which = [kinds[i % len(kinds)] for i in range(len(pixels))]
    out = np.empty_like(pixels)
    for k in kinds:
        idx = [i for i, w in enumerate(which) if w == k]
        if idx:
            out[idx] = corrupt(pixels[idx], k, seed)
    return out, which
