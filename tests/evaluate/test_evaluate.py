"""Evaluation: metric values against hand-computed numbers, threshold choice, report file."""

from __future__ import annotations

import io
import json
import math
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from pocketvision.errors import PocketVisionError
from pocketvision.evaluate import (classification_metrics, positive_index, predictions, render_table,
                                   worst_mistakes, write_plots, write_report)

# Three classes; argmax predictions are [a, b, b, b, c, a] for true [a, a, b, b, c, c].
Y3 = np.array([0, 0, 1, 1, 2, 2])
P3 = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1],
               [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.5, 0.1, 0.4]])

# Binary, positive = "hotdog" (index 0). Scores p(hotdog), best first, with truth:
#   .95 P  .90 P  .80 N  .70 P  .60 P  .50 N  .40 P  .30 N  .20 N  .10 N
# Precision at t = each score: 1, 1, 2/3, 3/4, 4/5, 4/6, 5/7, ... (not monotone).
SB = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
YB = np.array([0, 0, 1, 0, 0, 1, 0, 1, 1, 1])
LB = ["hotdog", "not_hotdog"]


def binary_probs(s):
    return np.stack([s, 1 - s], axis=1)


def test_positive_index():
    assert positive_index(["hotdog", "not_hotdog"]) == 0
    assert positive_index(["cat", "dog"]) == 1
    assert positive_index(["not-cat", "cat"]) == 1
    assert positive_index(["Not Hotdog", "Hotdog"]) == 1
    assert positive_index(["person", "background"]) == 0
    assert positive_index(["spam", "spam_negative"]) == 0
    assert positive_index(["non-food", "food"]) == 1
    assert positive_index(["pen", "notebook"]) == 1  # "notebook" is not a negation
    assert positive_index(["no_x", "not_y"]) == 1  # both negations: default
    assert positive_index(["a", "b", "c"]) is None


def test_multiclass_values():
    m = classification_metrics(Y3, P3, ["a", "b", "c"])
    assert m["task"] == "multiclass" and m["n"] == 6
    assert m["confusion_matrix"] == {"labels": ["a", "b", "c"], "matrix": [[1, 1, 0], [0, 2, 0], [1, 0, 1]]}
    assert m["accuracy"] == pytest.approx(4 / 6)
    pc = {r["label"]: r for r in m["per_class"]}
    assert (pc["a"]["precision"], pc["a"]["recall"]) == pytest.approx((1 / 2, 1 / 2))
    assert (pc["b"]["precision"], pc["b"]["recall"]) == pytest.approx((2 / 3, 1.0))
    assert (pc["c"]["precision"], pc["c"]["recall"]) == pytest.approx((1.0, 1 / 2))
    assert [pc[k]["support"] for k in "abc"] == [2, 2, 2]
    assert pc["b"]["f1"] == pytest.approx(0.8)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.8, 0.5, 0.8, 0.4])))
    assert "roc_auc" not in m and "threshold" not in m
    json.dumps(m, allow_nan=False)


def test_absent_class_is_none_not_crash():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    m = classification_metrics(y, p, ["a", "b", "c"])
    c = m["per_class"][2]
    assert c == {"label": "c", "precision": 0.0, "recall": None, "f1": None, "support": 0}
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)  # averages skip absent "c"
    # A present class that is never predicted: precision undefined, recall/F1 zero.
    m = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]]), ["cat", "dog"])
    assert m["per_class"][1] == {"label": "dog", "precision": None, "recall": 0.0, "f1": 0.0, "support": 1}
    json.dumps(m, allow_nan=False)


def test_bad_inputs():
    with pytest.raises(PocketVisionError, match="0 samples"):
        classification_metrics(np.array([], dtype=int), np.zeros((0, 2)), ["a", "b"])
    with pytest.raises(PocketVisionError, match="softmax"):
        classification_metrics(np.array([0, 1]), np.array([[2.0, -1.0], [0.5, 3.0]]), ["a", "b"])
    with pytest.raises(PocketVisionError, match="labels"):
        classification_metrics(Y3, P3, ["a", "b"])


