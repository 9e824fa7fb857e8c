"""Does the "unfamiliar" score predict the model's mistakes, and what does it cost on a device?

    python benchmarks/bench_unfamiliar.py --bundle model.pvb [--data ../shared/data] [--runs 300]

For the bundle's ONNX export (fp32, 1 thread, batch 1; the same graph with and without the score, measured side by
side in this run, median of --runs after warm-up): latency and file size. On food-shift/eval (never trained on) and
hotdog/val: ROC-AUC of the score for ranking the wrong answers (at the stored threshold) above the right ones, the
same for the model's own uncertainty (1 - top probability) alone, and the share of photos flagged (above the val
photos' 95th percentile). Prints a markdown table with the machine and the command.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def latency(path: Path, size: tuple[int, int], runs: int) -> float:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).integers(0, 256, (1, *size, 3), dtype=np.uint8)
    name, outs = s.get_inputs()[0].name, [o.name for o in s.get_outputs()]
    for _ in range(20):
        s.run(outs, {name: x})
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(outs, {name: x})
        t.append((time.perf_counter() - t0) * 1000)
    return statistics.median(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data"))
    ap.add_argument("--runs", type=int, default=300)
    a = ap.parse_args()
    sys.path.insert(0, str(HERE.parent / "src"))
    import pocketvision as pv
    from pocketvision.deploy.artifact import open_predictor
    from sklearn.metrics import roc_auc_score

    b = pv.load(a.bundle)
    if getattr(b.model, "familiarity", None) is None:
        raise SystemExit(f"{a.bundle} has no unfamiliarity score (trained before it existed): train it again.")
    data = Path(a.data)
    tmp = Path(tempfile.mkdtemp(prefix="pv-unf-"))
    with_score = b.export(tmp / "with.onnx").path
    plain = copy.deepcopy(b)
    plain.model.familiarity = None
    plain.meta["arch"] = {k: v for k, v in b.meta["arch"].items() if k != "familiarity"}
    without = plain.export(tmp / "without.onnx", verify=False).path
    size = tuple(b.contract.size)
    lat = {}
    for _ in range(3):  # alternate, so a noisy neighbour hits both
        for name, path in (("without", without), ("with", with_score)):
            lat.setdefault(name, []).append(latency(path, size, a.runs))
    rows = []
    with open_predictor(with_score, threads=1) as p:
        sets = (("food-shift/eval", data / "food-shift" / "eval"), ("hotdog/val", data / "hotdog" / "val"))
        for name, folder in sets:
            paths, ys = [], []
            for ci, c in enumerate(p.labels):
                fs = sorted((folder / c).iterdir())
                paths += [str(f) for f in fs]
                ys += [c] * len(fs)
            recs = [r for i in range(0, len(paths), 32) for r in p.predict(paths[i:i + 32])]
            wrong = np.array([r["label"] != y for r, y in zip(recs, ys)])
            unf = np.array([r["unfamiliar"] for r in recs])
            unc = np.array([1 - max(r["probabilities"].values()) for r in recs])
            flag = np.array([r["unfamiliar_flag"] for r in recs])
            auc = roc_auc_score(wrong, unf) if 0 < wrong.sum() < len(wrong) else float("nan")
            auc_u = roc_auc_score(wrong, unc) if 0 < wrong.sum() < len(wrong) else float("nan")
            rows.append((name, len(recs), int(wrong.sum()), auc, auc_u, flag.mean(), flag[wrong].mean() if wrong.any()
                         else float("nan"), flag[~wrong].mean()))
    w, wo = statistics.median(lat["with"]), statistics.median(lat["without"])
    print(f"\nMachine: {machine()}\nCommand: `python benchmarks/bench_unfamiliar.py {' '.join(sys.argv[1:])}`\n")
    print("| ONNX fp32, 1 thread, batch 1 | median ms | size MB |\n|---|---|---|")
    print(f"| without the score | {wo:.2f} | {without.stat().st_size / 1e6:.2f} |")
    print(f"| with the score | {w:.2f} ({(w / wo - 1) * 100:+.1f}%) | {with_score.stat().st_size / 1e6:.2f} |\n")
    print("| photos | n | wrong | AUC (unfamiliar, wrong > right) | AUC (1 - top probability alone) | flagged | "
          "flagged among wrong | flagged among right |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.1%} | {r[6]:.1%} | {r[7]:.1%} |")


if __name__ == "__main__":
    main()
