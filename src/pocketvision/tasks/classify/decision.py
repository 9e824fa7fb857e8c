"""Probabilities -> a decision, shared by every runtime so a bundle and its exports decide alike."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import PocketVisionError


def decide(probs: np.ndarray, labels: list[str], threshold: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per row: label, confidence, all probabilities.

    A binary bundle may carry a threshold chosen for a target precision (the Not Hotdog app said
    "hotdog" only above 0.90): the positive label wins only when its probability reaches it.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(labels):  # metadata from elsewhere that does not fit the model
        raise PocketVisionError(f"the model gives {probs.shape[-1] if probs.ndim else 0} scores a photo but its "
                                f"metadata names {len(labels):,} labels; the file is damaged or was edited. "
                                "Re-export or re-download it.")
    out = []
    for row in probs:
        k = int(row.argmax())
        if threshold and threshold.get("value") is not None and len(labels) == 2:
            pos = int(threshold["positive"])
            k = pos if row[pos] >= float(threshold["value"]) else 1 - pos
        out.append({"label": labels[k], "index": k, "confidence": float(row[k]),
                    "probabilities": {lab: float(p) for lab, p in zip(labels, row)}})
    return out
