"""Decode real images once at a contract's size, and run a model over them in batches (torch-free).

Parity, budgets and metrics decode through here so every model compared sees byte-identical inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .contract import Contract
from ..errors import ImageDecodeError


def load_pixels(paths: Sequence[Path], contract: Contract) -> tuple[np.ndarray, list[int]]:
    """-> (uint8 NHWC at the contract's size, indices of the paths that decoded); unreadable files are skipped."""
    arrays, kept = [], []
    for i, p in enumerate(paths):
        try:
            arrays.append(contract.load(p))
            kept.append(i)
        except ImageDecodeError:
            continue
    h, w = contract.size
    return (np.stack(arrays) if arrays else np.zeros((0, h, w, 3), np.uint8)), kept


def batched(fn: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([fn(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])
