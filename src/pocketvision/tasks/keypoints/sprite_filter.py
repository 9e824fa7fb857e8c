"""The keypoint task's `pocketvision filter`: stick a sprite on two keypoints in every frame of a video
(the dog-face app).

Per frame: decode (OpenCV) -> the model's contract resize -> predict (a bundle, ``.onnx`` or ``.tflite``)
-> points back in frame pixels -> One Euro smoothing (Casiez et al. 2012: heavy smoothing when the
points are still, little lag when they move, so the glasses neither jitter nor trail) -> a similarity
transform (scale, rotation, shift) that takes the sprite's two anchor points onto the two keypoints
-> alpha blend -> encode. The output is written to a temporary file and renamed when complete.

Built-in sprites are drawn by code (no image files shipped): glasses, mustache, crown.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ...data.video import cv2_module, filter_frames
from ...errors import PocketVisionError, did_you_mean, unknown_choice

BUILTIN_SPRITES = ("glasses", "mustache", "crown")


@dataclass
class Sprite:
    rgba: np.ndarray  # H x W x 4 uint8
    anchors: np.ndarray  # (2, 2): where the two anchor keypoints sit on the sprite, in sprite pixels


def builtin_sprite(name: str) -> Sprite:
    """Drawn at 4x and downsampled, so the edges are antialiased."""
    s = 4
    if name == "glasses":
        w, h = 300, 100
        im = Image.new("RGBA", (w * s, h * s), (0, 0, 0, 0))
        d = ImageDraw.Draw(im)
        for cx in (75, 225):
            d.ellipse([(cx - 60) * s, 10 * s, (cx + 60) * s, 90 * s], fill=(20, 20, 30, 150), outline=(10, 10, 10, 255),
                      width=9 * s)
        d.arc([130 * s, 30 * s, 170 * s, 70 * s], 200, 340, fill=(10, 10, 10, 255), width=8 * s)
        d.line([0, 35 * s, 16 * s, 40 * s], fill=(10, 10, 10, 255), width=8 * s)
        d.line([(w - 16) * s, 40 * s, w * s, 35 * s], fill=(10, 10, 10, 255), width=8 * s)
        anchors = [(75, 50), (225, 50)]
    elif name == "mustache":
        w, h = 240, 80
        im = Image.new("RGBA", (w * s, h * s), (0, 0, 0, 0))
        d = ImageDraw.Draw(im)
        for sign in (-1, 1):
            pts = [(120 + sign * x, 30 + 28 * math.sin(x / 120 * math.pi) - (x / 120) ** 3 * 30) for x in range(0, 121, 4)]
            pts += [(120 + sign * x, 30 + 10 * math.sin(x / 120 * math.pi) - (x / 120) ** 3 * 34) for x in range(120, -1, -4)]
            d.polygon([(x * s, y * s) for x, y in pts], fill=(60, 35, 20, 255))
        anchors = [(40, 30), (200, 30)]  # the mouth corners
    elif name == "crown":
        w, h = 220, 120
        im = Image.new("RGBA", (w * s, h * s), (0, 0, 0, 0))
        d = ImageDraw.Draw(im)
        pts = [(10, 110), (10, 30), (60, 70), (110, 5), (160, 70), (210, 30), (210, 110)]
        d.polygon([(x * s, y * s) for x, y in pts], fill=(240, 190, 30, 255), outline=(150, 100, 0, 255), width=4 * s)
        for x, y in ((10, 30), (110, 5), (210, 30)):
            d.ellipse([(x - 9) * s, (y - 9) * s, (x + 9) * s, (y + 9) * s], fill=(200, 30, 60, 255))
        anchors = [(60, 230), (160, 230)]  # the eyes sit well below the crown
    else:
        raise unknown_choice("sprite", name, BUILTIN_SPRITES)
    return Sprite(np.asarray(im.resize((w, h), Image.Resampling.LANCZOS)), np.asarray(anchors, np.float64))


def load_sprite(spec: str, anchors: str | None = None) -> Sprite:
    """A built-in name or a PNG (RGBA); anchors ``x1,y1,x2,y2`` in sprite pixels (default: 30% and 70% of
    the width at mid-height)."""
    if spec in BUILTIN_SPRITES:
        sp = builtin_sprite(spec)
    else:
        p = Path(spec)
        if not p.exists():
            raise PocketVisionError(f"{p}: sprite not found (a PNG file, or one of {', '.join(BUILTIN_SPRITES)}).")
        try:
            img = Image.open(p).convert("RGBA")
        except OSError as e:
            raise PocketVisionError(f"{p}: not a readable image ({e}).") from None
        w, h = img.size
        sp = Sprite(np.asarray(img), np.array([[0.3 * w, 0.5 * h], [0.7 * w, 0.5 * h]]))
    if anchors:
        try:
            v = [float(x) for x in anchors.split(",")]
        except ValueError:
            v = []
        if len(v) != 4:
            raise PocketVisionError(f"--sprite-anchors {anchors!r}: give four numbers x1,y1,x2,y2 (sprite pixels).")
        sp.anchors = np.array(v, np.float64).reshape(2, 2)
    if np.allclose(sp.anchors[0], sp.anchors[1]):
        raise PocketVisionError("the sprite's two anchor points must differ.")
    return sp


class OneEuro:
    """One Euro filter over an array of values (Casiez, Roussel, Vogel, CHI 2012)."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None

    @staticmethod
    def _alpha(cutoff, dt: float):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, dt: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.x is None:
            self.x, self.dx = x.copy(), np.zeros_like(x)
            return x
        dx = (x - self.x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self.dx = a_d * dx + (1 - a_d) * self.dx
        cutoff = self.min_cutoff + self.beta * np.abs(self.dx)
        a = self._alpha(cutoff, dt)
        self.x = a * x + (1 - a) * self.x
        return self.x.copy()


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix taking the two points ``src`` onto ``dst`` by scale + rotation + shift."""
    vs, vd = src[1] - src[0], dst[1] - dst[0]
    zs, zd = complex(*vs), complex(*vd)
    k = zd / zs
    a, b = k.real, k.imag
    m = np.array([[a, -b, 0.0], [b, a, 0.0]])
    m[:, 2] = dst[0] - m[:, :2] @ src[0]
    return m


def blend_sprite(frame: np.ndarray, sprite: Sprite, m: np.ndarray) -> None:
    """Warp the RGBA sprite by the 2x3 ``m`` and alpha-blend it into the BGR ``frame`` in place, touching
    only the sprite's bounding box."""
    import cv2
    h, w = sprite.rgba.shape[:2]
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64) @ m[:, :2].T + m[:, 2]
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int)
    fh, fw = frame.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, fw), min(y1, fh)
    if x1 <= x0 or y1 <= y0:
        return
    mm = m.copy()
    mm[:, 2] -= (x0, y0)
    bgra = sprite.rgba[..., [2, 1, 0, 3]]
    patch = cv2.warpAffine(bgra, mm, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=(0, 0, 0, 0))
    alpha = patch[..., 3:4].astype(np.float32) * (1 / 255)
    roi = frame[y0:y1, x0:x1]
    roi[:] = (roi * (1 - alpha) + patch[..., :3] * alpha + 0.5).astype(np.uint8)


