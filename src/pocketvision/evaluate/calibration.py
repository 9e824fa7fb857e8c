"""Calibrated probabilities: temperature scaling, expected calibration error, reliability bins (torch-free).

Temperature scaling (Guo et al. 2017) divides the logits by one scalar T fitted by log loss on held-out
images; it never changes the argmax, only how far a probability can be trusted. Fitted on val alone a
near-perfect classifier learns "be even surer" (T < 1), which is exactly wrong on other photographers'
photos; so the caller fits it on val *and* a phone-photo shifted twin of val (``evaluate/shift.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

ECE_BINS = 15  # Guo et al.'s choice; the reliability diagram uses the same bins


def log_probs(probs: np.ndarray) -> np.ndarray:
    """Softmax probabilities -> logits up to a per-row constant (all that temperature scaling needs)."""
    return np.log(np.clip(np.asarray(probs, np.float64), 1e-12, 1.0))


def scale(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def fit_temperature(logits: np.ndarray, y: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """The T minimising the mean log loss of softmax(logits / T) (a 1-D convex problem in log T)."""
    from scipy.optimize import minimize_scalar
    z = np.asarray(logits, np.float64)
    y = np.asarray(y, np.int64)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        s = s - s.max(1, keepdims=True)
        return float(-(s[np.arange(len(y)), y] - np.log(np.exp(s).sum(1))).mean())

    res = minimize_scalar(nll, bounds=(np.log(lo), np.log(hi)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict[str, Any]:
    """Top-label reliability: per confidence bin its mean confidence, accuracy and count; ECE (the
    count-weighted mean |accuracy - confidence|) and MCE (the worst bin)."""
    p = np.asarray(probs, np.float64)
    conf, pred = p.max(1), p.argmax(1)
    right = (pred == np.asarray(y)).astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    rows, ece, mce = [], 0.0, 0.0
    for b in range(bins):
        m = which == b
        if not m.any():
            continue
        c, a, n = float(conf[m].mean()), float(right[m].mean()), int(m.sum())
        gap = abs(a - c)
        ece += gap * n / len(p)
        mce = max(mce, gap)
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "confidence": c, "accuracy": a, "n": n})
    return {"ece": float(ece), "mce": float(mce), "bins": rows, "mean_confidence": float(conf.mean())}


def wilson_lower(successes: np.ndarray, n: np.ndarray, z: float = 1.645) -> np.ndarray:
    """One-sided 95% lower bound of a proportion (Wilson score interval): what the precision at a threshold
    can be trusted to be on new photos of the same kind, rather than the single val point that hit it."""
    k, n = np.asarray(successes, np.float64), np.maximum(np.asarray(n, np.float64), 1)
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n)
