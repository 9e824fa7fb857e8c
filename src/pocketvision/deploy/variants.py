"""One table for every target x compression of a bundle (``pocketvision bench BUNDLE --all``).

Each variant is exported, run in its real runtime on the same held-out images, and reported with:
size raw / gzip (model bytes only: the web runtime is shared by every model and cached), the task's quality
(accuracy, 1 - NME, PSNR...), parity with the bundle (the task's own comparison), latency p50 at 1 thread and
at all threads, and a status: verified / exported but not verifiable here / failed, with the reason.
``pareto_plot`` draws quality against size and against latency.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.pixels import batched
from ..errors import PocketVisionError
from ..export import get_target
from ..export.base import model_files
from .artifact import open_predictor

VERIFIED, UNVERIFIABLE, FAILED = "verified", "exported, not verifiable here", "failed"
ICONS = {VERIFIED: "✅", UNVERIFIABLE: "❎", FAILED: "❌"}
# (target, precision, bits): the default sweep, less what a task's models cannot do
DEFAULT_VARIANTS = [("onnx", "fp32", None), ("onnx", "int8", None), ("onnx", "fp32", 4),
                    ("tflite", "fp32", None), ("tflite", "int8", None), ("tflite", "fp16", None),
                    ("coreml", "fp32", None), ("coreml", "fp32", 4),
                    ("web", "fp32", None), ("web", "int8", None), ("web", "fp32", 4)]


def default_variants(task) -> list[tuple[str, str, int | None]]:
    def ok(precision: str, bits: int | None) -> bool:
        return (precision == "fp32" or precision in task.compressions) and (not bits or "palettize" in task.compressions)
    return [v for v in DEFAULT_VARIANTS if ok(v[1], v[2])]


@dataclass
class Variant:
    target: str
    precision: str
    bits: int | None = None
    path: str | None = None
    status: str = FAILED
    reason: str = ""
    size_bytes: int | None = None
    gzip_bytes: int | None = None
    accuracy: float | None = None
    max_abs_diff: float | None = None
    agreement: float | None = None
    p50_1t_ms: float | None = None
    p50_all_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.target} {self.precision}" + (f" {self.bits}-bit palette" if self.bits else "")


def sizes(path: Path) -> tuple[int, int]:
    files = model_files(path)
    raw = b"".join(f.read_bytes() for f in files)
    return len(raw), len(gzip.compress(raw, 9))


def _latency(pred, threads_all: int, runs: int) -> tuple[float, float]:
    return _p50(pred, 1, runs), _p50(pred, threads_all, runs)


def _p50(pred, threads: int, runs: int) -> float:
    other = pred.at_threads(threads)
    try:
        return other.latency_ms(runs)["p50_ms"]
    finally:
        if other is not pred:
            other.close()


def bench_variants(bundle, data: str | Path | None, out_dir: str | Path,
                   variants: list[tuple[str, str, int | None]] | None = None, max_drop: float = 1.0,
                   runs: int = 50, log: Callable[[str], None] = lambda s: None, timed: bool = True
                   ) -> list[Variant]:
    """Export, run and judge each variant; ``timed``: also its p50 at 1 thread and at all (`--pick` times its own
    grid instead)."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = bundle.plugin
    held = bundle.held_out(data)
    if not len(held.pixels):
        raise PocketVisionError("bench --all measures on real images: pass --data DIR (labelled data of the task).")
    pixels, y = held.pixels, held.truth
    ref = batched(bundle.predict_pixels, pixels)
    cores = os.cpu_count() or 1
    rows = [Variant("bundle (torch)", "fp32", accuracy=task.quality(ref, y, ref, bundle.meta), status=VERIFIED,
                    reason="reference")]
    stem = Path(bundle.path or "model").stem
    palettised: dict[int, Any] = {}
    todo = list(variants or DEFAULT_VARIANTS)
    started = time.perf_counter()
    for i, (target, precision, bits) in enumerate(todo):
        v = Variant(target, precision, bits)
        rows.append(v)
        name = stem + ("" if precision == "fp32" else f"-{precision}") + (f"-{bits}bit" if bits else "")
        t0 = time.perf_counter()
        log(f"[{i + 1}/{len(todo)}] {v.name}: exporting{time_left(i, len(todo), time.perf_counter() - started)}")
        try:
            source = bundle
            if bits:  # palettise once per size, shared by every target
                if bits not in palettised:
                    palettised[bits] = bundle.palettize(bits, data, max_drop=max_drop)[0]
                source = palettised[bits]
            res = source.export(out_dir / (name + get_target(target).suffix), to=target, verify=False, data=data,
                                precision=precision, max_drop=max_drop)
        except PocketVisionError as e:
            v.reason = str(e)
            continue
        v.path = str(res.path)
        v.size_bytes, v.gzip_bytes = sizes(res.path)
        v.extra["export_s"] = round(time.perf_counter() - t0, 1)
        structural = get_target(target).inspect(res.path, bundle.export_meta(), task)
        if structural is not None:  # a runtime that cannot run here (Core ML off macOS)
            v.status = UNVERIFIABLE if structural["passed"] else FAILED
            pal = structural["structure"].get("palettised_weights")
            v.reason = structural["criterion"] + (f"; {pal} palettised weights" if pal else "")
            continue
        try:
            pred = open_predictor(res.path, threads=1)
        except PocketVisionError as e:
            v.status, v.reason = UNVERIFIABLE, str(e)
            continue
        try:
            out = batched(pred.run_pixels, pixels)
            c = task.compare(ref, out, y, bundle.meta)
            v.accuracy = task.quality(out, y, ref, bundle.meta)
            v.max_abs_diff, v.agreement = c.get("max_abs_diff"), c.get("top1_agreement")
            v.extra["parity"] = {k: c[k] for k in c if isinstance(c[k], int | float) and not isinstance(c[k], bool)}
            if precision == "fp32" and not bits:
                ok, why = c["passed"], task.parity_line(c)
            else:  # compressed: judged by the task's budget against the float bundle
                ok = task.within_budget(rows[0].accuracy, v.accuracy, max_drop)
                why = f"{task.budget_text(precision, max_drop)}: {rows[0].accuracy:.4f} -> {v.accuracy:.4f}"
            v.status, v.reason = (VERIFIED if ok else FAILED), why
            if pred.ready_s is not None:  # a page: navigation -> ready (model loaded, session warm), first visit
                v.extra["page_ready_s"] = round(pred.ready_s, 3)
            if timed:
                v.p50_1t_ms, v.p50_all_ms = _latency(pred, cores, runs)
        except Exception as e:  # noqa: BLE001 - one broken variant must not hide the others
            v.status, v.reason = FAILED, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        finally:
            getattr(pred, "close", lambda: None)()
    return rows


