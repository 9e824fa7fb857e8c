"""A folder of the user's own photos against the model's val split: did anything move, and what to do.

``eval MODEL PHOTOS --compare-to-val`` puts the folder's accuracy, ROC-AUC, calibration error, the stored
threshold's precision and the mean confidence beside the val figures recorded at training, names the classes
and photos that moved most, and ends in one verdict line. Torch-free: it works on an exported model too (its
metadata carries the val figures).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...evaluate.metrics import predictions, worst_mistakes

# A folder "looks unlike the training data" past any of these (points of accuracy / AUC / ECE): beyond the
# sampling noise of a few hundred photos, below a drop a user would shrug at.
ACC_DROP = 0.05
AUC_DROP = 0.03
ECE_RISE = 0.05
UNSURE = 0.75  # a prediction below this confidence is worth a human look


def val_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The val figures a later comparison needs (small: it travels in every exported file's metadata)."""
    keys = ("n", "accuracy", "roc_auc", "ece", "threshold_precision", "log_loss")
    out = {k: metrics[k] for k in keys if metrics.get(k) is not None}
    if metrics.get("calibration"):
        out["mean_confidence"] = metrics["calibration"]["mean_confidence"]
    out["recall"] = {r["label"]: r["recall"] for r in metrics.get("per_class", []) if r["recall"] is not None}
    return out


def compare_to_val(val: dict[str, Any], here: dict[str, Any], y: np.ndarray, probs: np.ndarray,
                   paths: list[Path], labels: list[str], unknown: list[str]) -> dict[str, Any]:
    """-> the shift report: rows (figure, val, here, change), classes and photos that moved, the verdict."""
    here_s = val_summary(here)
    rows = []
    for k, name in (("accuracy", "accuracy"), ("roc_auc", "ROC-AUC"), ("ece", "calibration error (ECE)"),
                    ("threshold_precision", "precision at the stored threshold"),
                    ("mean_confidence", "mean confidence")):
        a, b = val.get(k), here_s.get(k)
        rows.append({"figure": name, "key": k, "val": a, "here": b,
                     "change": (b - a) if a is not None and b is not None else None})
    classes = sorted(({"label": c, "val_recall": val["recall"].get(c), "recall": r,
                       "change": r - val["recall"][c] if val.get("recall", {}).get(c) is not None else None}
                      for c, r in here_s["recall"].items()), key=lambda r: (r["change"] is None, r["change"] or 0))
    given = here.get("threshold") if here.get("threshold_source") == "given" else None
    pred = predictions(probs, labels, given)
    wrong = worst_mistakes(y, probs, k=12, y_pred=pred)
    conf = np.asarray(probs).max(1)
    unsure = [i for i in np.argsort(conf) if conf[i] < UNSURE and pred[i] == y[i]]
    relabel = len(np.nonzero(pred != y)[0]) + len(unsure)
    photos = [{"path": str(paths[i]), "true": labels[int(y[i])], "predicted": labels[int(pred[i])],
               "confidence": float(conf[i])} for i in wrong]
    change = {r["key"]: r["change"] for r in rows}
    reasons = []
    if change["accuracy"] is not None and change["accuracy"] <= -ACC_DROP:
        reasons.append(f"accuracy {here_s['accuracy']:.1%} vs {val['accuracy']:.1%} on val")
    if change["roc_auc"] is not None and change["roc_auc"] <= -AUC_DROP:
        reasons.append(f"ROC-AUC {here_s['roc_auc']:.3f} vs {val['roc_auc']:.3f}")
    if change["ece"] is not None and change["ece"] >= ECE_RISE:
        reasons.append(f"calibration error {here_s['ece']:.3f} vs {val['ece']:.3f}")
    if reasons:
        verdict = (f"this folder looks unlike your training data ({'; '.join(reasons)}): re-label {relabel} of "
                   f"these {len(y)} photos (the {len(np.nonzero(pred != y)[0])} mistakes and {len(unsure)} unsure "
                   f"ones) and retrain with them")
    elif "accuracy" not in val:
        verdict = "no val figures are recorded with this model: nothing to compare against"
    else:
        verdict = (f"this folder looks like your training data: accuracy {here_s['accuracy']:.1%} vs "
                   f"{val['accuracy']:.1%} on val")
    if unknown:
        verdict += f" (class folder(s) {unknown} are not the model's and were left out)"
    return {"rows": rows, "classes": classes, "photos": photos, "relabel": relabel, "unknown_classes": unknown,
            "verdict": verdict, "shifted": bool(reasons)}


def render_shift(shift: dict[str, Any], console) -> None:
    from rich.table import Table

    def f(v, signed=False):
        return "—" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")
    t = Table(title="Against val")
    for c in ("", "val", "this folder", "change"):
        t.add_column(c, justify="right" if c else "left")
    for r in shift["rows"]:
        t.add_row(r["figure"], f(r["val"]), f(r["here"]), f(r["change"], True))
    console.print(t)
    moved = [c for c in shift["classes"] if c["change"] is not None and c["change"] < 0]
    if moved:
        console.print("recall moved most: " + ", ".join(f"{c['label']} {c['val_recall']:.2f} -> {c['recall']:.2f}"
                                                        for c in moved[:5]), highlight=False, markup=False)
    for p in shift["photos"][:5]:
        console.print(f"  {p['path']}: {p['true']} read as {p['predicted']} ({p['confidence']:.2f})",
                      highlight=False, markup=False)
    console.print(("[bold red]verdict[/]: " if shift["shifted"] else "[bold green]verdict[/]: ") + shift["verdict"],
                  highlight=False)
