"""`pocketvision demo`: the whole path on a built-in data set, no download, no ../shared.

Makes a small two-class set of drawn "photos" (hot dogs vs other food on cluttered tables, with
lighting, rotation, blur and JPEG noise), then trains, evaluates, exports, verifies and benchmarks.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

import pocketvision as pv
from .deploy.bench import bench

CLASSES = ("hotdog", "not_hotdog")


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.integers(40, 230, 3)
    grad = np.linspace(0.7, 1.2, size)[:, None, None] * base[None, None, :]
    noise = rng.normal(0, 12, (size, size, 3))
    img = np.clip(np.broadcast_to(grad, (size, size, 3)) + noise, 0, 255).astype(np.uint8)
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    for _ in range(rng.integers(2, 6)):  # clutter: plates, napkins
        x, y, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(size // 10, size // 3))]
        c = tuple(int(v) for v in rng.integers(60, 255, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)((x - r, y - r, x + r, y + r), fill=c)
    return im


def _hotdog(d: ImageDraw.ImageDraw, rng, cx, cy, L, W) -> None:
    bun = tuple(int(v) for v in (rng.integers(200, 240), rng.integers(150, 190), rng.integers(80, 120)))
    sausage = tuple(int(v) for v in (rng.integers(150, 200), rng.integers(50, 90), rng.integers(30, 60)))
    d.rounded_rectangle((cx - L, cy - W, cx + L, cy + W), radius=W, fill=bun)
    d.rounded_rectangle((cx - L * 1.15, cy - W * 0.45, cx + L * 1.15, cy + W * 0.45), radius=int(W * 0.45), fill=sausage)
    if rng.random() < 0.7:  # mustard zigzag
        pts = [(cx - L + i * L / 4, cy + (W * 0.2 if i % 2 else -W * 0.2)) for i in range(9)]
        d.line(pts, fill=(230, 200, 40), width=max(2, int(W * 0.12)))


def _other(d: ImageDraw.ImageDraw, rng, cx, cy, L, W) -> None:
    kind = rng.integers(0, 4)
    if kind == 0:  # pizza
        d.ellipse((cx - L, cy - L, cx + L, cy + L), fill=(220, 170, 90))
        d.ellipse((cx - L * .85, cy - L * .85, cx + L * .85, cy + L * .85), fill=(200, 60, 40))
        for _ in range(8):
            a, r = rng.random() * 6.28, rng.random() * L * 0.7
            d.ellipse((cx + r * math.cos(a) - 5, cy + r * math.sin(a) - 5, cx + r * math.cos(a) + 5,
                       cy + r * math.sin(a) + 5), fill=(120, 20, 20))
    elif kind == 1:  # salad
        for _ in range(30):
            x, y = cx + rng.normal(0, L / 2), cy + rng.normal(0, L / 2)
            d.ellipse((x - 6, y - 4, x + 6, y + 4), fill=(int(rng.integers(30, 90)), int(rng.integers(120, 200)), 40))
    elif kind == 2:  # burger, seen from the side
        for i, c in enumerate([(210, 160, 90), (60, 160, 60), (110, 60, 40), (210, 160, 90)]):
            d.rounded_rectangle((cx - L, cy - W + i * W / 2, cx + L, cy - W / 2 + i * W / 2), radius=6, fill=c)
    else:  # a mug
        d.rectangle((cx - W, cy - L * .6, cx + W, cy + L * .6), fill=tuple(int(v) for v in rng.integers(50, 250, 3)))
        d.ellipse((cx + W - 4, cy - W / 2, cx + W * 1.8, cy + W / 2), outline=(40, 40, 40), width=4)


def make_image(label: int, rng: np.random.Generator, size: int = 160) -> Image.Image:
    im = _background(rng, size)
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    L, W = size * rng.uniform(0.22, 0.38), size * rng.uniform(0.08, 0.13)
    cx, cy = size / 2 + rng.normal(0, size / 10), size / 2 + rng.normal(0, size / 10)
    (_hotdog if label == 0 else _other)(d, rng, cx, cy, L, W)
    layer = layer.rotate(float(rng.uniform(0, 360)), resample=Image.Resampling.BILINEAR, center=(cx, cy))
    im.paste(layer, (0, 0), layer)
    a = np.asarray(im, np.float32) * rng.uniform(0.6, 1.3)  # exposure
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    return im


def make_dataset(root: Path, n_train: int = 500, n_val: int = 100, size: int = 160, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for label, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                make_image(label, rng, size).save(d / f"{name}_{i:04d}.jpg", quality=int(rng.integers(70, 95)))
    return root


def run_demo(out: Path, epochs: int = 15, quiet: bool = False, n_train: int = 500, n_val: int = 100) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, quiet=quiet)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    if not (data / "val").is_dir():
        console.print(f"[bold]1/5 data[/]: drawing a two-class photo set in {data}")
        make_dataset(data, n_train=n_train, n_val=n_val)
    console.print("[bold]2/5 train[/]: deepdog alpha=0.5 at 128 px, from scratch")
    b = pv.train(data, out=out / "demo.pvb", arch="deepdog", arch_args={"alpha": 0.5}, size=128, epochs=epochs,
                 lr=4e-3, batch_size=32, run_dir=out / "run", console=console, progress=not quiet,
                 recipe=False)  # synthetic photos and a few epochs: the settings above, nothing else
    console.print("[bold]3/5 evaluate[/] on the held-out images")
    m = b.evaluate(data, split="val", report_dir=out / "report")
    console.print("[bold]4/5 export + verify[/]: ONNX, uint8 pixels in")
    ex = b.export(out / "demo.onnx")
    console.print("[bold]5/5 bench[/]")
    photos = sorted((data / "val").rglob("*.jpg"))[:20]
    r = bench(ex.path, photos, runs=50)
    v = ex.verification or {}
    summary = {
        "val_accuracy": m["accuracy"], "roc_auc": m.get("roc_auc"), "threshold": b.threshold,
        "onnx": str(ex.path), "onnx_mb": ex.size_bytes / 1e6, "parity_max_abs_diff": v.get("max_abs_diff"),
        "parity_top1_agreement": v.get("top1_agreement"), "parity_passed": v.get("passed"),
        "latency_p50_ms_1thread": r["batch1_1thread"]["p50_ms"],
        "end_to_end_p50_ms": r["end_to_end"]["p50_ms"], "bundle": str(b.path), "report": m["report"],
        "train_report": b.meta.get("report"), "seconds": round(time.perf_counter() - t0, 1),
    }
    t = Table(title="pocketvision demo")
    t.add_column("step")
    t.add_column("result", justify="right")
    t.add_row("validation accuracy", f"{m['accuracy']:.3f} (AUC {m.get('roc_auc') or float('nan'):.3f})")
    t.add_row("bundle", str(b.path))
    t.add_row("ONNX export", f"{ex.path} ({ex.size_bytes / 1e6:.2f} MB)")
    t.add_row("parity on held-out images", f"max |dp| {v.get('max_abs_diff', float('nan')):.1e}, top-1 agreement "
              f"{v.get('top1_agreement', float('nan')):.3f} -> {'verified' if v.get('passed') else 'FAILED'}")
    t.add_row("latency (1 thread, p50)", f"{summary['latency_p50_ms_1thread']:.2f} ms")
    t.add_row("JPEG bytes -> label (p50)", f"{summary['end_to_end_p50_ms']:.2f} ms")
    t.add_row("total time", f"{summary['seconds']:.0f} s")
    Console(quiet=quiet).print(t)
    if not quiet:
        print(f"report: {m['report']}")
    return summary
