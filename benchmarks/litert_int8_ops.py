"""Is LiteRT's int8/fp32 latency ratio ours or the runtime's? Times single-op stacks through the same converter
(litert-torch), the same int8 recipe (ai-edge-quantizer static_wi8_ai8) and the same interpreter (ai-edge-litert,
XNNPACK, 1 thread) as `pocketvision export --to tflite --int8`, with no pre/post-processing in the graph.

Usage: python benchmarks/litert_int8_ops.py
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

from pocketvision.export.litert import _int8_full_integer, _quiet
from pocketvision.deploy.bench import machine

DEPTH = 8  # the op repeated, so that it, not the interpreter's call overhead, dominates


def stack(kind: str, c: int) -> nn.Module:
    if kind == "pointwise":
        layers = [m for _ in range(DEPTH) for m in (nn.Conv2d(c, c, 1), nn.ReLU())]
    elif kind == "depthwise":
        layers = [m for _ in range(DEPTH) for m in (nn.Conv2d(c, c, 3, padding=1, groups=c), nn.ReLU())]
    elif kind == "elu":
        layers = [m for _ in range(DEPTH) for m in (nn.Conv2d(c, c, 1), nn.ELU())]
    else:
        raise ValueError(kind)
    return nn.Sequential(*layers).eval()


CASES = [("pointwise", 128, 56), ("pointwise", 512, 14), ("depthwise", 128, 56), ("depthwise", 512, 14),
         ("elu", 128, 56)]


def p50_ms(data: bytes, x: np.ndarray, rounds: int = 5, runs: int = 30) -> float:
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=data, num_threads=1)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    xq = x
    if inp["dtype"] != np.float32:  # fully integer input: quantise as the app would
        scale, zero = inp["quantization"]
        xq = np.clip(np.round(x / scale + zero), -128, 127).astype(inp["dtype"])
    meds = []
    for _ in range(rounds):
        for _ in range(3):
            it.set_tensor(inp["index"], xq)
            it.invoke()
        t = []
        for _ in range(runs):
            t0 = time.perf_counter()
            it.set_tensor(inp["index"], xq)
            it.invoke()
            t.append((time.perf_counter() - t0) * 1e3)
        meds.append(statistics.median(t))
    return statistics.median(meds)


def main() -> None:
    torch.manual_seed(0)
    rows = []
    for kind, c, s in CASES:
        net = stack(kind, c)
        x = torch.randn(1, c, s, s)
        with _quiet():
            import litert_torch
            f32 = bytes(litert_torch.convert(net, (x,)).model_content())
        calib = np.random.default_rng(0).standard_normal((16, c, s, s)).astype(np.float32)
        i8 = _int8_full_integer(f32, calib)
        a, b = p50_ms(f32, x.numpy()), p50_ms(i8, x.numpy())
        rows.append((f"{DEPTH} x {kind} {c} ch @ {s}x{s}", a, b))
        print(rows[-1], file=sys.stderr, flush=True)
    print(f"machine: {machine()}, ai-edge-litert (XNNPACK), 1 thread; command: python benchmarks/litert_int8_ops.py\n")
    print("| graph | fp32 p50 | int8 p50 | int8 / fp32 |\n|---|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a:.3f} ms | {b:.3f} ms | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
