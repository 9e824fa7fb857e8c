"""Read a palettised weight back as (look-up table, indices, per-channel scale) — numpy only.

Palettised models travel as plain float weights (every runtime runs them unchanged); whoever stores or
fine-tunes the palette recovers it from the values alone, so nothing but the weights has to travel:

- a per-layer palette: at most 256 distinct values -> the values are the table;
- a channel-scaled palette (one shared table, one scale per output channel, as Core ML's
  ``enable_per_channel_scale``): ``palettize_tensor`` pins the table's ends at -1 and +1, so each channel's
  largest magnitude *is* its scale, exactly; dividing by it gives the table back to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ENTRIES = 256  # indices are stored in at most one byte
ROUNDING = 1e-6  # |w / scale - entry| left by float32 rounding of entry * scale (a few ulp of 1.0)


@dataclass
class Palette:
    lut: np.ndarray  # float32 [k], sorted
    idx: np.ndarray  # uint8, one per weight (flattened)
    scale: np.ndarray | None  # float32 [out_channels], or None for a per-layer palette

    @property
    def bits(self) -> int:
        return max(1, int(np.ceil(np.log2(max(len(self.lut), 2)))))

    def dense(self, shape: tuple[int, ...]) -> np.ndarray:
        w = self.lut[self.idx].reshape(shape[0], -1)
        if self.scale is not None:
            w = w * self.scale[:, None]
        return w.reshape(shape).astype(np.float32)


def encode(w: np.ndarray) -> Palette | None:
    """-> the palette ``w`` is made of, or None when ``w`` is not palettised (too many distinct values).

    Where both readings fit (a small layer: 16 channels x 16 scaled values are also 256 raw ones), the one with
    the shorter indices wins."""
    w = np.asarray(w, np.float32)
    lut, idx = np.unique(w.ravel(), return_inverse=True)
    plain = Palette(lut.astype(np.float32), idx.astype(np.uint8), None) if len(lut) <= MAX_ENTRIES else None
    if plain is not None and len(lut) <= 16:
        return plain
    scaled = _scaled(w)
    if scaled is not None and (plain is None or len(scaled.lut) <= 16):
        return scaled
    return plain


def _scaled(w: np.ndarray) -> Palette | None:
    if w.ndim < 2:
        return None
    flat = w.reshape(w.shape[0], -1)
    scale = np.abs(flat).max(axis=1)
    live = scale > 0  # an all-zero channel is zero under any table: it must not add the entry 0
    v = flat[live] / scale[live, None]
    u, inv = np.unique(v.ravel(), return_inverse=True)
    if len(u) > 16 * MAX_ENTRIES:  # a continuous weight: not worth grouping
        return None
    group = np.concatenate([[0], np.cumsum(np.diff(u) > ROUNDING)])
    if group[-1] + 1 > MAX_ENTRIES:
        return None
    lut = (np.bincount(group, weights=u) / np.bincount(group)).astype(np.float32)
    idx = np.zeros(flat.shape, np.uint8)
    idx[live] = group[inv].reshape(v.shape)
    pal = Palette(lut, idx.ravel(), scale.astype(np.float32))
    # Guard against a weight that merely happens to have few values per channel on another grid.
    if not np.allclose(pal.dense(w.shape), w, rtol=0, atol=4 * ROUNDING * max(float(scale.max()), 1e-12)):
        return None
    return pal
