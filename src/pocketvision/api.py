"""Public Python API; the CLI is a thin layer over these functions.

    import pocketvision as pv
    bundle = pv.train("photos/", out="hotdog.pvb", arch="deepdog", arch_args={"alpha": 0.5})
    bundle = pv.load("hotdog.pvb")
    bundle.evaluate("photos/")            # metrics dict (+ HTML report with report_dir=...)
    bundle.export("hotdog.onnx")          # exported and verified on the validation images
    bundle.predict(["a.jpg", "b.jpg"])    # the task's records
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .bundle import Bundle, ExportResult, load
from .data.cache import decode_at, encode_jpeg, upright_size
from .data.shards import fetch, write
from .deploy.artifact import load_any
from .errors import PocketVisionError
from .export.starter import starter_page
from .tasks import get_task
from .tasks.base import all_tasks, detect_task

__all__ = ["Bundle", "ExportResult", "fetch_shards", "find_lr", "load", "load_any", "train", "write_shards"]


def train(data: str | Path, out: str | Path | None = None, *, model: nn.Module | None = None,
          resume: str | Path | None = None, console=None, **options: Any) -> Bundle | None:
    """Train a model for any task on ``data`` and return (and write, with ``out``) its bundle.

    ``options`` are the engine's :class:`pocketvision.training.config.TrainConfig` fields (arch, epochs, lr...)
    plus the task's own options (``pocketvision.tasks.get_task(name).Options``); ``task`` picks the task
    (default: from the data). ``model`` brings your own ``torch.nn.Module`` (classify: float NCHW in, logits out).
    Under torchrun every process calls this; rank 0 gets the bundle (and writes ``out``), the others None.
    """
    from .pipeline.train import train_model
    meta, net = train_model(data, options, user_model=model, resume=resume, console=console)
    if meta is None:  # a distributed run's other processes (torchrun): rank 0 has the bundle
        return None
    b = Bundle(meta, net)
    if out is not None:
        b.save(out)
    return b


def find_lr(data: str | Path, **options: Any) -> dict[str, Any]:
    """LR range test with the same options as :func:`train`; saves ``RUN_DIR/lr_find.png``.

    -> ``{"suggested_lr", "plot", "lrs", "losses"}``.
    """
    from .pipeline.train import find_lr as _find_lr
    run_dir = Path(options.pop("run_dir", None) or "runs/find-lr")
    return _find_lr(data, {**options, "run_dir": run_dir}, run_dir / "lr_find.png")


def write_shards(data: str | Path, out: str | Path, *, task: str = "auto", size: int = 256, quality: int = 90,
                 shard_mb: int = 256, val_fraction: float = 0.15, seed: int = 0, threads: int = 0,
                 log=lambda s: None) -> dict[str, Any]:
    """Write ``data`` (any task's training data) as WebDataset shards in the new folder ``out``: each image at
    short side ``size``, JPEG ``quality``, with its annotation, in the splits training on ``data`` would use
    (``data/shards.py``). ``pv.train(out)`` then trains from the shards. -> counts, megabytes, unreadable files."""
    if not 16 <= size <= 4096:
        raise PocketVisionError(f"--size {size}: between 16 and 4096 pixels (the short side kept).")
    if not 50 <= quality <= 100:
        raise PocketVisionError(f"--quality {quality}: between 50 and 100.")
    if not Path(data).exists():
        raise PocketVisionError(f"{data}: no such file or folder.")
    t = get_task(task) if task != "auto" else detect_task(data)
    meta, splits = t.shard_records(data, val_fraction, seed)

    def encode(path: Path, annotation: Any) -> tuple[bytes, Any]:
        a = decode_at(path, size)
        stored = (a.shape[1], a.shape[0])
        return encode_jpeg(a, quality), t.stored_annotation(annotation, stored, upright_size(path))

    return {"task": t.name, **write(out, t.name, meta, splits, encode, size, quality, shard_mb, threads, log)}


def fetch_shards(url: str, out: str | Path, threads: int = 4, log=lambda s: None) -> dict[str, Any]:
    """Copy a shard set from ``url`` (its ``shards.json`` over http(s)://, file://, or a path) into ``out``,
    checking every shard's SHA-256; run again to resume."""
    return fetch(url, out, threads, log)


def starter(out: str | Path, arch: str = "efficientnet_lite0", data: str | Path | None = None,
            log=lambda s: None) -> dict[str, Any]:
    """A teachable web page with no classes of its own on ``arch``'s offline ImageNet weights: every class is taught
    in the browser (a model created in the page). ``data``: photos its embedding is checked on in Chromium."""
    task = next((t for t in all_tasks() if t.teachable), None)
    if task is None:
        raise PocketVisionError("no installed task can be taught on the device.")
    return starter_page(task, arch, out, data, log)
