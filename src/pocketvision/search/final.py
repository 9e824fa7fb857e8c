"""The final selection: which architecture of a search becomes the user's bundle.

A candidate's search score comes from a few epochs, or, with ``--inherit``, from a whole lineage's accumulated
training: it ranks architectures by how fast they learn, not by what they reach. Measured on the hotdog photos
(benchmarks/RESULTS.md, "The searched network against deepdog"): the 75-minute CPU search's winner scored 0.930 in the search and 0.893-0.898
trained from scratch, and the population drifted to networks at a third to a half of the latency limit, because
nothing in a short-training fitness rewards the headroom. So, as the NAS papers do before they report (Real et al.
2019 re-train the top of the population; MnasNet and EfficientNet scale the found network to the target), the
final stage:

- takes the ``finalists`` best distinct architectures (architecture and input side; the recipe sets the learning
  rate);
- with ``scale_up``, enters each one also scaled up to the limit: wider and/or at a larger input side, the largest
  version whose *measured* latency stays within SCALE_MARGIN of the limit;
- trains every finalist with the final budget (the task's from-scratch recipe) for ``final_seeds`` seeds, and
  picks the best mean: two seeds of the same network differ by a point on 187 val photos.

The plan (the finalists, with their measured latencies) and every finished training are kept in ``finals.json``,
so a resumed search trains only what is missing and picks among the same finalists.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from ..models import build_model
from .evolution import Evaluated, fitness
from .latency import PREDICT_CUTOFF, BlockTable, measure_export
from .space import WIDTH_SCALES, describe, scaled, valid

SCALE_MARGIN = 0.95  # a scaled finalist keeps 5% under the limit: a second timing of the same file moves ~2-5%
MAX_SCALE_MEASURES = 6  # exports timed per finalist while scaling (seconds each), largest predicted first


def net_key(c: dict[str, Any]) -> str:
    """What the final stage trains: the architecture and the input side (not the search's learning rate)."""
    return json.dumps([c["arch"], c["resolution"]], sort_keys=True)


def finalists(history: list[Evaluated], k: int, objective: str, max_latency_ms: float | None) -> list[Evaluated]:
    """The ``k`` fittest feasible evaluations with distinct networks (ties: the earlier)."""
    ranked = sorted((e for e in history if e.feasible and e.skipped is None),
                    key=lambda e: (-fitness(e, objective, max_latency_ms), e.index))
    out: list[Evaluated] = []
    seen: set[str] = set()
    for e in ranked:
        if net_key(e.candidate) not in seen:
            seen.add(net_key(e.candidate))
            out.append(e)
        if len(out) == k:
            break
    return out


def scale_up(c: dict[str, Any], like: Path, s: dict[str, Any], workdir: Path, table: Path, lock: Path,
             log) -> dict[str, Any] | None:
    """The largest wider/larger-input version of ``c`` whose exported file, timed like every candidate, stays
    within SCALE_MARGIN of the limit (and under the size limit) -> {"candidate", "width", "latency_ms", "size_mb"},
    or None when no scaled version fits. Latency does not depend on the weights, so the versions are timed
    untrained, built on the metadata of ``like`` (a trained bundle of this search). The block table orders them
    (largest first) and rules out the ones it puts far over the limit."""
    limit, max_mb = s["max_latency_ms"], s["max_size_mb"]
    versions = []
    for r in s["resolutions"]:
        for w in WIDTH_SCALES:
            v = scaled(c, w, r)
            if r >= c["resolution"] and (w, r) != (1.0, c["resolution"]) and valid(v):
                versions.append((w, v))
    if s["target"] == "onnx" and s["precision"] == "fp32":
        book = BlockTable(table, lock)
        guessed = [(book.predict(v, num_classes=2), w, v) for w, v in versions]
        versions = [(w, v) for p, w, v in sorted(guessed, key=lambda x: -x[0]) if p <= PREDICT_CUTOFF * limit]
    else:  # no table for this target: the most pixels x widths first
        versions.sort(key=lambda x: -(x[0] ** 2 * x[1]["resolution"] ** 2))
    for w, v in versions[:MAX_SCALE_MEASURES]:
        ms, mb = measure_export(_untrained(like, v), s["target"], s["precision"], workdir, lock)
        log(f"  scaled x{w:g} width, {v['resolution']} px: {ms:.2f} ms, {mb:.2f} MB")
        if ms <= SCALE_MARGIN * limit and (max_mb is None or mb <= max_mb):
            return {"candidate": v, "width": w, "latency_ms": ms, "size_mb": mb}
    return None


def _untrained(like: Path, c: dict[str, Any]):
    """A bundle of network ``c`` with fresh weights and ``like``'s task, labels and pixel contract."""
    from ..api import load
    from ..bundle import Bundle
    ref = load(like)
    meta = copy.deepcopy(ref.meta)
    model = build_model({"name": "searched", "args": {**c["arch"]["args"],
                                                        "num_classes": ref.meta["arch"]["args"]["num_classes"]}})
    meta["arch"] = model.spec
    meta["contract"]["size"] = [c["resolution"], c["resolution"]]
    return Bundle(meta, model.eval())


def plan(history: list[Evaluated], s: dict[str, Any], run_dir: Path, table: Path, bundle_of, log) -> list[dict]:
    """The finalists (what finals.json keeps): name, candidate, the evaluation it came from, scaling."""
    out = []
    for e in finalists(history, s.get("finalists", 1), s["objective"], s["max_latency_ms"]):
        out.append({"candidate": e.candidate, "from": e.index, "scaled": None, "search_score": e.score,
                    "search_ms": e.latency_ms, "architecture": describe(e.candidate)})
        if s.get("scale_up"):
            log(f"scaling [{e.index}] up to the limit ({s['max_latency_ms']:.2f} ms)")
            work = run_dir / "candidates" / f"scale-{e.index:04d}"
            work.mkdir(parents=True, exist_ok=True)
            up = scale_up(e.candidate, Path(bundle_of(run_dir, e.index)), s, work, table, run_dir / "latency.lock",
                          log)
            if up is None:
                log(f"  [{e.index}]: no scaled version fits the limit")
            elif net_key(up["candidate"]) not in {net_key(f["candidate"]) for f in out}:
                out.append({"candidate": up["candidate"], "from": e.index, "scaled": up["width"],
                            "search_score": None, "search_ms": up["latency_ms"],
                            "architecture": describe(up["candidate"])})
    return out


def winner(finals: list[dict[str, Any]], runs: dict[str, dict[str, Any]], seeds: list[int]) -> int:
    """Index of the finalist with the best mean score over ``seeds`` (ties: the earlier, i.e. the fitter)."""
    means = [sum(runs[run_key(i, sd)]["score"] for sd in seeds) / len(seeds) for i in range(len(finals))]
    return max(range(len(finals)), key=lambda i: (means[i], -i))


def run_key(finalist: int, seed: int) -> str:
    return f"{finalist}/{seed}"


__all__ = ["SCALE_MARGIN", "finalists", "net_key", "plan", "run_key", "scale_up", "winner"]
