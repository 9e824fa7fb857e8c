"""What every exported model offers once opened in its real runtime: the surface of a bundle, torch-free.

Each target's predictor (onnxruntime, the LiteRT interpreter, a web page in Chromium) implements
``run_pixels`` (uint8 NHWC -> the graph's first output) and reads the bundle's metadata from the file; predict
and evaluate are the task's own code (``tasks/``), shared with the torch bundle, so an export and its bundle
are measured identically and differ only by what the models compute.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.bundle_file import MAX_META_BYTES, check_fields, parse_json
from ..core.contract import Contract
from ..errors import PocketVisionError

# Every format stores the bundle's metadata (labels, contract, threshold, task...) under this key prefix.
META_PREFIX = "pocketvision."


def parse_metadata(entries: dict[str, Any], where: Any) -> dict[str, Any]:
    """A model file's ``pocketvision.*`` entries (JSON text) -> {key: value}, from a file that is hostile until
    checked: the entries together are capped at the bundle's metadata cap, and a parse error is one line."""
    ours = {k[len(META_PREFIX):]: v for k, v in entries.items() if k.startswith(META_PREFIX)}
    size = sum(len(v) for v in ours.values())
    if size > MAX_META_BYTES:
        raise PocketVisionError(f"{where}: {size:,} bytes of pocketvision metadata, over the cap of "
                                f"{MAX_META_BYTES:,}; not a file pocketvision wrote.")
    return {k: parse_json(v, f"{where}: metadata {k!r}", PocketVisionError) for k, v in ours.items()}


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def time_calls(fn, runs: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


class Predictor:
    path: Path
    meta: dict[str, Any]
    input_size: tuple[int, int] | None = None  # the graph's fixed (h, w), None when height/width are free
    ready_s: float | None = None  # opening -> ready to run, where the runtime measures it (a page's first visit)

    def _read_meta(self, meta: dict[str, Any]) -> None:
        if "contract" not in meta or "labels" not in meta or "task" not in meta:
            raise PocketVisionError(f"{self.path}: no pocketvision metadata (task, contract, labels); "
                                    "export it with `pocketvision export`.")
        # The file came from elsewhere: its metadata is checked (as a bundle.json is) before anything acts on it.
        check_fields(meta, f"{self.path}: metadata")
        self.meta = meta

    @property
    def contract(self) -> Contract:
        return Contract.from_dict(self.meta["contract"])

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def threshold(self) -> dict[str, Any] | None:
        return self.meta.get("threshold")

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def plugin(self):
        from ..tasks import get_task
        return get_task(self.meta["task"])

    def run_pixels(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run_outputs(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 NHWC -> the graph's outputs by name; a runtime that reads only the first gives that one."""
        return {self.plugin.outputs.names[0]: self.run_pixels(pixels)}

    def predict(self, sources: Sequence[str | os.PathLike | bytes] | str | os.PathLike) -> list[dict[str, Any]]:
        from ..tasks.base import split_sources
        return self.plugin.predict(self, split_sources(sources))

    def evaluate(self, data: str | os.PathLike, split: str = "auto", report_dir: str | os.PathLike | None = None,
                 **options: Any) -> dict[str, Any]:
        from ..tasks.base import evaluate_model
        return evaluate_model(self, data, split, report_dir, str(self.path), options)

    def latency_ms(self, runs: int = 100, warmup: int = 10, batch: int = 1) -> dict[str, float]:
        """Percentiles of one call of the model on random uint8 images of its input size."""
        h, w = self.contract.size
        x = np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
        return percentiles(time_calls(lambda: self.run_pixels(x), runs, warmup))

    def at_threads(self, threads: int) -> Predictor:
        """This model run on ``threads`` threads: a new predictor of the same file (the caller closes it), or this
        one where the runtime can change its threads in place."""
        return type(self)(self.path, threads)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
