"""How far photos of the shift can take the defaults' backbone: upper bounds for the loop after shipping.

On ``food-shift/eval`` (never trained on), against the live bundle: (a) logistic regressions fitted to the live
model's frozen pooled features on ``hotdog/train`` plus labelled ``food-shift/pool`` photos (all of them, or only
those the live model gets wrong: the corrections users would send), (b) a training-free cache of those corrections
added to the live logits (Tip-Adapter: affinity exp(-beta (1 - cos))), and with ``--train`` (c) a full
``pocketvision train`` on ``hotdog/train`` + every pool photo. Prints one table, best setting per row.

    python benchmarks/bench_shift_bounds.py --bundle live.pvb [--train]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("POCKETVISION_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def features(bundle, root: Path):
    """(L2-normalised pooled features, class probabilities, labels) of every photo under root/<label>/."""
    import torch

    from pocketvision.core.pixels import load_pixels
    paths, ys = [], []
    for ci, label in enumerate(bundle.labels):
        ps = sorted((root / label).iterdir())
        paths += ps
        ys += [ci] * len(ps)
    px, kept = load_pixels(paths, bundle.contract)
    model, feats, probs = bundle.model.eval(), [], []
    with torch.no_grad():
        for i in range(0, len(px), 64):
            f = model.forward_features(torch.from_numpy(bundle.contract.normalize(px[i:i + 64])))
            feats.append(f.numpy())
            probs.append(model.classifier(f).softmax(1).numpy())
    f = np.concatenate(feats)
    return f / np.linalg.norm(f, axis=1, keepdims=True), np.concatenate(probs), np.array(ys)[kept]


def scores(p_pos: np.ndarray, y: np.ndarray, pos: int, thr: float) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score
    said = np.where(p_pos >= thr, pos, 1 - pos)
    return float((said == y).mean()), float(roc_auc_score(y == pos, p_pos))


def probes(sets, pos: int, chosen: np.ndarray) -> tuple[float, float, float]:
    """Best logistic regression over pool weight, C and the live logit as an input -> (acc, auc, val acc)."""
    from sklearn.linear_model import LogisticRegression
    best = (0.0, 0.0, 0.0)
    for weight in (1, 5, 20):
        for c in (0.1, 1, 10):
            for logit in (False, True):
                def x(k):
                    f, p, _ = sets[k]
                    z = np.log(np.clip(p[:, [pos]], 1e-6, 1)) - np.log(np.clip(p[:, [1 - pos]], 1e-6, 1))
                    return np.hstack([f, z]) if logit else f
                xt = np.vstack([x("train"), x("pool")[chosen]])
                yt = np.r_[sets["train"][2], sets["pool"][2][chosen]]
                w = np.r_[np.ones(len(sets["train"][2])), np.full(chosen.sum(), weight)]
                clf = LogisticRegression(C=c, max_iter=3000).fit(xt, yt, sample_weight=w)
                col = list(clf.classes_).index(pos)
                acc, auc = scores(clf.predict_proba(x("eval"))[:, col], sets["eval"][2], pos, 0.5)
                val, _ = scores(clf.predict_proba(x("val"))[:, col], sets["val"][2], pos, 0.5)
                best = max(best, (acc, auc, val))
    return best


def cache(sets, pos: int, thr: float, wrong: np.ndarray, draws: int = 5) -> tuple[float, float]:
    """Best training-free correction cache (alpha, beta), mean over random orders of the corrections."""
    keys, labels = sets["pool"][0][wrong], np.eye(2)[sets["pool"][2][wrong]]
    f, p, y = sets["eval"]
    best = (0.0, 0.0)
    for alpha in (1, 3, 10):
        for beta in (1, 3, 5, 10):
            runs = []
            for s in range(draws):
                k = np.random.default_rng(s).permutation(len(keys))
                logits = np.log(np.clip(p, 1e-6, 1)) + alpha * np.exp(-beta * (1 - f @ keys[k].T)) @ labels[k]
                q = np.exp(logits - logits.max(1, keepdims=True))
                runs.append(scores((q / q.sum(1, keepdims=True))[:, pos], y, pos, thr))
            best = max(best, tuple(np.mean(runs, 0)))
    return best


def full_training(out: Path) -> dict:
    """`pocketvision train` on hotdog/train + every pool photo (class folders of links), hotdog/val as val."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for split, sources in (("train", [DATA / "hotdog/train", DATA / "food-shift/pool"]), ("val", [DATA / "hotdog/val"])):
            for src in sources:
                for label_dir in src.iterdir():
                    dst = root / split / label_dir.name
                    dst.mkdir(parents=True, exist_ok=True)
                    for photo in label_dir.iterdir():
                        (dst / f"{src.parent.name}-{photo.name}").symlink_to(photo)
        cli = [sys.executable, "-m", "pocketvision"]
        subprocess.run([*cli, "train", str(root), "--seed", "0", "--out", str(out), "--json"], check=True,
                       stdout=subprocess.DEVNULL)
    r = json.loads(subprocess.run([*cli, "eval", str(out), str(DATA / "food-shift/eval"), "--json"], check=True,
                                  capture_output=True, text=True).stdout)
    return {"accuracy": r["accuracy"], "roc_auc": r["roc_auc"], "precision": r["threshold_precision"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="the live bundle (the defaults' classifier)")
    ap.add_argument("--train", action="store_true", help="also train on hotdog/train + every pool photo (~3 min)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "shift_bounds"))
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    import pocketvision as pv
    torch.set_num_threads(os.cpu_count() or 1)
    b = pv.load(a.bundle)
    pos, thr = b.threshold["positive"], b.threshold["value"]
    sets = {k: features(b, DATA / r) for k, r in (("train", "hotdog/train"), ("val", "hotdog/val"),
                                                  ("pool", "food-shift/pool"), ("eval", "food-shift/eval"))}
    said = np.where(sets["pool"][1][:, pos] >= thr, pos, 1 - pos)
    wrong = said != sets["pool"][2]
    rows = [("the live bundle", 0, *scores(sets["eval"][1][:, pos], sets["eval"][2], pos, thr))]
    rows.append(("probe on frozen features, train + all pool", len(wrong), *probes(sets, pos, np.ones_like(wrong))[:2]))
    rows.append(("probe on frozen features, train + the pool photos it gets wrong", int(wrong.sum()),
                 *probes(sets, pos, wrong)[:2]))
    rows.append(("correction cache on the live logits", int(wrong.sum()), *cache(sets, pos, thr, wrong)))
    if a.train:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        r = full_training(Path(a.out) / "pool-trained.pvb")
        rows.append(("pocketvision train on train + all pool", len(wrong), r["accuracy"], r["roc_auc"]))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"command: {' '.join(sys.argv)}")
    print("| what is fitted | pool photos used | food-shift acc | AUC |\n|---|---|---|---|")
    for name, n, acc, auc in rows:
        print(f"| {name} | {n} | {acc:.3f} | {auc:.3f} |")


if __name__ == "__main__":
    main()
