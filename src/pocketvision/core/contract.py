"""The preprocessing contract: how camera pixels become the model's input.

Written once into the bundle and read by every runtime (torch, onnxruntime, browser...). Exported
graphs take uint8 RGB NHWC pixels at ``size`` and do cast/normalise inside; only the *resize* happens
outside the graph, and it is done by :func:`fit` here so every Python path resizes identically.

numpy + Pillow only: this module is on the torch-free runtime path.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError, PocketVisionError, unknown_choice
from .tar_members import read_member

RESIZE_MODES = ("squash", "center_crop", "letterbox")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "nearest": Image.Resampling.NEAREST}

# Truncated JPEGs must fail loudly (and be skipped by the loaders), not decode half-grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class Contract:
    """Input contract. ``mean``/``std`` are in 0-255 pixel units: ``x = (pixel - mean) / std``."""

    size: tuple[int, int] = (224, 224)  # (height, width)
    resize: str = "squash"
    crop_pct: float = 0.875  # centre_crop only: resize the short side to size/crop_pct, then crop
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    color: str = "RGB"
    layout: str = "NHWC"
    dtype: str = "uint8"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise unknown_choice("contract.resize", self.resize, RESIZE_MODES)
        if self.interpolation not in _RESAMPLE:
            raise unknown_choice("contract.interpolation", self.interpolation, _RESAMPLE)
        h, w = self.size
        if not (isinstance(h, int) and isinstance(w, int) and 8 <= h <= 1024 and 8 <= w <= 1024):
            raise PocketVisionError(f"contract.size must be two integers in [8, 1024] (what training makes). "
                                    f"Got {self.size}.")
        if not 0.1 <= self.crop_pct <= 1.0:
            raise PocketVisionError(f"contract.crop_pct must be in [0.1, 1]. Got {self.crop_pct}.")
        if any(s <= 0 for s in self.std):
            raise PocketVisionError(f"contract.std must be positive. Got {self.std}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Contract:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in ("size", "mean", "std"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NHWC -> float32 NCHW, exactly what the exported graph does inside."""
        x = pixels.astype(np.float32)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    # -- resizing (outside the graph) ------------------------------------------------------------
    def decode_hint(self) -> tuple[int, int]:
        """The smallest (w, h) a decoder may shrink to and still feed :meth:`fit` without upscaling."""
        h, w = self.size
        if self.resize == "center_crop":
            h, w = round(h / self.crop_pct), round(w / self.crop_pct)
        m = max(h, w)  # orientation may still be rotated by EXIF, so ask for the larger side both ways
        return m, m

    def fit(self, img: Image.Image) -> np.ndarray:
        """Resize an RGB PIL image per the contract -> uint8 HxWx3."""
        h, w = self.size
        rs = _RESAMPLE[self.interpolation]
        if self.resize == "squash":
            out = img.resize((w, h), rs, reducing_gap=None)
        elif self.resize == "center_crop":
            scale = max(h, w) / self.crop_pct / min(img.size)
            nw, nh = max(w, round(img.width * scale)), max(h, round(img.height * scale))
            img = img.resize((nw, nh), rs)
            left, top = (nw - w) // 2, (nh - h) // 2
            out = img.crop((left, top, left + w, top + h))
        else:  # letterbox: keep aspect, pad with grey
            out = ImageOps.pad(img, (w, h), method=rs, color=(114, 114, 114))
        return np.asarray(out, dtype=np.uint8)

    def load(self, source: str | os.PathLike | bytes) -> np.ndarray:
        """File path or encoded bytes -> uint8 HxWx3 ready for the model."""
        return self.fit(load_rgb(source, min_size=self.decode_hint()))


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency is composited on white (what a person sees)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        # 16-bit PNGs arrive as I;16 or I with values up to 65535; a naive convert('L') clips to 255.
        top = 65535.0 if a.max() > 255 else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "1":
        return img.convert("L").convert("RGB")
    return img.convert("RGB")  # L, P, CMYK, YCbCr, LAB, HSV


MAX_PIXELS = 40_000_000  # one image's decode budget: 120 MB of RGB; phones shoot 12-50 MP, JPEGs decode reduced
# Pillow warns from 89 MP (its own, looser bomb check); every image that big is over our budget and refused in one
# line below, so its two-line warning would only repeat that.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def pixel_budget() -> int:
    """The most pixels one image may decode to: ``POCKETVISION_MAX_PIXELS`` or 40 million."""
    raw = os.environ.get("POCKETVISION_MAX_PIXELS")
    if raw is None:
        return MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise PocketVisionError(f"POCKETVISION_MAX_PIXELS={raw[:40]!r}: give a whole number of pixels, e.g. 100000000.")
    return value


def _over_budget(name: str, w: int, h: int, budget: int) -> ImageDecodeError:
    return ImageDecodeError(f"{name}: {w}x{h} pixels ({w * h / 1e6:.0f} MP) is over the {budget / 1e6:g} MP budget for "
                            "one image; skipped. Downscale it, or raise the budget: POCKETVISION_MAX_PIXELS="
                            f"{w * h}.")


def load_rgb(source: str | os.PathLike | bytes, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image to upright 8-bit RGB.

    ``min_size`` (w, h) lets JPEGs decode at 1/2, 1/4 or 1/8 scale (``Image.draft``) when the target
    is much smaller: a 12 MP photo is never fully decoded to make a 224 px input. What would still decode to more
    than the pixel budget is refused from the header, before a pixel is decoded.
    """
    name = "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb")
    except NotADirectoryError as e:  # SHARD.tar/member: an image inside a WebDataset shard (data/shards.py)
        member = read_member(source)
        if member is None:
            raise ImageDecodeError(f"{name}: cannot open ({e.strerror or e}).") from None
        fp = io.BytesIO(member)
    except OSError as e:
        raise ImageDecodeError(f"{name}: cannot open ({e.strerror or e}).") from None
    with fp:
        try:
            img = Image.open(fp)
            if min_size is not None and img.format == "JPEG":
                img.draft("RGB", min_size)
            budget = pixel_budget()
            if img.width * img.height > budget:  # the size decoding will allocate (after a JPEG's draft)
                raise _over_budget(name, img.width, img.height, budget)
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
        except Image.DecompressionBombError:  # Pillow's own cap (178 MP) fires at open, before our check can
            raise ImageDecodeError(f"{name}: over the {pixel_budget() / 1e6:g} MP budget for one image and Pillow's "
                                   "limit; skipped. Downscale it.") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ImageDecodeError(f"{name}: not a readable image ({e}). Remove or replace the file.") from None


def is_image_file(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
