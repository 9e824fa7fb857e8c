"""Unlabelled photo collections (a stylizer's content photos): every image under a folder, split by a seed.

Class sub-folders, ``train/``/``val/`` splits and other layouts are all just photos here; a ``val/`` folder is
used as the validation split when present, else a seeded share is held out. A single image file is refused
with what to pass instead.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from ...core.contract import is_image_file
from ...errors import PocketVisionError


@dataclass
class PhotoSet:
    root: Path
    train: list[Path] = field(default_factory=list)
    val: list[Path] = field(default_factory=list)
    explicit: bool = False  # a val/ folder gave the split

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for split, paths in (("train", self.train), ("val", self.val)):
            for p in sorted(paths):
                h.update(f"{split}|{p.name}|{p.stat().st_size}\n".encode())
        return h.hexdigest()[:16]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def held_out_photos(root: str | Path) -> list[Path]:
    """The photos to judge a model on: ``val/`` (or ``test/``) when present, else every photo under ``root``. No
    minimum: checking an export on five photos is fine; only training needs many."""
    root = Path(root)
    if not root.is_dir():
        raise PocketVisionError(f"{root}: not a folder of photos.")
    held = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    photos = _images(held if held is not None else root)
    if not photos:
        raise PocketVisionError(f"{root}: no photos (.jpg, .png, .webp ...) in it.")
    return photos


def scan_photos(root: str | Path, val_fraction: float = 0.05, seed: int = 0, min_val: int = 4) -> PhotoSet:
    """Every photo under ``root``; ``val/`` (or ``test/``) is the validation split when present."""
    root = Path(root)
    if not root.exists():
        raise PocketVisionError(f"{root}: folder not found.")
    if not root.is_dir():
        raise PocketVisionError(f"{root}: pass a folder of content photos (e.g. your own photos, or "
                                "../shared/data/hotdog/train), not a single file.")
    held = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if held is not None:
        val = _images(held)
        train = [p for p in _images(root) if held not in p.parents]
        out = PhotoSet(root, train, val, explicit=True)
    else:
        photos = _images(root)
        order = list(range(len(photos)))
        random.Random(seed).shuffle(order)
        n_val = min(len(photos) - 1, max(min_val, round(val_fraction * len(photos))))
        val_idx = set(order[:n_val])
        out = PhotoSet(root, [p for i, p in enumerate(photos) if i not in val_idx],
                       [p for i, p in enumerate(photos) if i in val_idx])
    if len(out.train) < 2 or not out.val:
        raise PocketVisionError(f"{root}: needs at least {min_val + 2} photos (found "
                                f"{len(out.train) + len(out.val)}); a stylizer learns from many content photos.")
    return out
