"""Image-folder data sets: class = sub-folder; ``train/`` + ``val/`` (+ ``test/``) when present.

Without explicit splits, a stratified split with a fixed seed is made, so the same folder always gives
the same validation set (and a resumed run sees the same data).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..core.contract import is_image_file
from ..errors import PocketVisionError
from ..core import tar_members
from . import shards

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class Splits:
    root: Path
    classes: list[str]
    train: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    explicit: bool = False  # True when the folder had train/ and val/ sub-folders

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            c = {name: 0 for name in self.classes}
            for s in getattr(self, split):
                c[self.classes[s.label]] += 1
            out[split] = c
        return out

    def fingerprint(self) -> str:
        """Names + sizes of every file: cheap, and changes when images are added/removed/replaced."""
        h = hashlib.sha256()
        for split in SPLITS:
            for s in sorted(getattr(self, split), key=lambda s: str(s.path)):
                h.update(f"{split}|{self.classes[s.label]}|{s.path.name}|{_size(s.path)}\n".encode())
        return h.hexdigest()[:16]


def image_hashes(root: Path) -> set[str]:
    """SHA-256 of every image file under ``root``: what a merge into a data set skips as already there."""
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(root).rglob("*")
            if p.is_file() and is_image_file(p)} if Path(root).is_dir() else set()


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except NotADirectoryError:  # an image inside a shard
        return tar_members.member_size(p) or 0


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def scan(root: str | Path, val_fraction: float = 0.15, test_fraction: float = 0.0, seed: int = 0,
         classes: list[str] | None = None) -> Splits:
    """Find classes and images under ``root``. Raises a one-line error for each bad layout."""
    root = Path(root)
    if not root.exists():
        raise PocketVisionError(f"{root}: data folder not found. Pass a folder with one sub-folder per class.")
    if not root.is_dir():
        raise PocketVisionError(f"{root}: is a file; pass a folder with one sub-folder per class.")
    if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise PocketVisionError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) and sum below 1.")
    if shards.is_shard_set(root):
        return _scan_shards(root, classes)
    if (root / "train").is_dir():
        return _scan_explicit(root, classes)
    return _scan_auto(root, val_fraction, test_fraction, seed, classes)


def _scan_shards(root: Path, classes: list[str] | None) -> Splits:
    """A shard set written by `pocketvision shards` from a classification folder: its splits, as written."""
    desc = shards.read_descriptor(root)
    names = desc.get("meta", {}).get("classes")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise PocketVisionError(f"{root / shards.DESCRIPTOR}: a {desc.get('task')} shard set, not a classifier's "
                                "(no class list); train it with --task " + str(desc.get("task")) + ".")
    names = _check_classes(names, root / shards.DESCRIPTOR, classes)
    out = Splits(root=root, classes=names, explicit=True)
    for split in SPLITS:
        for path, ann in shards.samples(root, split):
            label = ann.get("label") if isinstance(ann, dict) else None
            if label not in names:
                raise PocketVisionError(f"{path}: label {label!r} is not among the classes {names}.")
            getattr(out, split).append(Sample(path, names.index(label)))
    if not out.train or not out.val:
        raise PocketVisionError(f"{root}: the shard set has no {'train' if not out.train else 'val'} samples.")
    return out


def _check_classes(found: list[str], where: Path, classes: list[str] | None) -> list[str]:
    if classes is not None:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise PocketVisionError(f"{where}: class folder(s) {unknown} are not among the model's labels {classes}.")
        return list(classes)
    if len(found) < 2:
        raise PocketVisionError(
            f"{where}: found {len(found)} class folder(s) {found}; a classifier needs at least 2 "
            "(one sub-folder per class, e.g. photos/hotdog and photos/not_hotdog).")
    return found


def _scan_explicit(root: Path, classes: list[str] | None) -> Splits:
    train_dir = root / "train"
    names = _check_classes([d.name for d in _class_dirs(train_dir)], train_dir, classes)
    out = Splits(root=root, classes=names, explicit=True)
    for split in SPLITS:
        d = root / split
        if not d.is_dir():
            if split == "val":
                raise PocketVisionError(f"{root}: has train/ but no val/ folder. Add val/<class>/ images "
                                        "or move the class folders up to use an automatic split.")
            continue
        present = {p.name for p in _class_dirs(d)}
        for i, name in enumerate(names):
            if name not in present:
                if split == "test":
                    continue
                raise PocketVisionError(f"{d}: split '{split}' is missing class '{name}'. Add {d / name}/ with images.")
            imgs = _images(d / name)
            if not imgs:
                raise PocketVisionError(f"{d / name}: class folder '{name}' has no images (jpg/png/webp/bmp).")
            getattr(out, split).extend(Sample(p, i) for p in imgs)
        extra = sorted(present - set(names))
        if extra:
            raise PocketVisionError(f"{d}: class folder(s) {extra} are not in train/ ({names}). "
                                    "Every class needs training images.")
    return out


def _scan_auto(root: Path, val_fraction: float, test_fraction: float, seed: int,
               classes: list[str] | None) -> Splits:
    dirs = _class_dirs(root)
    names = _check_classes([d.name for d in dirs], root, classes)
    out = Splits(root=root, classes=names, explicit=False)
    rng = random.Random(seed)
    for d in dirs:
        imgs = _images(d)
        if not imgs:
            raise PocketVisionError(f"{d}: class folder '{d.name}' has no images (jpg/png/webp/bmp).")
        i = names.index(d.name)
        rng.shuffle(imgs)
        n = len(imgs)
        # Stratified: each class contributes its own share to val/test (at least one when possible).
        n_val = max(1, round(n * val_fraction)) if val_fraction > 0 and n >= 3 else 0
        n_test = max(1, round(n * test_fraction)) if test_fraction > 0 and n >= 4 else 0
        if n - n_val - n_test < 1:
            raise PocketVisionError(f"{d}: class '{d.name}' has only {n} image(s); need at least 3 to split.")
        out.val.extend(Sample(p, i) for p in sorted(imgs[:n_val]))
        out.test.extend(Sample(p, i) for p in sorted(imgs[n_val:n_val + n_test]))
        out.train.extend(Sample(p, i) for p in sorted(imgs[n_val + n_test:]))
    if not out.val:
        raise PocketVisionError(f"{root}: too few images for a validation split; add images or a val/ folder.")
    return out


def labelled_samples(root: str | Path, classes: list[str], split: str = "auto",
                     unknown_out: list[str] | None = None) -> tuple[list[Sample], str]:
    """Images of a labelled folder mapped onto a model's ``classes`` (for eval/verify).

    ``split="auto"``: ``test/`` if present, else ``val/``, else every image under the class folders.
    Class folders the model does not know are an error, unless ``unknown_out`` is given: then their names go
    there and the rest is used. Classes with no folder are fine (eval sets are often partial).
    """
    root = Path(root)
    if not root.is_dir():
        raise PocketVisionError(f"{root}: data folder not found.")
    if shards.is_shard_set(root):
        found = _scan_shards(root, classes)
        if split == "auto":
            split = next(s for s in ("test", "val") if getattr(found, s))
        if split not in (*SPLITS, "all"):
            raise PocketVisionError(f"{root}: a shard set has the splits {', '.join(SPLITS)} and all, not {split!r}.")
        picked = [s for sp in SPLITS for s in getattr(found, sp)] if split == "all" else getattr(found, split)
        return picked, split
    if split == "auto":
        split = next((s for s in ("test", "val") if (root / s).is_dir()), "all")
    base = root if split == "all" else root / split
    if not base.is_dir():
        raise PocketVisionError(f"{root}: has no '{split}/' folder (choose from: all, "
                                f"{', '.join(s for s in SPLITS if (root / s).is_dir()) or 'none'}).")
    dirs = [d for d in _class_dirs(base) if d.name not in SPLITS or split != "all"]
    if split == "all" and (root / "train").is_dir():
        dirs = [d for s in SPLITS if (root / s).is_dir() for d in _class_dirs(root / s)]
    unknown = sorted({d.name for d in dirs} - set(classes))
    if unknown and unknown_out is not None:
        unknown_out += unknown
        dirs = [d for d in dirs if d.name in classes]
    elif unknown:
        raise PocketVisionError(f"{base}: class folder(s) {unknown} are not among the model's labels {classes}.")
    samples = [Sample(p, classes.index(d.name)) for d in dirs for p in _images(d)]
    if not samples:
        raise PocketVisionError(f"{base}: no images found in class folders named like the labels {classes}.")
    return samples, split
