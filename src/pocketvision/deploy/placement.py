"""Placement: which file, precision, thread count and accelerator a bundle should ship with on one device.

    pocketvision bench m.pvb --pick [--device-profile here|dev.json] [--data DIR] [--max-drop 1]

Every variant (target x precision x palette) is exported and verified on real held-out images first
(`variants.bench_variants`): only a verified one (fp32 parity passed, or a compressed file within the accuracy
budget) can be picked. Each verified variant is then timed, batch 1, for every thread count and accelerator
(onnxruntime's execution providers, LiteRT with and without its XNNPACK delegate) the target offers:
- ``here``: measured on this machine, in the real runtime;
- a profile file (`pocketvision device-profile`, made on the device): predicted from the device's per-kernel
  table (`profiles.py`) for the targets whose runtime the profile describes; the others are listed as not
  predicted, with the reason.
The fastest wins (ties: the smaller download); the choice is written into the bundle's lineage and
``meta["placement"]``, with the whole table in ``placement.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.bundle_file import atomic_write_bytes
from ..errors import PocketVisionError
from ..export import get_target
from . import profiles, variants as V
from .artifact import open_predictor
from .bench import machine


@dataclass
class Option:
    variant: str  # "onnx int8", "tflite fp32 4-bit palette"...
    target: str
    precision: str
    bits: int | None
    path: str
    accelerator: str
    threads: int
    accuracy: float | None
    size_bytes: int | None
    ms: float | None = None
    how: str = ""  # "measured" | "predicted" | why neither
    guessed: list[str] | None = None  # kernels the profile had no entry for


def thread_counts(cores: int) -> list[int]:
    return sorted({t for t in (1, 2, 4, 8, 16) if t <= cores} | {cores})


def pick(bundle, data: str | Path | None, out_dir: str | Path, profile: str | Path = "here",
         variants: list[tuple[str, str, int | None]] | None = None, threads: list[int] | None = None,
         max_drop: float = 1.0, runs: int = 50, record: bool = True,
         log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Verify, time and rank every variant of ``bundle`` for ``profile``; record the fastest in the bundle."""
    prof = None if str(profile) == "here" else profiles.load(profile)
    device = machine() if prof is None else prof["name"]
    if threads:
        counts = sorted(set(threads))
        if prof is not None and not set(counts) <= set(profiles.thread_counts(prof)):
            raise PocketVisionError(f"--threads {','.join(map(str, counts))}: the profile {device!r} has tables for "
                                    f"{', '.join(map(str, profiles.thread_counts(prof)))} thread(s).")
    else:
        counts = thread_counts(os.cpu_count() or 1) if prof is None else profiles.thread_counts(prof)
    out_dir = Path(out_dir)
    rows = V.bench_variants(bundle, data, out_dir, variants or V.default_variants(bundle.plugin), max_drop=max_drop,
                            runs=runs, log=log, timed=False)
    reference = rows[0]
    options: list[Option] = []
    for r in rows[1:]:
        if r.status != V.VERIFIED:
            continue
        target = get_target(r.target)
        accels = target.accelerators() if prof is None else (target.accelerators()[:1] or ("-",))
        predicted = prof is not None and target.runtime == prof.get("runtime")
        nodes = profiles.kernels(r.path, 1)[0] if predicted else None  # the same kernels at every thread count
        for acc in accels:
            for t in counts:
                o = Option(r.name, r.target, r.precision, r.bits, r.path, acc, t, r.accuracy, r.size_bytes)
                options.append(o)
                if prof is None:
                    log(f"[{len(options)}] {r.name}, {acc}, {t} thread(s): timing")
                    try:
                        o.ms, o.how = _measure(r, acc, t, runs), "measured"
                    except PocketVisionError as e:
                        o.how = f"not measured: {e}"
                elif predicted:
                    p = profiles.predict(r.path, prof, t, nodes)
                    o.ms, o.how, o.guessed = p["ms"], "predicted", p["guessed"]
                else:
                    o.how = (f"not predicted: the profile describes {prof.get('runtime')}; {r.target} runs in "
                             f"{target.runtime}")
    timed = [o for o in options if o.ms is not None]
    if not timed:
        raise PocketVisionError(f"no verified variant could be timed for {device!r}: see the table's reasons.")
    best = min(timed, key=lambda o: (o.ms, o.size_bytes or 0))
    choice = {"op": "placement", "device": device, "profile": str(profile), "variant": best.variant,
              "target": best.target, "precision": best.precision, "bits": best.bits, "accelerator": best.accelerator,
              "threads": best.threads, "latency_ms": round(best.ms, 4), "how": best.how,
              "accuracy": best.accuracy, "reference_accuracy": reference.accuracy, "max_drop": max_drop,
              "file": best.path, "size_bytes": best.size_bytes}
    report = {"machine": machine(), "device": device, "profile": str(profile), "choice": choice,
              "variants": V.to_json(rows), "options": [asdict(o) for o in options]}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "placement.json", json.dumps(report, indent=1).encode())
    if record and bundle.path:
        bundle.meta.setdefault("lineage", []).append(choice)
        bundle.meta["placement"] = choice
        bundle.save(bundle.path)
    return report


def _measure(r: V.Variant, accelerator: str, threads: int, runs: int) -> float:
    with open_predictor(r.path, threads=threads, accelerator=accelerator) as pred:
        return float(pred.latency_ms(runs)["p50_ms"])


def render(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    c = report["choice"]
    how = "measured here" if report["profile"] == "here" else "predicted from " + report["profile"]
    t = Table(title=f"placement for {report['device']} ({how})")
    for col, j in [("variant", "left"), ("accelerator", "left"), ("threads", "right"), ("accuracy", "right"),
                   ("size", "right"), ("p50", "right"), ("", "left")]:
        t.add_column(col, justify=j)
    for o in report["options"]:
        chosen = (o["path"], o["accelerator"], o["threads"]) == (c["file"], c["accelerator"], c["threads"])
        note = "<- picked" if chosen else ("" if o["ms"] is not None else o["how"])
        if o["ms"] is not None and o.get("guessed"):
            note += f" (guessed kernels: {', '.join(o['guessed'])})"
        t.add_row(o["variant"], o["accelerator"], str(o["threads"]),
                  "-" if o["accuracy"] is None else f"{o['accuracy']:.4f}",
                  "-" if o["size_bytes"] is None else f"{o['size_bytes'] / 1e6:.2f} MB",
                  "-" if o["ms"] is None else f"{o['ms']:.3f} ms ({o['how']})", note)
    Console(width=200).print(t)
    print(f"picked: {c['variant']}, {c['accelerator']}, {c['threads']} thread(s): {c['latency_ms']:.3f} ms "
          f"{c['how']}, accuracy {c['accuracy']:.4f} (bundle {c['reference_accuracy']:.4f}); file {c['file']}")


__all__ = ["Option", "pick", "render", "thread_counts"]
