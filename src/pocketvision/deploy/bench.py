"""Latency, throughput, memory and size of an exported model (torch-free).

Numbers are medians/percentiles over repeated runs; machines are noisy, so compare ratios measured in
the same run rather than absolute numbers across runs.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


from ..runtime.onnx_predictor import OnnxPredictor
from ..runtime.predictor import percentiles
from .artifact import open_predictor


def latency(path: Path, threads: int, batch: int = 1, runs: int = 100, warmup: int = 10,
            accelerator: str | None = None) -> dict[str, float]:
    with open_predictor(path, threads=threads, accelerator=accelerator) as p:
        return p.latency_ms(runs, warmup, batch)


def peak_memory_mb(path: Path) -> float | None:
    """Peak RSS of a fresh process that loads the model and runs it: what an app would pay."""
    code = ("import resource,sys,numpy as np;from pocketvision.runtime.onnx_predictor import OnnxPredictor;"
            "p=OnnxPredictor(sys.argv[1]);h,w=p.contract.size;x=np.zeros((1,h,w,3),np.uint8);"
            "[p.run_pixels(x) for _ in range(5)];print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    try:
        r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
        return int(r.stdout.strip().splitlines()[-1]) / 1024
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def end_to_end(path: Path, images: list[Path], threads: int = 1, runs: int = 3) -> dict[str, Any]:
    """JPEG bytes in memory -> label: decode (draft-scaled), resize, run, decide."""
    p = OnnxPredictor(path, threads=threads)
    blobs = [Path(i).read_bytes() for i in images]
    p.predict([blobs[0]])  # warm-up
    ms = []
    for _ in range(runs):
        for b in blobs:
            t = time.perf_counter()
            p.predict([b])
            ms.append((time.perf_counter() - t) * 1e3)
    return {**percentiles(ms), "images": len(blobs)}


def bench(path: str | Path, images: list[Path] | None = None, large_images: list[Path] | None = None,
          runs: int = 100, batch: int = 32) -> dict[str, Any]:
    path = Path(path)
    raw = path.read_bytes()
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {
        "model": str(path), "size_bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, 9)),
        "machine": machine(),
        "batch1_1thread": latency(path, 1, 1, runs),
        f"batch1_{cores}threads": latency(path, cores, 1, runs),
    }
    thr = latency(path, cores, batch, max(5, runs // 10), 2)
    out[f"throughput_batch{batch}_img_per_s"] = batch / (thr["p50_ms"] / 1e3)
    out["peak_rss_mb"] = peak_memory_mb(path)
    if images:
        out["end_to_end"] = end_to_end(path, images)
    if large_images:
        out["end_to_end_large"] = end_to_end(path, large_images)
    return out


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


if __name__ == "__main__":  # pragma: no cover - manual use
    print(json.dumps(bench(sys.argv[1]), indent=2))
