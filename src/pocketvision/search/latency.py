"""Latency of candidates: measured on the exported file, and predicted from a per-block table.

The constraint is judged on the real thing: each trained candidate is exported to the chosen target and precision
(the same `Bundle.export` users run) and timed with one thread (`deploy/bench.py`, median of the runs). Exports
take seconds, so a table of per-block latencies (ProxylessNAS/FBNet style) predicts a candidate's latency before it
is trained: each distinct block (op, widths, kernel, stride, expansion, activation, SE, BN, skip, input side) is
exported alone once, timed with onnxruntime (1 thread), and kept in a JSON file that later searches reuse. A
candidate whose prediction is far above the limit is not trained at all; the search reports how far the table's
predictions were from the measured exports.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PocketVisionError
from ..models.searched import Block, _unit, check_blocks

RUNS, WARMUP = 30, 5
PREDICT_CUTOFF = 1.5  # not trained when the table predicts this many times the limit (the table's error is less)


@contextlib.contextmanager
def exclusive(lock: Path):
    """One latency measurement at a time among this search's workers: two timings on the same cores would each
    see the other's load."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def measure_export(bundle: Any, target: str, precision: str, workdir: Path, lock: Path) -> tuple[float, float]:
    """-> (median latency in ms, file size in MB) of ``bundle`` exported to ``target``/``precision``, 1 thread."""
    from ..deploy.bench import latency
    out = workdir / f"candidate{timed_target(target).suffix}"
    res = bundle.export(out, to=target, precision=precision, verify=False)
    with exclusive(lock):
        ms = latency(res.path, threads=1, runs=RUNS, warmup=WARMUP)["p50_ms"]
    return float(ms), res.size_bytes / 2**20


def timed_target(name: str):
    """The export target ``name``, if its file can be timed here (one file that a predictor on this machine runs)."""
    from ..export import get_target
    t = get_target(name)
    if not t.timed:
        raise PocketVisionError(f"--target {name}: the search times single-file exports that run here (onnx, "
                                "tflite); measure the others with `pocketvision bench`.")
    return t


class BlockTable:
    """Per-block onnxruntime latencies (ms, 1 thread), measured on first use and kept in ``path``."""

    def __init__(self, path: Path, lock: Path) -> None:
        self.path, self.lock = Path(path), lock
        self.entries: dict[str, float] = {}
        if self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text())["entries"]
            except (OSError, ValueError, KeyError, TypeError):
                raise PocketVisionError(f"{self.path}: not a latency table; delete it to measure again.") from None

    def _save(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".latency-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"format": "pocketvision-latency-table/1", "runtime": "onnxruntime", "threads": 1,
                       "entries": self.entries}, f)
        os.replace(tmp, self.path)

    def predict(self, candidate: dict[str, Any], num_classes: int) -> float:
        """Sum of the blocks' latencies (the stem and the pooled classifier included) for ``candidate``."""
        import torch
        from torch import nn

        args = candidate["arch"]["args"]
        side = candidate["resolution"]
        parts: list[tuple[str, Any, tuple[int, ...]]] = [
            (f"stem|{args['stem']}|{args['stem_act']}|{side}", lambda: _unit(3, args["stem"], 3, 2, 1,
                                                                              args["stem_act"], "post"),
             (1, 3, side, side))]
        cin, hw = args["stem"], (side + 1) // 2
        for b in check_blocks(args["blocks"]):
            k = "|".join(str(b[f]) for f in ("op", "out", "k", "stride", "expand", "act", "se", "skip", "bn"))
            parts.append((f"block|{cin}|{k}|{hw}", lambda cin=cin, b=b: Block(cin, b), (1, cin, hw, hw)))
            cin, hw = b["out"], (hw + 1) // 2 if b["stride"] == 2 else hw
        if args.get("head"):
            head = args["head"]
            parts.append((f"head|{cin}|{head}|{args['stem_act']}|{hw}",
                          lambda cin=cin: _unit(cin, head, 1, 1, 1, args["stem_act"], "post"), (1, cin, hw, hw)))
            cin = head
        parts.append((f"tail|{cin}|{num_classes}|{hw}",
                      lambda cin=cin: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes),
                                                    nn.Softmax(-1)), (1, cin, hw, hw)))
        missing = [p for p in parts if p[0] not in self.entries]
        if missing:
            with exclusive(self.lock), torch.no_grad():
                for name, make, shape in missing:
                    self.entries[name] = _time_module(make().eval(), shape)
                self.entries.setdefault("session_overhead", _time_module(nn.Identity(), (1, 3, 8, 8)))
                self._save()
        # Each block was timed in its own session: subtract the per-run overhead all but once.
        over = self.entries.get("session_overhead", 0.0)
        return float(sum(max(0.0, self.entries[name] - over) for name, _, _ in parts) + over)


def _time_module(module: Any, shape: tuple[int, ...]) -> float:
    """Median ms of one onnxruntime run (1 thread) of ``module`` exported alone. The TorchScript exporter: ~0.2 s a
    block where the dynamo exporter takes ~1 s (the real export uses dynamo; the table is checked against it)."""
    import onnxruntime as ort
    import torch
    x = torch.zeros(shape)
    f = io.BytesIO()
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), f, dynamo=False, opset_version=18, input_names=["x"])
    finally:
        quiet.setLevel(level)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(f.getvalue(), so, providers=["CPUExecutionProvider"])
    feed = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for _ in range(WARMUP):
        sess.run(None, feed)
    ts = []
    for _ in range(RUNS):
        t = time.perf_counter()
        sess.run(None, feed)
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts))


__all__ = ["PREDICT_CUTOFF", "BlockTable", "exclusive", "measure_export", "timed_target"]