def run_filter(model, video: str | os.PathLike, out: str | os.PathLike, sprite: str = "glasses",
               anchor: str = "left_eye,right_eye", sprite_anchors: str | None = None, smoothing: float = 1.0,
               min_score: float = 0.2, draw_points: bool = False, max_frames: int | None = None) -> dict[str, Any]:
    """``model``: a keypoint bundle or predictor (``run_pixels``, ``contract``, ``labels``).
    -> stats: frames, fps end to end, per-stage milliseconds, output path, frames with the sprite."""
    from .augment import points_to_source
    cv2 = cv2_module()
    run_pixels, contract, names = model.run_pixels, model.contract, list(model.labels)
    parts = [p.strip() for p in anchor.split(",")]
    if len(parts) != 2:
        raise PocketVisionError(f"--anchor {anchor!r}: name exactly two points, e.g. left_eye,right_eye.")
    idx = []
    for p in parts:
        if p not in names:
            raise PocketVisionError(f"--anchor: the model has no point {p!r} (points: {names}).{did_you_mean(p, names)}")
        idx.append(names.index(p))
    sp = load_sprite(sprite, sprite_anchors)
    smooth = OneEuro(min_cutoff=smoothing, beta=0.05)
    h, w = contract.size
    shown = 0

    def process(frame: np.ndarray, fps: float, times: dict[str, float]) -> np.ndarray:
        nonlocal shown
        fh, fw = frame.shape[:2]
        t0 = time.perf_counter()
        small = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA) if contract.resize == "squash" else None
        if small is not None:
            pixels = small[None, ..., ::-1]  # BGR -> RGB
        else:
            pixels = contract.fit(Image.fromarray(frame[..., ::-1]))[None]
        t1 = time.perf_counter()
        pts = points_to_source(run_pixels(np.ascontiguousarray(pixels)), [(fw, fh)], contract)[0]
        t2 = time.perf_counter()
        sel = smooth(pts[idx, :2], 1.0 / fps)
        if min(pts[idx, 2]) >= min_score and np.linalg.norm(sel[1] - sel[0]) > 1:
            blend_sprite(frame, sp, similarity(sp.anchors, sel))
            shown += 1
        if draw_points:
            for x, y, _ in pts:
                cv2.circle(frame, (int(x), int(y)), 3, (0, 0, 255), -1)
        times["decode"] += t1 - t0  # the resize counts with the decode
        times["predict"] += t2 - t1
        times["draw"] += time.perf_counter() - t2
        return frame
    stats = filter_frames(video, out, process, max_frames, stages=("predict", "draw"))
    return {**stats, "sprite_shown": shown}