def render(rows: list[Variant], title: str, quality: str = "accuracy") -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=title)
    for col, j in [("format", "left"), ("precision", "left"), ("size", "right"), ("gzip", "right"),
                   (quality, "right"), ("max |dp|", "right"), ("agree", "right"), ("p50 1 thr", "right"),
                   ("p50 all thr", "right"), ("status", "left")]:
        t.add_column(col, justify=j)
    f = lambda x, fmt: "-" if x is None else format(x, fmt)  # noqa: E731
    for r in rows:
        t.add_row(r.target, r.precision + (f" {r.bits}-bit" if r.bits else ""),
                  "-" if r.size_bytes is None else f"{r.size_bytes / 1e6:.2f} MB",
                  "-" if r.gzip_bytes is None else f"{r.gzip_bytes / 1e6:.2f} MB", f(r.accuracy, ".4f"),
                  f(r.max_abs_diff, ".1e"), f(r.agreement, ".4f"),
                  "-" if r.p50_1t_ms is None else f"{r.p50_1t_ms:.2f} ms",
                  "-" if r.p50_all_ms is None else f"{r.p50_all_ms:.2f} ms",
                  f"{ICONS[r.status]} {r.reason}")
    Console(width=200).print(t)


def pareto_plot(rows: list[Variant], path: str | Path, quality: str = "accuracy") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    pts = [r for r in rows if r.accuracy is not None and r.size_bytes]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "gzip_bytes", "download size, gzip (MB)"),
                           (axes[1], "p50_1t_ms", "latency p50, 1 thread (ms)")):
        for r in pts:
            x = getattr(r, key)
            if x is None:
                continue
            x = x / 1e6 if key == "gzip_bytes" else x
            ax.scatter(x, 100 * r.accuracy, marker="o" if r.status == VERIFIED else "x")
            ax.annotate(r.name, (x, 100 * r.accuracy), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel(f"held-out {quality} (x100)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{quality} vs size and latency (x: not verified)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def to_json(rows: list[Variant]) -> list[dict[str, Any]]:
    return [asdict(r) | {"name": r.name} for r in rows]


def time_left(done: int, total: int, elapsed: float) -> str:
    """', about 3m10s left' from the mean step so far; nothing before the first step ends."""
    if not done:
        return ""
    left = int(elapsed / done * (total - done))
    return f", about {left // 60}m{left % 60:02d}s left"

