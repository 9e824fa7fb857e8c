"""Architecture search against hand-designed networks on the same data, budget and measurement.

    python benchmarks/bench_search.py [--data ../shared/data/hotdog] [--budget 30m] [--final-epochs 10]
                                      [--size 224] [--baselines deepdog,mobilenet_v2,efficientnet_lite0,alexnet]

1. The baselines, from scratch, each trained for --final-epochs at --size and exported to ONNX fp32; latency is the
   median of 1-thread onnxruntime runs of the exported file (`search/latency.py:measure_export`, what the search
   itself measures).
2. `pocketvision search` with --max-latency-ms = deepdog alpha=0.5's measured latency (the architecture must be at
   least as fast), --budget, 2 epochs per candidate, then the best feasible architecture trained for
   --final-epochs like the baselines.
3. A table: validation accuracy, latency, size, and the ratios against deepdog alpha=0.5.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402

import pocketvision as pv  # noqa: E402
from pocketvision.search import search  # noqa: E402
from pocketvision.search.latency import measure_export  # noqa: E402

BASELINES = {"deepdog": {"alpha": 0.5}, "mobilenet_v2": {}, "efficientnet_lite0": {}, "alexnet": {}}


def baseline(data: str, arch: str, size: int, epochs: int, work: Path) -> dict:
    t0 = time.perf_counter()
    b = pv.train(data, arch=arch, arch_args=BASELINES[arch], size=size, epochs=epochs, pretrained=False,
                 recipe=False, workers=1, progress=False, tensorboard=False, run_dir=work / arch,
                 console=Console(file=io.StringIO()))
    ms, mb = measure_export(b, "onnx", "fp32", work / arch, work / "latency.lock")
    return {"model": f"{arch} {BASELINES[arch] or ''}".strip(), "size": size, "score": b.meta["metrics"]["val_score"],
            "latency_ms": ms, "size_mb": mb, "train_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "hotdog"))
    ap.add_argument("--budget", default="30m")
    ap.add_argument("--epochs", type=int, default=2, help="per candidate")
    ap.add_argument("--final-epochs", type=int, default=10)
    ap.add_argument("--size", type=int, default=224, help="the baselines' input side")
    ap.add_argument("--baselines", default="deepdog")
    ap.add_argument("--resolutions", default="96,128,160,192,224")
    ap.add_argument("--run-dir", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}")
    print(f"command: python benchmarks/bench_search.py --budget {a.budget} --epochs {a.epochs} --final-epochs "
          f"{a.final_epochs} --size {a.size} --baselines {a.baselines} --resolutions {a.resolutions}\n", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    rows = [baseline(a.data, arch, a.size, a.final_epochs, work) for arch in a.baselines.split(",")]
    ref = rows[0]
    print(f"reference {ref['model']}: val {ref['score']:.4f}, {ref['latency_ms']:.2f} ms\n", flush=True)
    t0 = time.perf_counter()
    summary = search(a.data, target="onnx", max_latency_ms=ref["latency_ms"], budget=a.budget, epochs=a.epochs,
                     final_epochs=a.final_epochs, out=work / "searched.pvb",
                     run_dir=a.run_dir or work / "search", resolutions=[int(r) for r in a.resolutions.split(",")],
                     log=lambda m: print(m, flush=True))
    if summary.get("final"):
        f = summary["final"]
        rows.append({"model": f"searched: {summary['best']['architecture']}",
                     "size": json.loads(Path(summary["best"]["arch_file"]).read_text())["resolution"],
                     "score": f["score"], "latency_ms": f["latency_ms"], "size_mb": f["size_mb"],
                     "train_s": time.perf_counter() - t0})
    print(f"\nsearch: {summary['evaluations']} candidates, {summary['feasible']} within {ref['latency_ms']:.2f} ms, "
          f"block-table median error {summary['table_error_median']:.0%}; run folder {summary['run_dir']}\n")
    print("| model | input | val accuracy | latency (ms, ORT fp32, 1 thread) | size (MB) | vs deepdog 0.5: "
          "accuracy, latency | wall time (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['size']} | {r['score']:.4f} | {r['latency_ms']:.2f} | {r['size_mb']:.2f} | "
              f"{r['score'] - ref['score']:+.4f}, {r['latency_ms'] / ref['latency_ms']:.2f}x | {r['train_s']:.0f} |")


if __name__ == "__main__":
    main()