def test_binary_threshold_for_target_precision():
    m = classification_metrics(YB, binary_probs(SB), LB, target_precision=0.8)
    assert m["positive_label"] == "hotdog" and m["positive_index"] == 0
    # Cuts meeting precision .8 say "hotdog" from .95, .90 or .60; the last is the most accurate (0.8),
    # and t sits mid-way in its interval (.5, .6].
    assert m["threshold"] == pytest.approx(0.55) and m["threshold_source"] == "target_precision"
    assert m["threshold_reached"] is True
    assert m["threshold_precision"] == pytest.approx(0.8)
    assert m["threshold_recall"] == pytest.approx(0.8)
    assert m["threshold_fpr"] == pytest.approx(0.2)
    assert m["threshold_accuracy"] == pytest.approx(0.8)
    assert m["roc_auc"] == pytest.approx(21 / 25)  # correctly ordered (pos, neg) pairs
    # Headline numbers stay argmax (= p >= .5, the tie goes to column 0): tp 4, fp 2, tn 3.
    assert m["accuracy"] == pytest.approx(7 / 10)

    m = classification_metrics(YB, binary_probs(SB), LB, target_precision=0.9)
    assert m["threshold"] == pytest.approx(0.85)
    assert (m["threshold_precision"], m["threshold_recall"], m["threshold_accuracy"]) == pytest.approx((1, 0.4, 0.7))
    json.dumps(m, allow_nan=False)


def test_a_costly_precision_target_is_spelled_out():
    """A target the model reaches only far out in its scores costs recall: the metrics keep the argmax numbers beside
    the threshold's, and the sentence under the table says what the target costs and how to trade it back."""
    from rich.console import Console
    s = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05])
    y = np.array([0, 0, 1, 0, 0, 1, 1, 1, 1, 1])
    m = classification_metrics(y, binary_probs(s), LB, target_precision=0.9)
    assert m["threshold"] == pytest.approx(0.85) and m["threshold_accuracy"] == pytest.approx(0.8)
    assert (m["argmax_accuracy"], m["argmax_precision"], m["argmax_recall"]) == pytest.approx((0.9, 0.8, 1.0))
    console = Console(file=io.StringIO(), width=400)
    render_table(m, console)
    out = console.file.getvalue()
    assert "The target costs 10.0 points of accuracy against argmax (precision 0.800, recall 1.000)" in out
    assert "--target-precision" in out
    # A target that costs nothing (argmax already meets it) gets no such sentence.
    console = Console(file=io.StringIO(), width=400)
    render_table(classification_metrics(y, binary_probs(s), LB, target_precision=0.8), console)
    assert "Say \"hotdog\"" in console.file.getvalue() and "costs" not in console.file.getvalue()


def test_threshold_ties_and_unreachable():
    # Tied scores go together: cutting at .8 gives 1/2, so only "everything" (2/3) meets target .6;
    # any t in (-inf, .6] does that, and 0.5 is inside.
    m = classification_metrics(np.array([0, 1, 0]), binary_probs(np.array([0.8, 0.8, 0.6])), LB, target_precision=0.6)
    assert m["threshold"] == pytest.approx(0.5) and m["threshold_precision"] == pytest.approx(2 / 3)
    # The most confident "hotdog" is wrong, so no threshold reaches 0.9: fall back to 0.5.
    m = classification_metrics(np.array([1, 0, 1]), binary_probs(np.array([0.9, 0.8, 0.7])), LB)
    assert m["threshold_reached"] is False and m["threshold_source"] == "fallback"
    assert m["threshold"] == 0.5
    assert (m["threshold_precision"], m["threshold_recall"]) == pytest.approx((1 / 3, 1.0))
    # Only one class present: curves/AUC undefined, not an exception.
    m = classification_metrics(np.array([1, 1]), binary_probs(np.array([0.3, 0.6])), LB)
    assert m["roc_auc"] is None and m["average_precision"] is None and m["roc_curve"] is None
    assert m["threshold_reached"] is False and m["threshold_recall"] is None
    json.dumps(m, allow_nan=False)


