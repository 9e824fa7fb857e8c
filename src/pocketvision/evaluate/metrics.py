"""Classification metrics as plain JSON-ready dicts (numpy + scikit-learn, no torch).

Everything returned is built from python ``int``/``float``/``str``/``bool``/``None`` so it can go
straight into ``json.dump`` (no NaN/Infinity: undefined values are ``None``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import PocketVisionError
from .calibration import reliability, wilson_lower

# Normalised (lower case, spaces/hyphens -> "_") spellings that mean "the thing is absent".
_NEG_PREFIXES = ("not_", "non_", "no_")
_NEG_SUFFIXES = ("_negative",)
_NEG_NAMES = {"negative", "background", "other"}
_CURVE_POINTS = 200  # enough for a smooth plot, small enough for a JSON report


def _is_negation(label: str) -> bool:
    s = label.strip().lower().replace("-", "_").replace(" ", "_")
    return s in _NEG_NAMES or s.startswith(_NEG_PREFIXES) or s.endswith(_NEG_SUFFIXES)


def positive_index(labels: list[str]) -> int | None:
    """Which of two classes is "positive" (``None`` for multi-class).

    ``["hotdog", "not_hotdog"] -> 0``: if exactly one label reads as a negation, the other is the
    positive one; otherwise (``["cat", "dog"]``) index 1, sklearn's convention for sorted labels.
    """
    if len(labels) != 2:
        return None
    neg = [_is_negation(lab) for lab in labels]
    if neg.count(True) == 1:
        return neg.index(False)
    return 1


def _check(y_true: Any, probs: Any, labels: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2 or len(y) != len(p):
        raise PocketVisionError(
            f"Expected y_true of shape (N,) and probs of shape (N, C). Got {y.shape} and {p.shape}.")
    if len(y) == 0:
        raise PocketVisionError("Cannot evaluate on 0 samples: the evaluation split is empty.")
    if labels is not None and p.shape[1] != len(labels):
        raise PocketVisionError(f"probs has {p.shape[1]} columns but there are {len(labels)} labels.")
    if p.shape[1] < 2:
        raise PocketVisionError(f"Need at least 2 classes to evaluate. Got {p.shape[1]}.")
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise PocketVisionError(f"y_true must hold integer class indices. Got dtype {y.dtype}.")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise PocketVisionError(f"y_true has class indices outside [0, {p.shape[1] - 1}].")
    # Logits or a missing softmax would silently give nonsense log loss / thresholds.
    if not np.all(np.isfinite(p)) or p.min() < -1e-6 or p.max() > 1 + 1e-6 \
            or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise PocketVisionError("probs must be probabilities (rows in [0, 1] summing to 1): apply softmax to logits.")
    return y, p


def predictions(probs: Any, labels: list[str], threshold: float | None = None) -> np.ndarray:
    """Predicted class index per sample: argmax, or for binary with ``threshold`` ``p(pos) >= t``."""
    p = np.asarray(probs, dtype=np.float64)
    pos = positive_index(labels)
    if threshold is None or pos is None:
        return p.argmax(axis=1)
    return np.where(p[:, pos] >= threshold, pos, 1 - pos)


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


def _curve(cols: dict[str, np.ndarray]) -> dict[str, list[float | None]]:
    """Subsample aligned curve columns to <= 200 points (keeping both ends); inf/NaN -> None."""
    n = len(next(iter(cols.values())))
    idx = np.unique(np.linspace(0, n - 1, min(n, _CURVE_POINTS)).round().astype(int)) if n else []
    return {k: [round(float(v[i]), 6) if i < len(v) and np.isfinite(v[i]) else None for i in idx]
            for k, v in cols.items()}


def _choose_threshold(is_pos: np.ndarray, s: np.ndarray, target: float, bound: bool = False) -> float | None:
    """The most accurate threshold whose precision(s >= t) is >= target, or None if none gets there.

    ``bound``: the precision that must reach the target is its one-sided 95% Wilson lower bound, so a cut that
    hits the target on a handful of positives (2 of 2 is "precision 1.0") does not count.

    "Smallest t that reaches the precision" maximises recall but can sit on the lowest-scored positive
    and cost accuracy everywhere else. Instead: every cut between two distinct scores is a candidate;
    among those meeting the precision target take the most accurate, and place t inside its interval
    (0.5 when the interval contains it, so a model that already separates well decides by argmax;
    otherwise the interval's midpoint, away from any one example's score).
    """
    u = np.unique(s)[::-1]  # distinct scores, high -> low
    hi = u
    lo = np.r_[u[1:], -np.inf]  # a cut with t in (lo, hi] says "positive" for s >= hi
    order = np.argsort(-s, kind="stable")
    s_sorted, tp_cum = s[order], np.cumsum(is_pos[order])
    n_said = np.searchsorted(-s_sorted, -hi, side="right")  # how many scores are >= hi
    tp = tp_cum[n_said - 1]
    fp = n_said - tp
    precision = wilson_lower(tp, n_said) if bound else tp / n_said
    accuracy = (tp + (int((~is_pos).sum()) - fp)) / len(s)
    ok = np.nonzero(precision >= target)[0]
    if not len(ok):
        return None
    best = ok[accuracy[ok] >= accuracy[ok].max() - 1e-12]
    choices = []
    for i in best:
        a, b = lo[i], hi[i]
        t = 0.5 if a < 0.5 <= b else (b if not np.isfinite(a) else (a + b) / 2)
        choices.append((abs(t - 0.5), -t, float(t)))
    return min(choices)[2]


def _binary(y: np.ndarray, p: np.ndarray, labels: list[str], threshold: float | None,
            target: float, bound: bool) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    pos = positive_index(labels)
    assert pos is not None
    is_pos, s = y == pos, p[:, pos]
    n_pos, n_neg = int(is_pos.sum()), int((~is_pos).sum())
    out: dict[str, Any] = {"positive_label": labels[pos], "positive_index": pos,
                           "roc_auc": None, "average_precision": None, "roc_curve": None, "pr_curve": None}
    if n_pos and n_neg:  # ROC needs both classes present
        out["roc_auc"] = float(roc_auc_score(is_pos, s))
        fpr, tpr, th = roc_curve(is_pos, s)
        out["roc_curve"] = _curve({"fpr": fpr, "tpr": tpr, "threshold": th})
    if n_pos:  # precision/recall are undefined without positives
        out["average_precision"] = float(average_precision_score(is_pos, s))
        prec, rec, th = precision_recall_curve(is_pos, s)
        out["pr_curve"] = _curve({"precision": prec, "recall": rec, "threshold": th})

    if threshold is not None:
        t, source = float(threshold), "given"
    else:
        chosen = _choose_threshold(is_pos, s, target, bound)
        t, source = (chosen, "target_precision") if chosen is not None else (0.5, "fallback")
    said_pos = s >= t
    tp, fp = int((said_pos & is_pos).sum()), int((said_pos & ~is_pos).sum())
    tn = n_neg - fp
    precision = _ratio(tp, tp + fp)
    out.update({
        "threshold": t,
        "threshold_source": source,  # "given" | "target_precision" | "fallback" (0.5)
        "target_precision": float(target),
        # Does the reported operating point meet target_precision on these labels?
        "threshold_reached": precision is not None and precision >= target,
        "threshold_precision": precision,
        # what that precision can be trusted to be on more photos of this kind (one-sided 95%, Wilson)
        "threshold_precision_lower95": float(wilson_lower(tp, tp + fp)) if tp + fp else None,
        "threshold_recall": _ratio(tp, n_pos),
        "threshold_fpr": _ratio(fp, n_neg),
        "threshold_accuracy": (tp + tn) / len(y),
    })
    # The same at argmax, beside it: a precision target a model only reaches far out in its scores costs recall,
    # and the report says how much (a target the model cannot reach at all leaves argmax in place).
    am = p.argmax(axis=1) == pos
    atp, afp = int((am & is_pos).sum()), int((am & ~is_pos).sum())
    out.update(argmax_precision=_ratio(atp, atp + afp), argmax_recall=_ratio(atp, n_pos))
    return out


def classification_metrics(y_true: Any, probs: Any, labels: list[str], threshold: float | None = None,
                           target_precision: float = 0.9, bound: bool = False) -> dict[str, Any]:
    """Metrics for class indices ``y_true`` (N,) and softmax ``probs`` (N, C).

    Headline numbers use argmax predictions, unless a binary ``threshold`` is given, in which case
    ``p(positive) >= threshold`` decides. For binary tasks the operating point for
    ``target_precision`` is chosen on these labels and reported separately (``threshold_*`` keys); with
    ``bound`` the precision's 95% lower bound must reach the target, not the point estimate.
    ``calibration``: expected calibration error and the reliability diagram's bins (top-label confidence).
    Undefined values (recall of a class absent from ``y_true``...) are ``None``.
    """
    y, p = _check(y_true, probs, labels)
    if not 0.0 < target_precision <= 1.0:
        raise PocketVisionError(f"target_precision must be in (0, 1]. Got {target_precision}.")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise PocketVisionError(f"threshold must be in [0, 1]. Got {threshold}.")
    n, c = p.shape
    binary = c == 2
    pred = predictions(p, labels, threshold if binary else None)

    cm = np.zeros((c, c), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    per_class = []
    for i, lab in enumerate(labels):
        prec, rec = _ratio(tp[i], predicted[i]), _ratio(tp[i], support[i])
        # Never predicted but present -> recall is 0, so F1 is 0 (not undefined).
        f1 = None if rec is None else (0.0 if not (prec or rec) else 2 * prec * rec / (prec + rec))
        per_class.append({"label": lab, "precision": prec, "recall": rec, "f1": f1, "support": int(support[i])})
    present = [r for r in per_class if r["support"]]  # averages skip classes with undefined recall

    p_true = np.clip(p[np.arange(n), y], 1e-15, 1.0)
    out: dict[str, Any] = {
        "task": "binary" if binary else "multiclass",
        "n": int(n),
        "labels": list(labels),
        "accuracy": float(tp.sum() / n),
        # the headline follows a given binary threshold; argmax's accuracy beside it, for comparison
        "argmax_accuracy": float((p.argmax(axis=1) == y).mean()),
        "balanced_accuracy": float(np.mean([r["recall"] for r in present])),
        "macro_f1": float(np.mean([r["f1"] for r in present])),
        "log_loss": float(-np.mean(np.log(p_true))),
        "per_class": per_class,
        # rows = true class, columns = predicted class, both in ``labels`` order
        "confusion_matrix": {"labels": list(labels), "matrix": cm.tolist()},
        "calibration": reliability(p, y),
    }
    out["ece"] = out["calibration"]["ece"]
    if binary:
        out.update(_binary(y, p, labels, threshold, target_precision, bound))
    return out


def worst_mistakes(y_true: Any, probs: Any, k: int = 16, y_pred: Any = None) -> list[int]:
    """Indices of misclassified samples, most confident wrong prediction first.

    ``y_pred`` defaults to argmax; pass :func:`predictions` with a threshold to match thresholded metrics.
    """
    y, p = _check(y_true, probs)
    pred = p.argmax(axis=1) if y_pred is None else np.asarray(y_pred, dtype=np.int64)
    wrong = np.nonzero(pred != y)[0]
    conf = p[wrong, pred[wrong]]
    return [int(i) for i in wrong[np.argsort(-conf, kind="stable")][:k]]
