"""Teaching new classes from a few examples: the device's learner against scikit-learn and nearest-neighbour.

On ``dishes/`` (ten dishes, 30 training and 30 held-out photos each): 1, 5, 10 and 30 examples per class drawn from
``train/`` (5 draws below 30), judged on ``eval/``, all on the same embeddings: the backbone alone
(EfficientNet-Lite0's ImageNet weights: a model created on the device) and, with ``--bundle``, a shipped classifier's.
Learners: ``pocketvision.runtime.teach.fit_head`` (numpy, the device's), scikit-learn's LogisticRegression (C=1,
L-BFGS) on the same unit-length rows, cosine kNN (k=1, 5) and nearest class mean. Also the fit's time at 10 x 30.
Prints one table and writes ``benchmarks/out/teach.json`` and ``teach.png``.

    python benchmarks/bench_teach.py [--bundle shipped.pvb]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("POCKETVISION_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SHOTS = (1, 5, 10, 30)


def embeddings(model, contract, root: Path, split: str):
    import torch
    files = [(f, c.name) for c in sorted((root / split).iterdir()) for f in sorted(c.iterdir())]
    out = []
    with torch.no_grad():
        for i in range(0, len(files), 50):
            px = np.stack([contract.load(f) for f, _ in files[i:i + 50]])
            out.append(model.eval().forward_features(torch.from_numpy(contract.normalize(px))).numpy())
    return np.concatenate(out), np.array([c for _, c in files])


def learners(xtr, ytr, xev):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    from pocketvision.runtime.teach import fit_head, unit_rows
    k = min(np.unique(ytr, return_counts=True)[1])
    yield "pocketvision (numpy)", np.array([r["label"] for r in fit_head(xtr, list(ytr)).predict(xev)])
    yield "scikit-learn LR", LogisticRegression(C=1.0, max_iter=5000).fit(unit_rows(xtr), ytr).predict(unit_rows(xev))
    for n in (1, 5):
        if n <= k:
            yield f"kNN k={n}", KNeighborsClassifier(n, metric="cosine").fit(xtr, ytr).predict(xev)
    classes = np.unique(ytr)
    means = unit_rows(np.stack([unit_rows(xtr[ytr == c]).mean(0) for c in classes]))
    yield "nearest class mean", classes[np.argmax(unit_rows(xev) @ means.T, 1)]


def personal_beside_shipped(bundle_path: str) -> list[dict]:
    """The shipped classes' accuracy on hotdog/val before and after two personal classes of 10 dish photos, and
    how well those are recognised on dishes/eval; for three pairs (look-alike food and not)."""
    import tempfile

    import pocketvision as pv
    from pocketvision.deploy.artifact import open_predictor
    from pocketvision.runtime.teach import Teacher
    b = pv.load(bundle_path)
    val = [(p, c) for c in b.labels for p in sorted((DATA / "hotdog" / "val" / c).iterdir())]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx = b.export(Path(tmp) / "t.onnx", teachable=True, verify=False).path
        with open_predictor(onnx) as model:
            before = np.mean([r["label"] == c for r, (_, c) in zip(model.predict([p for p, _ in val]), val)])
            for pair in (("pizza", "sushi"), ("hamburger", "french_fries"), ("ramen", "ice_cream")):
                t = Teacher(model, Path(tmp) / "-".join(pair))
                for c in pair:
                    t.add(c, sorted((DATA / "dishes" / "train" / c).iterdir())[:10])
                got = t.predict([p for p, _ in val])
                recall = {c: float(np.mean([r["label"] == c for r in t.predict(sorted((DATA / "dishes" / "eval" / c)
                                                                                      .iterdir()))])) for c in pair}
                rows.append({"classes": " + ".join(pair), "val_before": float(before),
                             "val_after": float(np.mean([r["label"] == c for r, (_, c) in zip(got, val)])),
                             "taken": int(sum(bool(r.get("personal")) for r in got)), "recall": recall})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", help="a shipped classifier: its embeddings too")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--plot", type=Path, help="only draw out/teach.json's table into this file (.svg or .png)")
    args = ap.parse_args()
    if args.plot:
        plot(json.loads((Path(__file__).parent / "out" / "teach.json").read_text())["rows"], args.plot)
        return
    import pocketvision as pv
    from pocketvision.core.contract import Contract
    from pocketvision.models.registry import build_model, model_entry
    from pocketvision.runtime.teach import fit_head
    root = DATA / "dishes"
    sources = {"backbone alone (Lite0 ImageNet)": (
        build_model({"name": "efficientnet_lite0", "args": {"num_classes": 1000}}, pretrained=True),
        Contract.from_dict(model_entry("efficientnet_lite0").default_contract))}
    if args.bundle:
        b = pv.load(args.bundle)
        sources[f"shipped classifier ({Path(args.bundle).name})"] = (b.model, b.contract)
    rows, timing = [], {}
    for src, (model, contract) in sources.items():
        xtr, ytr = embeddings(model, contract, root, "train")
        xev, yev = embeddings(model, contract, root, "eval")
        for shots in SHOTS:
            acc: dict[str, list[float]] = {}
            for draw in range(args.draws if shots < 30 else 1):
                rng = np.random.default_rng(draw)
                pick = np.concatenate([rng.permutation(np.flatnonzero(ytr == c))[:shots] for c in np.unique(ytr)])
                for name, pred in learners(xtr[pick], ytr[pick], xev):
                    acc.setdefault(name, []).append(float((pred == yev).mean()))
            rows.append({"embeddings": src, "shots": shots, **{k: float(np.mean(v)) for k, v in acc.items()}})
        t = []
        for _ in range(5):
            t0 = time.perf_counter()
            fit_head(xtr, list(ytr))
            t.append(time.perf_counter() - t0)
        timing[src] = float(np.median(t))
    beside = personal_beside_shipped(args.bundle) if args.bundle else None
    names = list(dict.fromkeys(k for r in rows for k in r if k not in ("embeddings", "shots")))
    print(f"# bench_teach: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"command: python {' '.join(sys.argv)}")
    print("| embeddings | examples per class | " + " | ".join(names) + " | ours - LR | ours - kNN k=1 |")
    print("|---|---|" + "---|" * (len(names) + 2))
    for r in rows:
        print(f"| {r['embeddings']} | {r['shots']} | " + " | ".join(f"{r.get(n, float('nan')):.3f}" for n in names)
              + f" | {100 * (r[names[0]] - r[names[1]]):+.1f} | {100 * (r[names[0]] - r['kNN k=1']):+.1f} |")
    for src, s in timing.items():
        print(f"fit time, 10 classes x 30 examples, numpy ({src}): median of 5 {1000 * s:.0f} ms")
    if beside:
        print("\nTwo personal classes of 10 photos each beside the shipped ones (runtime.teach.Teacher, the bundle "
              "exported --teachable to ONNX):")
        print("| personal classes | hotdog/val (shipped answers) | val photos taken by a personal class | "
              "personal recall on dishes/eval (30 each) |")
        print("|---|---|---|---|")
        for r in beside:
            print(f"| {r['classes']} | {r['val_before']:.4f} -> {r['val_after']:.4f} | {r['taken']} | "
                  + ", ".join(f"{c} {v:.2f}" for c, v in r["recall"].items()) + " |")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "teach.json").write_text(json.dumps({"rows": rows, "fit_seconds": timing, "beside": beside}, indent=1))
    plot(rows, out / "teach.png")


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy against examples per class, one panel per embedding, one line per learner (PNG or SVG by suffix)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: a small file
    sources = list(dict.fromkeys(r["embeddings"] for r in rows))
    names = list(dict.fromkeys(k for r in rows for k in r if k not in ("embeddings", "shots")))
    fig, axes = plt.subplots(1, len(sources), figsize=(5 * len(sources), 3.6), squeeze=False, sharey=True)
    for ax, src in zip(axes[0], sources):
        for n in names:
            pts = [(r["shots"], r[n]) for r in rows if r["embeddings"] == src and n in r]
            ax.plot(*zip(*pts), marker="o", label=n)
        ax.set(xscale="log", xticks=SHOTS, xticklabels=SHOTS, xlabel="examples per class", ylabel="accuracy on eval/",
               title=src)
        ax.minorticks_off()
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Date": None} if path.suffix == ".svg" else None)


if __name__ == "__main__":
    main()
