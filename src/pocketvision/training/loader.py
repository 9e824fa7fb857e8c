"""Input pipeline: decode once into a RAM cache, augment lazily in worker processes, seeded per sample.

On 2 CPU cores JPEG decoding costs as much as a small model's training step, so images are decoded
once (threads: Pillow releases the GIL) at a size just large enough for the random crop, and every
epoch only augments. Each sample's randomness comes from ``(seed, epoch, index)``, so results do not
depend on the number of workers or on resuming.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.contract import Contract
from ..data.cache import PixelCache, decode_at
from ..data.folder import Sample
from ..errors import ImageDecodeError
from .distributed import local_batch

# The random resized crop needs some pixels beyond the output size; 1.15x the side is plenty.
SOURCE_MARGIN = 1.15


def default_workers() -> int:
    # under torchrun the cores are shared by this machine's training processes
    n = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return 0 if n <= 1 else min(8, n - 1)


def source_side(contract: Contract) -> int:
    return math.ceil(max(contract.size) * SOURCE_MARGIN)


def decode_source(path, contract: Contract, pixels=None) -> np.ndarray:
    """Decode for augmentation: upright RGB, short side capped at SOURCE_MARGIN x the model side. ``pixels``:
    a ``data.cache.PixelCache`` to read instead of the file (when it holds this file unchanged)."""
    side = source_side(contract)
    if pixels is not None:
        a = pixels.source_pixels(path, side)
        if a is not None:
            return a
    return decode_at(path, side)


def find_pixels(root, contract: Contract, cache_dir=None, console=None):
    """The `pocketvision cache` of the data at ``root`` (a folder, or an annotation file in it) whose pixels are
    large enough for ``contract``, announced on ``console``; None when there is none. Every task reads its
    training photos through it; validation photos are decoded from the files, so scores are computed on exactly
    the pixels a device sees."""
    root = Path(root)
    pixels = PixelCache.find(root if root.is_dir() else root.parent, source_side(contract), cache_dir)
    if pixels is not None and console is not None:
        console.print(pixels.describe())
    return pixels


def decode_all(samples: Sequence[Sample], fn: Callable, threads: int = 0) -> tuple[list, list[str]]:
    """Decode every sample with ``fn(path)``; unreadable files are reported by path and dropped."""
    threads = threads or (os.cpu_count() or 1)

    def one(s: Sample):
        try:
            return fn(s.path), None
        except ImageDecodeError as e:
            return None, str(e)

    with ThreadPoolExecutor(max_workers=threads) as ex:
        results = list(ex.map(one, samples))
    arrays = [a for a, _ in results]
    problems = [p for _, p in results if p]
    return arrays, problems


def estimate_cache_mb(n: int, contract: Contract, augment: bool) -> float:
    side = max(contract.size) * (SOURCE_MARGIN if augment else 1.0)
    return n * side * side * 1.4 * 3 / 2**20  # 1.4: typical 4:3 aspect of the long side


class ImageDataset(torch.utils.data.Dataset):
    """Samples -> (uint8 HWC tensor, label, index). ``cache`` holds pre-decoded arrays (or None)."""

    def __init__(self, samples: Sequence[Sample], contract: Contract, augment: Callable | None = None,
                 seed: int = 0, cache: list[np.ndarray | None] | None = None, fitted: bool = False,
                 sizes: dict[int, tuple[int, int]] | None = None, pixels=None, batched: bool = False):
        self.samples, self.contract, self.augment = list(samples), contract, augment
        # batched: items are (source pixels, the augmentation's draws) for ``collate_sources``; the pixels are
        # augmented a whole batch at a time on the training device (data/batch_augment.py)
        self.batched = batched and augment is not None
        self.pixels = pixels  # a PixelCache read in the workers (memory-mapped) when the RAM cache is off
        self.seed, self.epoch, self.cache, self.fitted = seed, 0, cache, fitted
        # epoch -> augmented output (h, w) for progressive resizing. A dict travels to the workers with the
        # dataset; the epoch comes with each key (EpochSampler), so every worker uses the epoch's size.
        self.sizes = sizes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def _source(self, i: int):
        if self.cache is not None:
            return self.cache[i]
        if self.pixels is not None and self.augment is not None and not self.batched:
            # The cached pixels as they are: the random resized crop reads its box from them and resizes once
            # (no intermediate downscale to the decode size).
            a = self.pixels.get(self.samples[i].path)
            if a is not None:
                return a
        try:
            if self.augment is None:
                return self.contract.load(self.samples[i].path)
            return decode_source(self.samples[i].path, self.contract, self.pixels)
        except ImageDecodeError:
            return None  # reported by the scan; the collate drops it, never a crash mid-epoch

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        src = self._source(i)
        if src is None:
            return None
        if self.batched:  # the same draws as the per-image path; the pixels travel as they are
            size = self.sizes[epoch] if self.sizes and epoch in self.sizes else self.contract.size
            return src, self.augment.draw(src.shape[1], src.shape[0], np.random.default_rng([self.seed, epoch, i])), \
                tuple(size), self.samples[i].label, i
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, epoch, i])
            kw = {"size": self.sizes[epoch]} if self.sizes and epoch in self.sizes else {}
            out = self.augment(Image.fromarray(src), rng, **kw)
        elif self.fitted:
            out = src
        else:
            out = self.contract.fit(Image.fromarray(src))
        out = np.ascontiguousarray(out)
        if not out.flags.writeable:  # PIL-backed arrays are read-only; torch wants to own writable memory
            out = out.copy()
        return torch.from_numpy(out), self.samples[i].label, i


def collate(batch):
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    x = torch.stack([b[0] for b in batch])
    y = torch.tensor([b[1] for b in batch], dtype=torch.long)
    idx = torch.tensor([b[2] for b in batch], dtype=torch.long)
    return x, y, idx


def grid_mode(contract: Contract) -> str:
    """The contract's resampling as ``grid_sample`` names it (it has bilinear and bicubic)."""
    return contract.interpolation if contract.interpolation in ("bilinear", "bicubic") else "bilinear"


