"""Architecture search against hand-designed networks on the same data, final budget, seeds and measurement.

    python benchmarks/bench_search.py [--data ../shared/data/hotdog] [--budget 30m] [--epochs 5] [--workers 2]
                                      [--baselines deepdog,mobilenet_v2,efficientnet_lite0,alexnet] [--out DIR]
                                      [--population 12] [--sample 4] [--inherit] [--start-from-reference | --start F]
                                      [--finalists K] [--scale-up] [--final-seeds N]

1. The reference: deepdog alpha=0.5 as its from-scratch recipe builds it (128 px, dw_bn), exported to ONNX fp32 and
   timed with 1-thread onnxruntime; that latency is the search's --max-latency-ms (the searched network must be at
   least as fast).
2. `pocketvision search ... --out` with --budget, --epochs per candidate, --workers processes (on the GPU when there
   is one); with --start-from-reference it begins from deepdog alpha=0.5's own architecture (`search --start
   ref.pvb`), with --start from a given network. Its final stage trains the --finalists best distinct architectures
   (and, with --scale-up, each scaled up to the limit) with the final budget for --final-seeds seeds.
3. The final budget, the same for every row: each baseline is trained the way a user's `pocketvision train DATA
   --arch A --scratch` trains it (the from-scratch recipe: SGD one-cycle, EMA, 120 epochs for ~1,100 images), with
   the same seeds, --workers side by side, then exported to ONNX fp32.
4. Every row's file is timed again, interleaved (5 rounds, median of medians), and the table gives val accuracy per
   seed and its mean, latency, size and the ratios against deepdog alpha=0.5.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

ALL = "deepdog,mobilenet_v2,efficientnet_lite0,alexnet"


def final_train(job: dict) -> dict:
    """One row: train ``job['arch']`` from scratch with the recipe (the user's default), export ONNX fp32."""
    from rich.console import Console

    import pocketvision as pv
    torch.set_num_threads(job["threads"])
    t0 = time.perf_counter()
    work = Path(job["work"])
    extra = {"epochs": job["epochs"]} if job["epochs"] else {}
    b = pv.train(job["data"], arch=job["arch"], pretrained=False, recipe=True, workers=job["workers"],
                 progress=False, tensorboard=False, run_dir=work / "run", console=Console(file=io.StringIO()),
                 seed=job["seed"], device=job["device"], **extra)
    res = b.export(work / "model.onnx", to="onnx", precision="fp32", verify=False)
    cfg = b.meta.get("train_config", {})
    return {"arch": job["arch"], "score": float(b.meta["metrics"]["val_score"]), "onnx": str(res.path),
            "size_mb": res.size_bytes / 2**20, "input": b.meta["contract"]["size"][0],
            "recipe": (b.meta.get("recipe") or {}).get("name"), "epochs": cfg.get("epochs"),
            "arch_args": b.meta["arch"].get("args"), "train_s": time.perf_counter() - t0}


def quiet_latency(files: list[str], rounds: int = 5, runs: int = 60) -> dict[str, float]:
    """Median over ``rounds`` of each file's 1-thread median, the files interleaved so that drift hits all alike."""
    from pocketvision.deploy.bench import latency
    seen: dict[str, list[float]] = {f: [] for f in files}
    for _ in range(rounds):
        for f in files:
            seen[f].append(latency(f, threads=1, runs=runs, warmup=10)["p50_ms"])
    return {f: float(np.median(v)) for f, v in seen.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "hotdog"))
    ap.add_argument("--budget", default="30m", help="the search's: a time (30m) or a number of candidates")
    ap.add_argument("--epochs", type=int, default=5, help="per candidate")
    ap.add_argument("--final-epochs", type=int, default=None, help="default: the recipe's (the same for every row)")
    ap.add_argument("--workers", type=int, default=1, help="search worker processes (and candidates per round)")
    ap.add_argument("--loader-workers", type=int, default=1, help="data workers of each final training")
    ap.add_argument("--baselines", default=ALL)
    ap.add_argument("--resolutions", default="64,96,128,160,192,224")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--population", type=int, default=12)
    ap.add_argument("--sample", type=int, default=4)
    ap.add_argument("--inherit", action="store_true", help="weight inheritance in the search")
    ap.add_argument("--start-from-reference", action="store_true",
                    help="the search begins from deepdog alpha=0.5 itself (search --start) instead of random networks")
    ap.add_argument("--start", action="append", default=None, metavar="FILE",
                    help="the search begins from this network (search --start: a bundle or an arch.json)")
    ap.add_argument("--finalists", type=int, default=1, help="the search's final stage (search --finalists)")
    ap.add_argument("--final-seeds", type=int, default=1, help="seeds of every final training, the baselines' too")
    ap.add_argument("--scale-up", action="store_true", help="the search's final stage (search --scale-up)")
    ap.add_argument("--device", default="auto", help="training device of every run (auto: the GPU if there is one)")
    ap.add_argument("--out", default=None, help="copy the table, history, plot and architecture here")
    a = ap.parse_args()
    from rich.console import Console

    import pocketvision as pv
    from pocketvision.search import search
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"machine: {cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, "
          f"torch {torch.__version__}")
    print("command: python benchmarks/bench_search.py " + " ".join(sys.argv[1:]) + "\n", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    t_all = time.perf_counter()

    # 1. The limit: deepdog alpha=0.5 as its recipe builds it (latency does not depend on the weights: one epoch).
    ref = pv.train(a.data, out=work / "ref.pvb", arch="deepdog", pretrained=False, recipe=True, epochs=1, workers=0,
                   device=a.device, progress=False, tensorboard=False, run_dir=work / "ref-run",
                   console=Console(file=io.StringIO()))
    ref_file = ref.export(work / "ref.onnx", to="onnx", precision="fp32", verify=False).path
    limit = quiet_latency([str(ref_file)])[str(ref_file)]
    print(f"limit: deepdog {ref.meta['arch'].get('args')} at {ref.meta['contract']['size'][0]} px: "
          f"{limit:.3f} ms (ORT fp32, 1 thread)\n", flush=True)

    # 2. The search, and its final stage: the finalists trained with the final budget and seeds (search --out).
    t0 = time.perf_counter()
    starts = [Path(f) for f in a.start] if a.start else [work / "ref.pvb"] if a.start_from_reference else None
    summary = search(a.data, target="onnx", max_latency_ms=limit, budget=a.budget, epochs=a.epochs,
                     workers=a.workers, batch=a.workers, run_dir=work / "search", seed=a.seed,
                     population=a.population, sample=a.sample, inherit=a.inherit, start=starts,
                     train_options={"device": a.device}, out=work / "best.pvb", final_epochs=a.final_epochs,
                     finalists=a.finalists, final_seeds=a.final_seeds, scale_up=a.scale_up,
                     resolutions=[int(r) for r in a.resolutions.split(",")], log=lambda m: print(m, flush=True))
    search_s = time.perf_counter() - t0
    print(f"\nsearch and final stage: {summary['evaluations']} candidates, {summary['feasible']} within "
          f"{limit:.2f} ms, block-table median error {summary['table_error_median'] or 0:.0%}; {search_s:.0f} s\n",
          flush=True)
    if not summary.get("best"):
        sys.exit("no feasible architecture: raise --budget")

    # 3. The baselines with the same final budget and seeds, side by side.
    seeds = [a.seed + i for i in range(a.final_seeds)]
    jobs = [{"arch": r, "data": a.data, "epochs": a.final_epochs, "workers": a.loader_workers, "threads": 1,
             "device": a.device, "seed": sd, "work": str(work / f"final-{r}-{sd}")}
            for r in a.baselines.split(",") if r for sd in seeds]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max(1, a.workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(final_train, jobs))
    print(f"baseline trainings: {time.perf_counter() - t0:.0f} s, {a.workers} side by side\n", flush=True)
    rows = []
    for r in dict.fromkeys(j["arch"] for j in jobs):
        mine = [x for x in results if x["arch"] == r]
        rows.append({"name": r, "input": mine[0]["input"], "scores": [x["score"] for x in mine],
                     "file": mine[0]["onnx"], "size_mb": mine[0]["size_mb"],
                     "how": f"{mine[0]['recipe']}, {mine[0]['epochs']} epochs, {mine[0]['train_s']:.0f} s"})
    for f in summary["finals"]:
        win = " **(chosen)**" if f["finalist"] == summary["final"]["finalist"] else ""
        how = f"from evaluation {f['from']}" + (f", scaled x{f['scaled']:g} width" if f["scaled"] else "")
        rows.append({"name": f"searched finalist {f['finalist']}{win}: {f['architecture']}", "input":
                     int(f["architecture"].split("px")[0]), "scores": f["scores"], "file": f["file"],
                     "size_mb": f["size_mb"], "how": how + ", the same recipe and seeds"})

    # 4. Quiet, interleaved timing of every file; the table.
    ms = quiet_latency([r["file"] for r in rows])
    ref_row = next((r for r in rows if r["name"] == "deepdog"), rows[0])

    def mean(r: dict) -> float:
        return float(np.mean(r["scores"]))
    lines = [f"| model | input | val accuracy, seeds {', '.join(map(str, seeds))} | mean | latency (ms, ORT fp32, "
             "1 thread) | size (MB) | vs deepdog 0.5: mean accuracy, latency | final training |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['input']} | {' / '.join(f'{x:.4f}' for x in r['scores'])} | {mean(r):.4f} | "
                     f"{ms[r['file']]:.3f} | {r['size_mb']:.2f} | {mean(r) - mean(ref_row):+.4f}, "
                     f"{ms[r['file']] / ms[ref_row['file']]:.2f}x | {r['how']} |")
    table = "\n".join(lines)
    print(table)
    print(f"\nwhole benchmark: {time.perf_counter() - t_all:.0f} s")
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(table + "\n")
        (out / "results.json").write_text(json.dumps({"limit_ms": limit, "search_s": search_s, "summary": summary,
                                                      "rows": rows, "quiet_ms": ms}, indent=1))
        run = Path(summary["run_dir"])
        for f in ("history.csv", "search.png", "arch.json", "finals.json"):
            if (run / f).exists():
                shutil.copy(run / f, out / f)


if __name__ == "__main__":
    main()
