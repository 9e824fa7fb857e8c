"""In-source vs shifted accuracy, AUC, calibration and threshold precision for classifiers.

    python benchmarks/bench_shift.py --bundle NAME=model.pvb [--bundle ...] [--wise PROBE.pvb FINETUNED.pvb]
                                     [--tta] [--data ../shared/data/hotdog]

Shift sets built from the val split (none of them seen in training):
  val        the val split itself
  twin       every val photo under each of 9 phone-photo corruptions (evaluate/shift.py: JPEG re-compression,
             blur, under-exposure with noise, over-exposure, sensor noise, tilt, flash, moire, grayscale)
  food-neg   the hot dogs of val against only the negatives that ImageNet-pretrained EfficientNet-Lite0 reads
             as food (top-1 in ImageNet's food classes 923-969): the "negatives that are all food" of a
             second source, built here without new photos
Variants: each bundle as stored (its threshold, its temperature when calibrated); with --tta the mean of the
photo and its mirror image; with --wise the WiSE-FT weight-space average (Wortsman et al. 2022) of a linear-probe
bundle and a fine-tuned one of the same architecture at alpha 0.5 (and the fine-tuned bundle's threshold); with
--imagenet-prior 934 the ImageNet head as a prior: pretrained Lite0 with no training at all, P(positive) = its
probability summed over the given ImageNet classes (934 = "hotdog"), alone and averaged with each bundle.
Prints one markdown table with the machine and the command; writes benchmarks/out/bench_shift.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
FOOD = [i for i in range(923, 970) if i != 958]  # ImageNet: plate .. eggnog, without "hay"


def probs_fn(model, contract, flip: bool = False):
    def run(pixels: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(pixels), 64):
                x = torch.from_numpy(contract.normalize(pixels[i:i + 64]))
                p = torch.softmax(model(x), 1)
                if flip:
                    p = (p + torch.softmax(model(torch.flip(x, dims=[3])), 1)) / 2
                out.append(p.numpy())
        return np.concatenate(out)
    return run


def food_negatives(pixels: np.ndarray, contract) -> np.ndarray:
    from pocketvision.models.efficientnet_lite import efficientnet_lite0
    net = efficientnet_lite0(num_classes=1000, pretrained=True).eval()
    top = probs_fn(net, contract)(pixels).argmax(1)
    return np.isin(top, FOOD)


def prior_variants(classes: list[int], variants: list, contract, pos: int, first) -> list:
    """ImageNet Lite0 read as a zero-shot binary classifier, and its probabilities averaged with each variant's.
    Its results are kept per array (the same val/twin arrays come back for every variant)."""
    from pocketvision.models.efficientnet_lite import efficientnet_lite0
    net = efficientnet_lite0(num_classes=1000, pretrained=True).eval()
    imagenet, seen = probs_fn(net, contract), {}

    def zero_shot(pixels: np.ndarray) -> np.ndarray:
        key = (id(pixels), pixels.shape)
        if key not in seen:
            pp = imagenet(pixels)[:, classes].sum(1)
            seen[key] = np.stack([pp, 1 - pp] if pos == 0 else [1 - pp, pp], 1)
        return seen[key]

    out = [(f"ImageNet Lite0 zero-shot ({','.join(map(str, classes))})", zero_shot, None, first)]
    for name, fn, thr, b in variants:
        out.append((f"{name} + ImageNet prior (mean)", lambda px, fn=fn: (fn(px) + zero_shot(px)) / 2, None, b))
    return out


def scores(p: np.ndarray, y: np.ndarray, labels: list[str], threshold: float | None) -> dict:
    from pocketvision.evaluate import classification_metrics
    m = classification_metrics(y, p, labels, threshold=threshold)
    return {"n": m["n"], "accuracy": m["accuracy"], "roc_auc": m.get("roc_auc"), "ece": m["ece"],
            "precision_at_threshold": m.get("threshold_precision")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", default=[], help="NAME=path.pvb (repeat)")
    ap.add_argument("--wise", nargs=2, metavar=("PROBE", "FINETUNED"), help="WiSE-FT average of these two")
    ap.add_argument("--tta", action="store_true", help="also each bundle with mirror-image averaging")
    ap.add_argument("--imagenet-prior", metavar="CLASSES", default=None,
                    help="comma-separated ImageNet class indices of the positive class (hotdog: 934)")
    ap.add_argument("--data", default=None, help="labelled folder (default: the first bundle's val split)")
    ap.add_argument("--out", default=str(HERE / "out" / "bench_shift.json"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    import pocketvision as pv
    from pocketvision.evaluate.shift import CORRUPTIONS, corrupt
    from pocketvision.deploy.bench import machine

    bundles = {n: pv.load(p) for n, p in (s.split("=", 1) for s in a.bundle)}
    first = next(iter(bundles.values()))
    held = first.held_out(a.data)
    labels, contract = first.labels, first.contract
    x, y = held.pixels, np.asarray(held.truth)
    t0 = time.perf_counter()
    twin = {k: corrupt(x, k, seed=0) for k in CORRUPTIONS}
    from pocketvision.evaluate import positive_index
    pos = positive_index(labels)
    food = food_negatives(x, contract)
    keep = (y == pos) | food
    print(f"food-neg: {int(((y != pos) & food).sum())} of {int((y != pos).sum())} val negatives read as food by "
          f"ImageNet Lite0; {int((y == pos).sum())} positives", file=sys.stderr)

    variants = []
    for name, b in bundles.items():
        thr = (b.threshold or {}).get("value")
        variants.append((name, probs_fn(b.model, contract), thr, b))
        if a.tta:
            variants.append((f"{name} + TTA flip", probs_fn(b.model, contract, flip=True), thr, b))
    if a.wise:
        probe, ft = pv.load(a.wise[0]), pv.load(a.wise[1])
        mixed = copy.deepcopy(ft.model)
        sp, sf = probe.model.state_dict(), ft.model.state_dict()
        mixed.load_state_dict({k: (0.5 * sp[k] + 0.5 * sf[k]) if sf[k].is_floating_point() else sf[k] for k in sf})
        variants.append(("WiSE-FT 0.5 (probe, fine-tuned)", probs_fn(mixed.eval(), contract),
                         (ft.threshold or {}).get("value"), ft))

    if a.imagenet_prior:
        variants += prior_variants([int(c) for c in a.imagenet_prior.split(",")], variants, contract, pos, first)

    rows = []
    for name, fn, thr, b in variants:
        t = time.perf_counter()
        pv_val = fn(x)
        p_twin = {k: fn(v) for k, v in twin.items()}
        all_twin = np.concatenate(list(p_twin.values()))
        y_twin = np.concatenate([y] * len(p_twin))
        row = {"variant": name, "temperature": b.meta.get("metrics", {}).get("temperature_scaling", {}).get(
                   "temperature"), "threshold": thr,
               "val": scores(pv_val, y, labels, thr), "twin": scores(all_twin, y_twin, labels, thr),
               "food_neg": scores(pv_val[keep], y[keep], labels, thr),
               "twin_by_corruption": {k: float((p.argmax(1) == y).mean()) for k, p in p_twin.items()},
               "seconds": round(time.perf_counter() - t, 1)}
        rows.append(row)
        print(f"{name}: {row['seconds']}s", file=sys.stderr)

    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix().split("/main/")[-1], *sys.argv[1:]])
    print(f"machine: {machine()}, Python {platform.python_version()}\ncommand: {cmd}\n")
    print(f"{len(y)} val photos; twin {len(y) * len(CORRUPTIONS)} (9 corruptions of each); food-neg {int(keep.sum())}\n")
    print("| variant | T | val acc | val AUC | val ECE | twin acc | twin AUC | twin ECE | twin prec@thr | "
          "food-neg acc | food-neg AUC | food-neg prec@thr |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    f = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        v, t, fn_ = r["val"], r["twin"], r["food_neg"]
        print(f"| {r['variant']} | {f(r['temperature'])} | {f(v['accuracy'])} | {f(v['roc_auc'])} | {f(v['ece'])} | "
              f"{f(t['accuracy'])} | {f(t['roc_auc'])} | {f(t['ece'])} | {f(t['precision_at_threshold'])} | "
              f"{f(fn_['accuracy'])} | {f(fn_['roc_auc'])} | {f(fn_['precision_at_threshold'])} |")
    print("\ntwin accuracy by corruption:\n")
    kinds = list(CORRUPTIONS)
    print("| variant | " + " | ".join(kinds) + " |\n|---|" + "---|" * len(kinds))
    for r in rows:
        print(f"| {r['variant']} | " + " | ".join(f"{r['twin_by_corruption'][k]:.3f}" for k in kinds) + " |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"machine": machine(), "command": cmd, "rows": rows,
                                       "seconds": round(time.perf_counter() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()