def augmented_on(device, batches, mode: str):
    """Batches whose first item is ``data.batch_augment.Sources`` -> the same batches with that item augmented on
    ``device`` (uint8 NHWC there)."""
    from ..data.batch_augment import augment
    for batch in batches:
        if batch is None:
            yield None
            continue
        yield (augment(batch[0].to(device), mode), *batch[1:])


def collate_sources(batch, augment_mode: str | None = None):
    """Items of a ``batched`` ImageDataset -> (data.batch_augment.Sources, labels, indices): edge-padded source pixels
    and the draws, augmented later on the training device. With ``augment_mode`` (training on the CPU) the batch is
    augmented here, in the worker, in one vectorised pass -> (uint8 NHWC, labels, indices)."""
    from ..data.batch_augment import Sources, augment, pad_sources, stack_draws
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    src = Sources(pad_sources([b[0] for b in batch]), stack_draws([b[1] for b in batch], batch[0][2]), batch[0][2])
    y = torch.tensor([b[3] for b in batch], dtype=torch.long)
    idx = torch.tensor([b[4] for b in batch], dtype=torch.long)
    return (augment(src, augment_mode) if augment_mode else src), y, idx


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` keys, shuffled per epoch from ``(seed, epoch)``; with ``shard=(rank, world)``
    only this process's share of that order: every ``world``-th key from ``rank``, the order padded by repeating
    its start so that every process takes the same number of steps (as ``DistributedSampler``). Consecutive
    global positions go to different processes, so step k of every process together is step k of one process.

    Persistent worker processes hold a copy of the dataset made when they started, so an epoch set on
    the dataset in the main process never reaches them (every epoch would replay the same
    augmentation). The sampler runs in the main process, so passing the epoch inside each key is what
    makes each epoch's augmentation new, and the order reproducible on resume.
    """

    def __init__(self, ds, shuffle: bool, seed: int, shard: tuple[int, int] = (0, 1)):
        self.ds, self.shuffle, self.seed, self.shard = ds, shuffle, seed, shard

    def __len__(self) -> int:
        return math.ceil(len(self.ds) / self.shard[1])

    def __iter__(self):
        epoch = self.ds.epoch
        order = (np.random.default_rng([self.seed, epoch]).permutation(len(self.ds)) if self.shuffle
                 else np.arange(len(self.ds)))
        rank, world = self.shard
        if world > 1:
            order = np.resize(order, len(self) * world)[rank::world]  # np.resize repeats from the start
        return iter([(epoch, int(i)) for i in order])


def make_loader(ds, batch_size: int, shuffle: bool, workers: int, seed: int, drop_last: bool = False,
                collate_fn=collate, shard: tuple[int, int] = (0, 1)) -> torch.utils.data.DataLoader:
    """Datasets take ``(epoch, index)`` keys and have ``epoch``/``set_epoch`` (see :class:`EpochSampler`).
    ``shard=(rank, world)``: this process's share of a distributed run; ``batch_size`` is the global batch."""
    kw = dict(num_workers=workers, collate_fn=collate_fn, drop_last=drop_last, pin_memory=torch.cuda.is_available())
    if workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=4)
    return torch.utils.data.DataLoader(ds, batch_size=local_batch(batch_size, shard),
                                       sampler=EpochSampler(ds, shuffle, seed, shard), **kw)


def to_input(x: torch.Tensor, contract: Contract, device: torch.device, channels_last: bool,
             dtype=torch.float32) -> torch.Tensor:
    """uint8 NHWC batch -> normalised float NCHW on the device (same maths as the exported graph).

    Normalising on the device keeps host->device copies at 1 byte per pixel.
    """
    x = x.to(device, non_blocking=True)
    mean = torch.tensor(contract.mean, device=device, dtype=torch.float32)
    std = torch.tensor(contract.std, device=device, dtype=torch.float32)
    x = ((x.float() - mean) / std).permute(0, 3, 1, 2)  # a channels_last view for free
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
    return x.to(dtype)
