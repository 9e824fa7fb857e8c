"""Keypoint report: console table, cumulative error distribution plot, and one self-contained HTML page
with the worst predictions drawn on their images (truth green, prediction red, skeleton) — the view
that finds a swapped-eye bug in seconds. torch-free.
"""

from __future__ import annotations

import io
import os
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ...core.contract import load_rgb
from ...evaluate.report import _atomic_write, _b64, _png

_SIDE = 192  # px, thumbnails of the worst predictions
_WORST = 24


def render_keypoint_table(m: dict[str, Any], console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    t = Table(title=f"keypoints ({m['n_images']} images, normalised by {m['normalize']})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, fmt in (("nme", "{:.2%}"), ("nme_median", "{:.2%}"), ("mean_error_px", "{:.2f} px"),
                   ("pck@0.05", "{:.3f}"), ("pck@0.1", "{:.3f}"), ("failure_rate", "{:.2%}"), ("auc@0.1", "{:.3f}")):
        t.add_row(k, fmt.format(m[k]))
    if pose := m.get("pose"):  # the val split's own shifted sets: its most rotated and least frontal fifths
        t.add_row(f"NME, most rotated {pose['share']:.0%}", f"{pose['rotated']['nme']:.2%}")
        t.add_row(f"NME, least frontal {pose['share']:.0%}", f"{pose['shape']['nme']:.2%}")
        if pose["rest"]["nme"] is not None:
            t.add_row("NME, the rest", f"{pose['rest']['nme']:.2%}")
    if "offset" in m:
        t.add_row("mean offset (x, y)", "{:+.3f}, {:+.3f}".format(*m["offset"]))
        t.add_row("NME with that offset removed", f"{m['nme_offset_removed']:.2%}")
    console.print(t)
    if note := offset_note(m):
        console.print(note)
    pt = Table(title="per point")
    for c in ("point", "NME", "px", "n"):
        pt.add_column(c, justify="right" if c != "point" else "left")
    for name, v in m["per_point"].items():
        pt.add_row(name, "—" if v["nme"] is None else f"{v['nme']:.2%}", "—" if v["px"] is None else f"{v['px']:.2f}",
                   str(v["n"]))
    console.print(pt)


OFFSET_NOTE = 0.03  # a mean offset this large (of the normaliser) that removing cuts NME by a tenth is worth a line


def offset_note(m: dict[str, Any]) -> str | None:
    """One line when every point sits off its label alike: often another source's convention, not a worse model."""
    off = m.get("offset")
    if off is None or float(np.hypot(*off)) < OFFSET_NOTE or m["nme_offset_removed"] > 0.9 * m["nme"]:
        return None
    unit = (f"the distance {m['normalize'][0]}-{m['normalize'][1]}" if isinstance(m["normalize"], list | tuple)
            else "the box diagonal")
    return (f"The predictions sit off their labels by ({off[0]:+.3f}, {off[1]:+.3f}) on average (x right, y down, in "
            f"units of {unit}); without that one offset NME is {m['nme_offset_removed']:.2%}, not {m['nme']:.2%}. "
            "Labels from another source may place points by another convention: look at a few against the photos "
            "before training or judging on them.")


def ced_png(m: dict[str, Any]) -> bytes:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(4.5, 3.4))
    ax = fig.add_subplot()
    xs, ys = zip(*m["ced"])
    ax.plot(np.array(xs) * 100, ys)
    ax.set_xlabel("NME (%)")
    ax.set_ylabel("fraction of images")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(f"cumulative error distribution (AUC@10% {m['auc@0.1']:.3f})")
    return _png(fig)


def draw_points(img: Image.Image, points: np.ndarray, color, skeleton=(), r: float = 2.5,
                scale: float = 1.0) -> None:
    d = ImageDraw.Draw(img)
    for a, b in skeleton:
        if points[a, 2] > 0 and points[b, 2] > 0:
            d.line([tuple(points[a, :2] * scale), tuple(points[b, :2] * scale)], fill=color, width=1)
    for x, y, v in points[:, :3]:
        if v > 0:
            x, y = x * scale, y * scale
            d.ellipse([x - r, y - r, x + r, y + r], outline=color, width=2)


def _panel(path: Path, gt: np.ndarray, pred: np.ndarray, skeleton) -> str:
    img = load_rgb(path)
    s = _SIDE / max(img.size)
    img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.BILINEAR)
    draw_points(img, gt, (40, 200, 60), skeleton, scale=s)
    draw_points(img, np.c_[pred[:, :2], np.ones(len(pred))], (230, 40, 40), skeleton, scale=s)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return _b64(buf.getvalue())


def write_keypoint_report(out_dir: str | os.PathLike, m: dict[str, Any], gt: np.ndarray, pred: np.ndarray,
                          paths: list[Path], names, skeleton=(), title: str = "keypoints") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ced = ced_png(m)
    _atomic_write(out / "ced.png", ced)
    per_img = np.asarray(m["per_image_nme"])
    index = np.asarray(m["image_index"])
    order = np.argsort(-per_img)[:_WORST]
    cards = []
    for j in order:
        i = int(index[j])
        try:
            src = _panel(paths[i], gt[i], pred[i], skeleton)
        except Exception:  # noqa: BLE001 - an unreadable image loses its thumbnail, not the report
            continue
        cards.append(f'<figure><img src="data:image/png;base64,{src}"><figcaption>{escape(Path(paths[i]).name)}'
                     f"<br>NME {per_img[j]:.1%}</figcaption></figure>")
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{m[k]:.4f}</td></tr>" for k in
                   ("nme", "nme_median", "mean_error_px", "pck@0.05", "pck@0.1", "failure_rate", "auc@0.1"))
    if "offset" in m:
        rows += ("<tr><td>mean offset (x, y)</td><td>{:+.4f}, {:+.4f}</td></tr>".format(*m["offset"])
                 + f"<tr><td>nme with that offset removed</td><td>{m['nme_offset_removed']:.4f}</td></tr>")
    note = offset_note(m)
    def cell(v, fmt: str) -> str:
        return "—" if v is None else fmt.format(v)
    pp = "".join(f"<tr><td>{escape(n)}</td><td>{cell(v['nme'], '{:.2%}')}</td><td>{cell(v['px'], '{:.2f}')}</td></tr>"
                 for n, v in m["per_point"].items())
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px}}figure{{display:inline-block;margin:6px;text-align:center;font-size:12px}}
</style></head><body><h1>{escape(title)}</h1>
<p>{m['n_images']} images; errors normalised by {escape(str(m['normalize']))}. Green: labels, red: predictions.</p>
<table>{rows}</table>{f'<p>{escape(note)}</p>' if note else ''}<h2>Per point</h2><table><tr><th>point</th><th>NME</th><th>px</th></tr>{pp}</table>
<h2>Cumulative error distribution</h2><img src="data:image/png;base64,{_b64(ced)}">
<h2>Worst {len(cards)} predictions</h2>{''.join(cards)}</body></html>"""
    _atomic_write(out / "index.html", html.encode())
    return out / "index.html"