def test_given_threshold_drives_predictions():
    m = classification_metrics(YB, binary_probs(SB), LB, threshold=0.75)
    assert m["threshold"] == 0.75 and m["threshold_source"] == "given"
    # Said hotdog: .95 P, .90 P, .80 N -> tp 2, fp 1, tn 4.
    assert m["confusion_matrix"]["matrix"] == [[2, 3], [1, 4]]
    assert m["accuracy"] == pytest.approx(0.6) == m["threshold_accuracy"]
    assert m["threshold_reached"] is False  # 2/3 < 0.9
    assert predictions(binary_probs(SB), LB, 0.75).tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]


def test_curves_are_subsampled():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    m = classification_metrics(y, binary_probs(1 - s), ["cat", "dog"])  # column 1 = p(dog) = s
    for curve in (m["roc_curve"], m["pr_curve"]):
        lengths = {len(v) for v in curve.values()}
        assert len(lengths) == 1 and 2 <= lengths.pop() <= 200
    assert m["roc_curve"]["fpr"][0] == 0 and m["roc_curve"]["tpr"][-1] == 1
    assert 0.8 < m["roc_auc"] < 0.9
    json.dumps(m, allow_nan=False)


def test_worst_mistakes_order():
    assert worst_mistakes(Y3, P3) == [1, 5]  # wrong with .6, then .5
    assert worst_mistakes(Y3, P3, k=1) == [1]
    y = np.array([0, 1, 0, 1])
    p = binary_probs(np.array([0.2, 0.99, 0.45, 0.7]))  # argmax: 1, 0, 1, 0 -> all wrong
    assert worst_mistakes(y, p) == [1, 0, 3, 2]
    assert worst_mistakes(np.array([0]), np.array([[0.9, 0.1]])) == []


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.refs = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def test_write_report(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(6):
        p = tmp_path / "imgs" / f"img{i}.{'png' if i % 2 else 'jpg'}"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40 + i, 60, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    paths[5] = tmp_path / "imgs" / "deleted.jpg"  # a missing file must not break the report
    y = np.array([0, 0, 0, 1, 1, 1])
    probs = binary_probs(np.array([0.9, 0.3, 0.6, 0.8, 0.2, 0.55]))  # mistakes: 3 (.8), 5 (.55), 1 (.7)
    labels = ["hotdog", "not_hotdog"]
    m = classification_metrics(y, probs, labels)
    extra = {"Export parity": {"max_abs_diff": 1.5e-6, "top1_agree": 1.0},
             "Training config": {"epochs": 3, "augment": ["flip", "crop"], "note": "<script>alert(1)</script>"},
             "model": "mobilenet <v3>"}
    out = write_report(tmp_path / "out", m, y, probs, labels, paths, "Hotdog & friends", extra=extra)

    assert out == tmp_path / "out" / "report.html"
    assert [f.name for f in out.parent.iterdir()] == ["report.html"]  # no temp files left behind
    text = out.read_text("utf-8")
    parser = _Collect()
    parser.feed(text)
    parser.close()
    assert all(r.startswith("data:image/") for r in parser.refs)
    assert "http://" not in text and "https://" not in text
    gallery = [a for a in parser.imgs if a.get("alt", "").startswith("sample")]
    assert [a["alt"] for a in gallery] == ["sample 3", "sample 1"]  # sample 5's file is gone
    assert all(a["src"].startswith("data:image/jpeg;base64,") for a in gallery)
    assert {"alt": "confusion_matrix"}.items() <= parser.imgs[0].items()
    assert "image unavailable" in text and "deleted.jpg" in text
    assert "Hotdog &amp; friends" in text and "&lt;script&gt;" in text and "<script>" not in text
    assert "mobilenet &lt;v3&gt;" in text and "flip, crop" in text and "1.5e-06" in text


def test_plots_and_table(tmp_path):
    m = classification_metrics(YB, binary_probs(SB), LB, target_precision=0.8)
    files = write_plots(m, tmp_path)
    assert set(files) == {"confusion_matrix", "roc", "pr", "reliability"}
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files.values())
    assert set(write_plots(classification_metrics(Y3, P3, ["a", "$b", "c"]), tmp_path / "mc")) == {"confusion_matrix",
                                                                                               "reliability"}

    from rich.console import Console

    console = Console(file=io.StringIO(), width=120)
    render_table(m, console)
    out = console.file.getvalue()
    assert "hotdog" in out and "0.800" in out and "0.5500" in out and not math.isnan(m["log_loss"])
