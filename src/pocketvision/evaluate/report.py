"""Human-facing views of a metrics dict: a rich console table, PNG plots, one self-contained HTML file.

matplotlib is imported inside the plotting code (and drives the Agg canvas directly, never pyplot)
so importing this module stays cheap and never changes a notebook's backend.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import tempfile
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from ..core.contract import load_rgb
from ..errors import PocketVisionError
from .metrics import predictions, worst_mistakes

_THUMB = 160  # px, longest side of gallery thumbnails
_MAX_ROWS = 50  # console only: a 1000-class table is unreadable in a terminal anyway


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


# From this many points of val accuracy lost to the precision target the report spells out the trade (a point or
# two is one or two photos of a small val split: not worth a sentence).
COSTLY_TARGET = 0.02


def _threshold_sentence(m: dict[str, Any]) -> str:
    """One line saying when the app should say "positive" and what that buys."""
    if m.get("task") != "binary":
        return ""
    at = (f"precision {_fmt(m['threshold_precision'])}, recall {_fmt(m['threshold_recall'])}, "
          f"accuracy {_fmt(m['threshold_accuracy'])}")
    pos, t, target = m["positive_label"], m["threshold"], m["target_precision"]
    if m["threshold_source"] == "fallback":
        sel = m.get("threshold_selection")
        why = (f"not reachable with 95% confidence on {sel['images']}" if sel else "not reachable on this data")
        return f"Target precision {target:.2f} is {why}; falling back to p({pos}) >= 0.5: {at}."
    how = "given" if m["threshold_source"] == "given" else f"chosen for precision >= {target:.2f}"
    said = f'Say "{pos}" when p({pos}) >= {t:.4f} ({how}): {at}.'
    # metrics stored by an older bundle have no argmax figures: no cost sentence for them
    cost = m.get("argmax_accuracy", m["threshold_accuracy"]) - m["threshold_accuracy"]
    if m["threshold_source"] == "target_precision" and cost >= COSTLY_TARGET:
        said += (f" The target costs {100 * cost:.1f} points of accuracy against argmax (precision "
                 f"{_fmt(m['argmax_precision'])}, recall {_fmt(m['argmax_recall'])}): a lower --target-precision "
                 "trades them back (a finished run chooses again in seconds: train --resume RUN "
                 "--target-precision P).")
    return said


def _headline(m: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("samples", _fmt(m["n"])), ("accuracy", _fmt(m["accuracy"])),
            ("balanced accuracy", _fmt(m["balanced_accuracy"])), ("macro F1", _fmt(m["macro_f1"])),
            ("log loss", _fmt(m["log_loss"]))]
    if m.get("ece") is not None:
        rows.append(("calibration error (ECE)", _fmt(m["ece"])))
    if m.get("task") == "binary":
        rows += [("ROC-AUC", _fmt(m["roc_auc"])), ("average precision", _fmt(m["average_precision"]))]
    return rows


# -- console ------------------------------------------------------------------------------------
def render_table(metrics: dict[str, Any], console: Any = None) -> None:
    """Print headline numbers and per-class precision/recall/F1 as a compact rich table."""
    from rich.console import Console
    from rich.markup import escape as rich_escape
    from rich.table import Table

    console = console or Console()
    headline = Table(title="Evaluation")
    for k, _ in _headline(metrics):
        headline.add_column(k, justify="right")
    headline.add_row(*(v for _, v in _headline(metrics)))
    table = Table()
    table.add_column("class")
    for col in ("precision", "recall", "F1", "support"):
        table.add_column(col, justify="right")
    rows = metrics["per_class"]
    for r in rows[:_MAX_ROWS]:
        table.add_row(rich_escape(r["label"]),  # a "[x]" in a class name is not markup
                      _fmt(r["precision"]), _fmt(r["recall"]), _fmt(r["f1"]), str(r["support"]))
    if len(rows) > _MAX_ROWS:
        table.add_row(f"... {len(rows) - _MAX_ROWS} more (see report.html)", "", "", "", "")
    console.print(headline)
    console.print(table)
    if sentence := _threshold_sentence(metrics):
        console.print(sentence, highlight=False, markup=False)


# -- plots --------------------------------------------------------------------------------------
def _mpl(s: str) -> str:
    return s.replace("$", r"\$")  # a "$" in a class name would otherwise start mathtext


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _plot_pngs(m: dict[str, Any]) -> dict[str, bytes]:
    from matplotlib.figure import Figure

    out: dict[str, bytes] = {}
    cm = np.asarray(m["confusion_matrix"]["matrix"], dtype=float)
    labels = [_mpl(s) for s in m["confusion_matrix"]["labels"]]
    c = len(labels)
    side = min(3.0 + 0.45 * c, 16.0)
    fig = Figure(figsize=(side, side * 0.9))
    ax = fig.add_subplot()
    # Colour by row share (per-class recall) so small classes stay visible; annotate raw counts.
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if c <= 30:
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=8 if c > 10 else 10,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(c), labels, rotation=45 if c > 2 else 0, ha="right" if c > 2 else "center", fontsize=8)
    ax.set_yticks(range(c), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    out["confusion_matrix"] = _png(fig)
    if m.get("calibration", {}).get("bins"):
        out["reliability"] = reliability_png(m["calibration"])

    if m.get("task") != "binary":
        return out
    t = m["threshold"]
    if m["roc_curve"]:
        fig = Figure(figsize=(4.5, 4.2))
        ax = fig.add_subplot()
        ax.plot(m["roc_curve"]["fpr"], m["roc_curve"]["tpr"], label=f"ROC (AUC {m['roc_auc']:.3f})")
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
        if m["threshold_fpr"] is not None and m["threshold_recall"] is not None:
            ax.plot(m["threshold_fpr"], m["threshold_recall"], "o", c="crimson", label=f"threshold {t:.3f}")
        ax.set(xlim=(0, 1.01), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate (recall)",
               title=_mpl(f"ROC, positive = {m['positive_label']}"))
        ax.legend(loc="lower right", fontsize=8)
        out["roc"] = _png(fig)
    if m["pr_curve"]:
        fig = Figure(figsize=(4.5, 4.2))
        ax = fig.add_subplot()
        ax.plot(m["pr_curve"]["recall"], m["pr_curve"]["precision"], label=f"PR (AP {m['average_precision']:.3f})")
        ax.axhline(m["target_precision"], ls="--", c="grey", lw=0.8, label=f"target {m['target_precision']:.2f}")
        if m["threshold_precision"] is not None:
            ax.plot(m["threshold_recall"], m["threshold_precision"], "o", c="crimson", label=f"threshold {t:.3f}")
        ax.set(xlim=(0, 1.01), ylim=(0, 1.01), xlabel="recall", ylabel="precision",
               title=_mpl(f"Precision-recall, positive = {m['positive_label']}"))
        ax.legend(loc="lower left", fontsize=8)
        out["pr"] = _png(fig)
    return out


def reliability_png(cal: dict[str, Any]) -> bytes:
    """Reliability diagram: per confidence bin, how often the top label was right (the diagonal is perfect)."""
    from matplotlib.figure import Figure
    bins = cal["bins"]
    fig = Figure(figsize=(4.5, 4.2))
    ax = fig.add_subplot()
    mids = [(b["lo"] + b["hi"]) / 2 for b in bins]
    width = bins[0]["hi"] - bins[0]["lo"]
    ax.bar(mids, [b["accuracy"] for b in bins], width=width * 0.9, color="#0969da", alpha=0.8, label="accuracy")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", c="crimson", ms=3,
            label="mean confidence")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlim=(0, 1.01), ylim=(0, 1.01), xlabel="confidence of the top label", ylabel="accuracy",
           title=f"Reliability (ECE {cal['ece']:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def _atomic_write(path: Path, data: bytes) -> None:
    """Readers never see a half-written file: write a temp file beside it, then rename over."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the report unreadable when served
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_plots(metrics: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``confusion_matrix.png`` (+ ``roc.png``, ``pr.png`` for binary); returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in _plot_pngs(metrics).items():
        paths[name] = out / f"{name}.png"
        _atomic_write(paths[name], data)
    return paths


# -- HTML ---------------------------------------------------------------------------------------
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
 padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
.cards{display:flex;flex-wrap:wrap;gap:.6em}.card{border:1px solid #ddd;border-radius:6px;padding:.5em .9em}
.card b{display:block;font-size:1.4em}.note{background:#f6f8fa;border-left:4px solid #0969da;padding:.6em 1em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th:first-child,td:first-child,table.kv td,table.kv th{text-align:left}td.diag{background:#ddf4e4;font-weight:bold}
.plots img{max-width:100%;margin:.3em}.gallery{display:flex;flex-wrap:wrap;gap:.8em}
figure{margin:0;width:170px;font-size:12px}figure img{max-width:160px;max-height:160px;display:block}
.path{color:#666;word-break:break-all}.bad{color:#b00}
"""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _thumb(path: Path) -> str | None:
    """Base64 JPEG thumbnail, or None if the file is gone/unreadable (one bad file shouldn't sink the report)."""
    try:
        img = load_rgb(path, min_size=(_THUMB, _THUMB))
    except PocketVisionError:
        return None
    img.thumbnail((_THUMB, _THUMB))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return _b64(buf.getvalue())


def _value_html(v: Any, depth: int = 0) -> str:
    """Arbitrary JSON-ish value -> escaped HTML (nested dicts become nested key/value tables)."""
    if isinstance(v, dict) and depth < 6:
        if not v:
            return "—"
        rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{_value_html(x, depth + 1)}</td></tr>" for k, x in v.items())
        return f'<table class="kv">{rows}</table>'
    if isinstance(v, list | tuple) and depth < 6:
        if all(not isinstance(x, dict | list | tuple) for x in v):
            return ", ".join(_value_html(x, depth + 1) for x in v)  # items are escaped already
        return "<ul>" + "".join(f"<li>{_value_html(x, depth + 1)}</li>" for x in v) + "</ul>"
    if isinstance(v, float):
        return escape(f"{v:.6g}")
    return escape(_fmt(v))


def _extra_html(extra: dict[str, Any]) -> str:
    # Scalars share one table; each dict-valued entry (parity, benchmark, config...) gets a heading.
    scalars = {k: v for k, v in extra.items() if not isinstance(v, dict)}
    parts = [_value_html(scalars)] if scalars else []
    parts += [f"<h3>{escape(str(k))}</h3>{_value_html(v)}" for k, v in extra.items() if isinstance(v, dict)]
    return "".join(parts)


def _shift_html(shift: dict[str, Any]) -> str:
    """``eval --compare-to-val``: the folder beside val, what moved, the verdict (same figures as the console)."""
    def f(v, signed=False):
        return "—" if v is None else escape(f"{v:+.3f}" if signed else f"{v:.3f}")
    rows = "".join(f"<tr><td>{escape(r['figure'])}</td><td>{f(r['val'])}</td><td>{f(r['here'])}</td>"
                   f"<td>{f(r['change'], True)}</td></tr>" for r in shift["rows"])
    classes = "".join(f"<tr><td>{escape(c['label'])}</td><td>{f(c['val_recall'])}</td><td>{f(c['recall'])}</td>"
                      f"<td>{f(c['change'], True)}</td></tr>" for c in shift["classes"])
    return (f'<h2>Against val</h2><p class="note"><b>Verdict:</b> {escape(shift["verdict"])}</p>'
            f"<table><tr><th></th><th>val</th><th>this folder</th><th>change</th></tr>{rows}</table>"
            f"<h3>Recall per class</h3><table><tr><th>class</th><th>val</th><th>this folder</th><th>change</th>"
            f"</tr>{classes}</table>")


def write_report(out_dir: str | os.PathLike, metrics: dict[str, Any], y_true: Any, probs: Any,
                 labels: list[str], paths: list[Path], title: str, extra: dict[str, Any] | None = None) -> Path:
    """Write one self-contained ``report.html`` (no external resources) into ``out_dir``."""
    if len(paths) != len(y_true):
        raise PocketVisionError(f"write_report got {len(paths)} paths for {len(y_true)} samples.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = np.asarray(probs, dtype=np.float64)
    # The gallery must show the same decisions the metrics counted (a given binary threshold included).
    given = metrics["threshold"] if metrics.get("threshold_source") == "given" else None
    pred = predictions(p, labels, given)
    y = np.asarray(y_true, dtype=np.int64)

    html = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body><h1>{escape(title)}</h1>"]
    html.append('<div class="cards">' + "".join(
        f'<div class="card">{escape(k)}<b>{escape(v)}</b></div>' for k, v in _headline(metrics)) + "</div>")
    if sentence := _threshold_sentence(metrics):
        html.append(f'<p class="note">{escape(sentence)}</p>')
    if shift := metrics.get("shift"):
        html.append(_shift_html(shift))

    html.append("<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
                "<th>support</th></tr>")
    html += [f"<tr><td>{escape(r['label'])}</td><td>{_fmt(r['precision'])}</td><td>{_fmt(r['recall'])}</td>"
             f"<td>{_fmt(r['f1'])}</td><td>{r['support']}</td></tr>" for r in metrics["per_class"]]
    html.append("</table>")

    cm = metrics["confusion_matrix"]
    if len(cm["labels"]) <= 20:  # beyond that only the plot is legible
        html.append("<h2>Confusion matrix</h2><p>Rows: true class; columns: predicted class.</p><table><tr><th></th>"
                    + "".join(f"<th>{escape(s)}</th>" for s in cm["labels"]) + "</tr>")
        html += ["<tr><th>" + escape(s) + "</th>" + "".join(
            f'<td{" class=diag" if i == j else ""}>{v}</td>' for j, v in enumerate(row)) + "</tr>"
            for i, (s, row) in enumerate(zip(cm["labels"], cm["matrix"]))]
        html.append("</table>")

    html.append('<h2>Plots</h2><div class="plots">' + "".join(
        f'<img alt="{escape(name)}" src="data:image/png;base64,{_b64(png)}">'
        for name, png in _plot_pngs(metrics).items()) + "</div>")

    mistakes = worst_mistakes(y, p, k=16, y_pred=pred)
    html.append(f"<h2>Most confident mistakes ({len(mistakes)} shown)</h2>")
    if not mistakes:
        html.append("<p>No mistakes on this data.</p>")
    html.append('<div class="gallery">')
    for i in mistakes:
        thumb = _thumb(Path(paths[i]))
        img = (f'<img alt="sample {i}" src="data:image/jpeg;base64,{thumb}">' if thumb
               else '<p class="bad">image unavailable</p>')
        html.append(f"<figure>{img}<figcaption>true <b>{escape(labels[y[i]])}</b><br>"
                    f'predicted <b class="bad">{escape(labels[pred[i]])}</b> ({p[i, pred[i]]:.2f})<br>'
                    f'<span class="path">{escape(str(paths[i]))}</span></figcaption></figure>')
    html.append("</div>")

    if extra:
        html.append(f"<h2>Details</h2>{_extra_html(extra)}")
    html.append("</body></html>\n")

    path = out / "report.html"
    _atomic_write(path, "\n".join(html).encode("utf-8"))
    return path
