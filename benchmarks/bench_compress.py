"""Benchmarks of every target x compression for the trained bundles, plus the Ultralytics peer's exports.

    python benchmarks/bench_compress.py [--bundles benchmarks/out/deepdog.pvb,benchmarks/out/efficientnet_lite0.pvb]
        [--skip-variants] [--peer-weights benchmarks/out/ultralytics/train/weights/best.pt]

1. ``pocketvision bench BUNDLE --all`` for each bundle (one table each: size raw/gzip, accuracy,
   parity, latency at 1 and all threads, status; Pareto plot) into ``benchmarks/out/variants-NAME/``.
2. An interleaved latency A/B of fp32 vs int8 (ONNX and LiteRT, 1 thread): runs alternate in rounds
   so machine noise hits both alike; medians of the per-round medians and their ratio.
3. The Ultralytics peer (its own venv) exports its classifier to onnx and tflite and is checked the
   same way (size, latency, agreement with its own torch model on the same val photos).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
from bench_classify import UL_VENV  # noqa: E402 - the peer venv bench_classify.py --parts ultralytics makes

PEER_PY = UL_VENV / "bin" / "python"


def interleaved(paths: dict[str, Path], rounds: int = 7, runs: int = 30) -> dict[str, float]:
    from pocketvision.deploy.artifact import open_predictor
    preds = {k: open_predictor(p, threads=1) for k, p in paths.items()}
    per = {k: [] for k in paths}
    for _ in range(rounds):
        for k, p in preds.items():
            h, w = p.contract.size
            x = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
            for _ in range(3):
                p.run_pixels(x)
            t = []
            for _ in range(runs):
                t0 = time.perf_counter()
                p.run_pixels(x)
                t.append((time.perf_counter() - t0) * 1e3)
            per[k].append(statistics.median(t))
    return {k: statistics.median(v) for k, v in per.items()}


def print_variants(path: Path) -> None:
    if not path.exists():
        return
    d = json.loads(path.read_text())
    print(f"\n`{d['command']}` ({d['machine']})\n")
    print("| format | precision | size | gzip | accuracy | max abs dp | agreement | p50 1 thread | p50 all threads | "
          "status |\n|---|---|---|---|---|---|---|---|---|---|")
    f = lambda x, fmt, k=1.0: "-" if x is None else format(x / k, fmt)  # noqa: E731
    icon = {"verified": "✅", "failed": "❌"}
    for r in d["variants"]:
        print(f"| {r['target']} | {r['precision']}{' ' + str(r['bits']) + '-bit palette' if r['bits'] else ''} | "
              f"{f(r['size_bytes'], '.2f', 1e6)} MB | {f(r['gzip_bytes'], '.2f', 1e6)} MB | {f(r['accuracy'], '.4f')} | "
              f"{f(r['max_abs_diff'], '.1e')} | {f(r['agreement'], '.4f')} | {f(r['p50_1t_ms'], '.2f')} ms | "
              f"{f(r['p50_all_ms'], '.2f')} ms | {icon.get(r['status'], '❎')} {r['reason']} |")
    ready = [r["extra"]["page_ready_s"] for r in d["variants"] if "page_ready_s" in r["extra"]]
    if ready:
        print(f"\nweb: navigation -> ready (model downloaded, session created, warm-up run) {min(ready):.2f}-"
              f"{max(ready):.2f} s on the first visit")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundles", default=f"{OUT}/deepdog.pvb,{OUT}/efficientnet_lite0.pvb")
    ap.add_argument("--skip-variants", action="store_true")
    ap.add_argument("--peer-weights", default=f"{OUT}/ultralytics/train/weights/best.pt")
    ap.add_argument("--val", default=str(HERE.parent.parent / "shared" / "data" / "hotdog" / "val"))
    a = ap.parse_args()
    from pocketvision.deploy.bench import machine
    print(f"machine: {machine()}\ncommand: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}\n")
    results = {}
    for b in a.bundles.split(","):
        name = Path(b).stem
        vdir = OUT / f"variants-{name}"
        if not a.skip_variants:
            subprocess.run(["pocketvision", "bench", b, "--all", "--out-dir", str(vdir)], check=False)
        print_variants(vdir / "variants.json")
        files = {"onnx fp32": vdir / f"{name}.onnx", "onnx int8": vdir / f"{name}-int8.onnx",
                 "tflite fp32": vdir / f"{name}.tflite", "tflite int8": vdir / f"{name}-int8.tflite"}
        lat = interleaved({k: p for k, p in files.items() if p.exists()})
        results[name] = lat
        print(f"\n{name}: interleaved p50 at 1 thread (median of 7 rounds x 30 runs)")
        print("| variant | p50 ms | vs fp32 of the same runtime |\n|---|---|---|")
        for k, v in lat.items():
            ref = lat.get(k.split()[0] + " fp32")
            print(f"| {k} | {v:.2f} | {v / ref:.2f}x |" if ref else f"| {k} | {v:.2f} | - |")
    if not (PEER_PY.exists() and Path(a.peer_weights).exists()):
        print(f"\nUltralytics peer skipped: needs {PEER_PY} and {a.peer_weights}; make both with "
              "`python benchmarks/bench_classify.py --parts ultralytics`.")
    else:
        r = subprocess.run([str(PEER_PY), str(HERE / "ultralytics_exports.py"), a.peer_weights, a.val],
                           capture_output=True, text=True)
        peer = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else {
            "error": r.stderr.strip().splitlines()[-1:]}
        results["ultralytics"] = peer
        print("\nUltralytics yolo11n-cls exports (its own predict API on the same val photos)")
        print("| format | size | gzip | max |dp| vs its torch model | agreement | accuracy | predict e2e p50 |")
        print("|---|---|---|---|---|---|---|")
        for fmt, row in peer.get("formats", {}).items():
            if "error" in row:
                print(f"| {fmt} | - | - | - | - | - | {row['error']} |")
            else:
                print(f"| {fmt} | {row['bytes'] / 1e6:.2f} MB | {row['gzip_bytes'] / 1e6:.2f} MB | "
                      f"{row['max_abs_diff']:.1e} | {row['agreement']:.4f} | {row['accuracy']:.4f} | "
                      f"{row['predict_e2e_p50_ms']:.2f} ms |")
    (OUT / "bench_compress.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
