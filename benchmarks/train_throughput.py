"""Training input pipeline throughput on this machine: images/s delivered to the model, per pipeline.

    python benchmarks/train_throughput.py [--data ../shared/data/hotdog] [--sizes 96,224] [--workers 1]

Pipelines, each one pass over the train split in batches of 64 through a DataLoader with --workers processes
(median of 3 passes after a warm-up pass):
- standard: what torchvision's ImageFolder + RandomResizedCrop + RandomHorizontalFlip + ColorJitter + ToTensor +
  Normalize does per image (full JPEG decode every epoch, PIL crop/resize, float tensor in the worker), written
  with PIL because torchvision is not installed here (its CPU build is not on this machine's local disk).
- pocketvision, from the files: the training loader without a cache (reduced-scale JPEG decode, then our
  augmentation: crop+resize in one PIL call, flip, colour jitter, flash glare, moire; uint8 out).
- pocketvision, from the pixel cache: the same augmentation reading `pocketvision cache` shards (memory-mapped);
  "stored as JPEG": `--format jpeg` (q90, ~10x smaller, decoded at a reduced DCT scale when the model is small).
- pocketvision, from WebDataset shards: `pocketvision shards --size 256` tars read in place by member offset.
- pocketvision, RAM cache, per image / batched: what training does when the decoded sources fit in RAM (decoded
  once at 1.15x the side), augmented per image (Pillow) or a whole batch at once with torch (`--batch-augment on`;
  on a CPU in the worker's collate, on a GPU on the device: data/batch_augment.py).
The model is not run: this is the data side alone (what a training step waits for). The end-to-end table adds
"model only": the same steps on one batch made in advance (the rate the model allows, no data pipeline).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from pocketvision.core.contract import Contract  # noqa: E402
from pocketvision.data.augment import AugmentConfig, Augmenter  # noqa: E402
from pocketvision.api import write_shards  # noqa: E402
from pocketvision.data.cache import build  # noqa: E402
from pocketvision.data.folder import scan  # noqa: E402
from pocketvision.training.loader import (ImageDataset, collate_sources, decode_all, decode_source,  # noqa: E402
                                          make_loader)

MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


class Standard(torch.utils.data.Dataset):
    """ImageFolder + RandomResizedCrop(size) + RandomHorizontalFlip + ColorJitter(0.3, 0.3, 0.3) + ToTensor +
    Normalize, per image, as torchvision does them (PIL)."""

    def __init__(self, samples, size: int):
        self.samples, self.size, self.rng = samples, size, np.random.default_rng(0)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        img = Image.open(s.path).convert("RGB")
        w, h = img.size
        rng = self.rng
        for _ in range(10):  # torchvision's RandomResizedCrop.get_params
            area = w * h * rng.uniform(0.08, 1.0)
            ar = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = int(round(np.sqrt(area * ar))), int(round(np.sqrt(area / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
                break
        else:
            cw, ch, x, y = min(w, h), min(w, h), (w - min(w, h)) // 2, (h - min(w, h)) // 2
        img = img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            img = enh(img).enhance(rng.uniform(0.7, 1.3))
        x = (np.asarray(img, np.float32) / 255.0 - MEAN) / STD
        return torch.from_numpy(x.transpose(2, 0, 1).copy()), s.label


def passes(loader, n: int = 3) -> float:
    rates = []
    for k in range(n + 1):
        t0, count = time.perf_counter(), 0
        for batch in loader:
            count += len(batch[0]) if batch is not None else 0
        if k:  # the first pass starts the workers and fills the page cache
            rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates)


def train_steps(loader, model, contract: Contract, steps: int) -> tuple[float, float]:
    """``steps`` SGD steps of ``model`` fed by ``loader`` (cycled): -> (img/s, share of the time spent waiting
    for the next batch). One warm-up step is not counted."""
    from pocketvision.training.loader import to_input
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    it, wait, count, t0 = iter(loader), 0.0, 0, None
    for k in range(steps + 1):
        w0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        if k:
            wait += time.perf_counter() - w0
        x, y = batch[0], batch[1]
        if x.dtype == torch.uint8:
            x = to_input(x, contract, torch.device("cpu"), True)
        else:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k == 0:
            t0 = time.perf_counter()
        else:
            count += len(y)
    total = time.perf_counter() - t0
    return count / total, wait / total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "hotdog"))
    ap.add_argument("--sizes", default="96,224")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--e2e", default="deepdog:0.25:96:40,deepdog:1.0:224:8,efficientnet_lite0:-:224:6",
                    help="end-to-end training runs, arch:alpha:side:steps, alpha '-' for none (empty: data side only)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}")
    print(f"command: python benchmarks/train_throughput.py --sizes {a.sizes} --workers {a.workers}\n")
    splits = scan(a.data)
    train = list(splits.train)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache, stats = build(a.data, 256, tmp)
        print(f"`pocketvision cache --size 256`: {stats['images']} images, {stats['megabytes']} MB, "
              f"{time.perf_counter() - t0:.1f} s (once)")
        t0 = time.perf_counter()
        jcache, stats = build(a.data, 256, Path(tmp) / "jpeg", encoding="jpeg")
        print(f"`pocketvision cache --size 256 --format jpeg`: {stats['megabytes']} MB, "
              f"{time.perf_counter() - t0:.1f} s (once)")
        t0 = time.perf_counter()
        stats = write_shards(a.data, Path(tmp) / "shards", size=256)
        shard_train = list(scan(Path(tmp) / "shards").train)
        print(f"`pocketvision shards --size 256` (WebDataset tars): {stats['megabytes']} MB, "
              f"{time.perf_counter() - t0:.1f} s (once)\n")
        print("| side | pipeline | img/s (median of 3 passes) | vs standard |")
        print("|---|---|---|---|")
        for size in (int(s) for s in a.sizes.split(",")):
            contract = Contract(size=(size, size))
            aug = Augmenter(AugmentConfig(), contract)
            ram, _ = decode_all(train, lambda p, c=contract: decode_source(p, c))
            batched = functools.partial(collate_sources, augment_mode="bilinear")
            rows = {
                "standard (full decode + torchvision-style transforms, float tensors)":
                    torch.utils.data.DataLoader(Standard(train, size), batch_size=64, shuffle=True,
                                                num_workers=a.workers, persistent_workers=a.workers > 0),
                "pocketvision, from the files": make_loader(ImageDataset(train, contract, aug), 64, True,
                                                            a.workers, 0),
                "pocketvision, from the pixel cache": make_loader(ImageDataset(train, contract, aug, pixels=cache),
                                                                  64, True, a.workers, 0),
                "pocketvision, from the pixel cache stored as JPEG": make_loader(
                    ImageDataset(train, contract, aug, pixels=jcache), 64, True, a.workers, 0),
                "pocketvision, from WebDataset shards (in place)": make_loader(
                    ImageDataset(shard_train, contract, aug), 64, True, a.workers, 0),
                "pocketvision, RAM cache, per image": make_loader(ImageDataset(train, contract, aug, cache=ram),
                                                                  64, True, a.workers, 0),
                "pocketvision, RAM cache, batched (torch, in the worker)": make_loader(
                    ImageDataset(train, contract, aug, cache=ram, batched=True), 64, True, a.workers, 0,
                    collate_fn=batched),
            }
            base = None
            for name, loader in rows.items():
                rate = passes(loader)
                base = base or rate
                print(f"| {size} | {name} | {rate:,.0f} | {rate / base:.2f}x |", flush=True)
                del loader
        if not a.e2e:
            return
        from pocketvision.models import build_model
        print("\nEnd to end: SGD steps (batch 64, channels_last, 1 torch thread in the main process) fed by each "
              "pipeline with its workers on the other core(s).\n")
        print("| model | side | pipeline | img/s | data wait (share of step time) | vs standard |")
        print("|---|---|---|---|---|---|")
        for run in a.e2e.split(","):
            arch, alpha, side, steps = run.split(":")
            size, steps = int(side), int(steps)
            contract = Contract(size=(size, size))
            aug = Augmenter(AugmentConfig(), contract)
            ram, _ = decode_all(train, lambda p, c=contract: decode_source(p, c))
            one = next(iter(make_loader(ImageDataset(train, contract, aug, cache=ram), 64, True, 0, 0)))
            batched = functools.partial(collate_sources, augment_mode="bilinear")
            base = None
            for name, ds in (("standard", Standard(train, size)),
                             ("pocketvision, from the files", ImageDataset(train, contract, aug)),
                             ("pocketvision, from the pixel cache", ImageDataset(train, contract, aug, pixels=cache)),
                             ("pocketvision, RAM cache, per image", ImageDataset(train, contract, aug, cache=ram)),
                             ("pocketvision, RAM cache, batched (in the worker)",
                              ImageDataset(train, contract, aug, cache=ram, batched=True)),
                             ("model only (one batch made in advance)", [one])):
                torch.manual_seed(0)
                args = {"num_classes": 2} if alpha == "-" else {"alpha": float(alpha), "num_classes": 2}
                model = build_model({"name": arch, "args": args})
                model = model.to(memory_format=torch.channels_last).train()
                if isinstance(ds, list):
                    loader = ds
                elif isinstance(ds, Standard):
                    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=a.workers,
                                                         persistent_workers=True, prefetch_factor=4)
                else:
                    kw = {"collate_fn": batched} if ds.batched else {}
                    loader = make_loader(ds, 64, True, a.workers, 0, **kw)
                rate, wait = train_steps(loader, model, contract, steps)
                base = base or rate
                print(f"| {arch} alpha {alpha} | {size} | {name} | {rate:,.0f} | {wait:.0%} | {rate / base:.2f}x |",
                      flush=True)
                del loader


if __name__ == "__main__":
    main()
