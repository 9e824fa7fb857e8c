"""Device profiles: per-op latency tables of onnxruntime on one device, and a model's latency predicted from them.

`pocketvision device-profile --out dev.json` runs on the device itself (numpy + onnxruntime + onnx, no torch):
it builds small probe networks like the ones pocketvision exports (uint8 NHWC in, a stem, mobile blocks with
each activation, full and depthwise convolutions, pooling, a classifier; fp32, and int8 as `export --int8` makes
them), runs each with onnxruntime's profiler at each thread count, and fits, for every kernel onnxruntime
executed, ``ms = a * work + b`` (work: multiply-adds for convolutions and matrix products, elements otherwise).
A last fit over the probes' plain (unprofiled) latencies, ``ms = alpha * sum + beta``, removes the profiler's own
cost and adds the per-run overhead.

`bench BUNDLE --pick --device-profile dev.json` then predicts each variant's latency on that device: it runs the
variant once here under the profiler to list the kernels with their shapes, and sums the device's costs. The
kernel list is this machine's onnxruntime's: a device whose onnxruntime picks other kernels (another
instruction set) is predicted from the nearest entries; the prediction says which kernels it had to guess.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..core.quiet import silence_fd2
from ..errors import PocketVisionError

FORMAT = "pocketvision-device-profile/1"
RUNTIME = "onnxruntime"
MAC_CONV = {"Conv", "FusedConv", "QLinearConv", "ConvInteger", "NhwcConv", "NhwcFusedConv", "ConvTranspose"}
MAC_MATMUL = {"Gemm", "MatMul", "FusedMatMul", "QGemm", "MatMulInteger", "QLinearMatMul", "FusedGemm",
              "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}


# -- what onnxruntime executes ---------------------------------------------------------------------------------
def _shapes(arg: list[dict[str, list[int]]]) -> list[list[int]]:
    return [next(iter(d.values()), []) for d in arg]


def node_work(op: str, inputs: list[list[int]], outputs: list[list[int]], weight: list[int] | None = None
              ) -> tuple[str, str, float]:
    """(table key, kind, work) of one executed kernel. Convolutions are keyed by shape class (depthwise, 1x1,
    k x k: their multiply-adds cost very differently) with their multiply-adds as work, matrix products by
    multiply-adds; other kernels by elements. ``weight``: the convolution's weight shape (OIHW) when known."""
    out = float(np.prod(outputs[0])) if outputs and outputs[0] else 1.0
    if op in MAC_CONV and weight and len(weight) == 4 and weight[0]:
        k = weight[2]
        shape = (f"dw{k}" if weight[1] == 1 else "1x1" if weight[2] * weight[3] == 1
                 else f"stem{k}" if weight[1] <= 4 else f"k{k}")
        return f"{op}/{shape}", "mac", out * float(np.prod(weight)) / weight[0]
    if op in MAC_MATMUL and inputs and inputs[0]:
        return op, "mac", out * float(inputs[0][-1])
    first = float(np.prod(inputs[0])) if inputs and inputs[0] else 1.0
    return op, "elem", max(first, out)


def _weights(optimized: Path) -> dict[str, list[int]]:
    """Node name -> its convolution weight shape, read from onnxruntime's optimised graph (the profiler does not
    list prepacked weights)."""
    import onnx
    m = onnx.load(str(optimized), load_external_data=False)
    init = {t.name: list(t.dims) for t in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type in MAC_CONV:
            w = [init[i] for i in n.input[1:] if i in init and len(init[i]) == 4]
            if w:
                out[n.name] = w[0]
    return out


def kernels(model: str | Path | bytes, threads: int, runs: int = 0, warmup: int = 2
            ) -> tuple[list[dict[str, Any]], float | None]:
    """The kernels onnxruntime runs for ``model`` (after its graph optimisations), each with its table key, kind,
    work and (with ``runs``) its median profiled ms; and the plain median latency (ms) over ``runs`` unprofiled
    runs."""
    import onnxruntime as ort

    from ..runtime.predictor import time_calls
    raw = model if isinstance(model, bytes) else Path(model).read_bytes()

    def options():
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # what OnnxPredictor runs
        return so
    with tempfile.TemporaryDirectory() as tmp:
        so = options()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "prof")
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.log_severity_level = 3  # the "hardware-specific optimised model" warning: we only read it here
        with silence_fd2():
            sess = ort.InferenceSession(raw, so, providers=["CPUExecutionProvider"])
        weights = _weights(Path(tmp) / "optimized.onnx")
        feed = _feed(sess)
        for _ in range(max(1, runs) + warmup):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per: dict[str, list[float]] = defaultdict(list)
    info: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        a = e.get("args", {})
        per[e["name"]].append(e["dur"] / 1e3)
        if e["name"] not in info:
            key, kind, work = node_work(a.get("op_name", "?"), _shapes(a.get("input_type_shape", [])),
                                        _shapes(a.get("output_type_shape", [])),
                                        weights.get(e["name"][: -len("_kernel_time")]))
            info[e["name"]] = {"op": key, "kind": kind, "work": work}
    nodes = [{**info[n], "ms": float(np.median(v[warmup:] or v))} for n, v in per.items()]
    plain = None
    if runs:
        sess = ort.InferenceSession(raw, options(), providers=["CPUExecutionProvider"])
        plain = float(np.median(time_calls(lambda: sess.run(None, feed), runs, warmup)))
    return nodes, plain


def _feed(sess) -> dict[str, np.ndarray]:
    i = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in i.shape]
    if "uint8" in i.type:
        return {i.name: np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)}
    return {i.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


# -- probe networks ------------------------------------------------------------------------------------------
# (input side, width, kernel, expansion, activation, extra): small to large work, every activation pocketvision's
# networks use, each depthwise kernel size at several widths, full convolutions, pooling and LRN (AlexNet), so that
# each kernel is seen at several sizes.
PROBES = [(64, 16, 3, 1, "relu", ""), (64, 24, 5, 4, "relu6", ""), (96, 16, 7, 6, "hswish", ""),
          (96, 32, 3, 4, "elu", "full"), (128, 16, 3, 6, "relu", "pool"), (128, 32, 5, 1, "hswish", ""),
          (128, 24, 3, 4, "elu", ""), (160, 16, 5, 4, "relu6", "full"), (160, 32, 7, 1, "relu", ""),
          (224, 16, 3, 6, "hswish", "pool"), (224, 32, 3, 1, "relu6", "full"), (224, 24, 5, 4, "elu", ""),
          (64, 48, 7, 4, "relu", "full"), (96, 64, 5, 1, "relu6", ""), (128, 8, 7, 4, "elu", ""),
          (160, 24, 3, 1, "hswish", "full"), (128, 16, 3, 4, "elu", "deep"), (96, 32, 5, 6, "relu6", "deep")]


def probe(side: int, width: int, k: int, expand: int, act: str, extra: str = "") -> bytes:
    """One probe network as ONNX bytes (built with onnx.helper: no torch on the device)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(side * 1000 + width * 10 + k)
    nodes, inits = [], []
    count = [0]

    def name(p: str) -> str:
        count[0] += 1
        return f"{p}{count[0]}"

    def const(v: np.ndarray) -> str:
        n = name("c")
        inits.append(numpy_helper.from_array(np.asarray(v, np.float32), n))
        return n

    def node(op: str, ins: list[str], **attrs: Any) -> str:
        out = name(op.lower())
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def activation(x: str) -> str:
        if act == "relu":
            return node("Relu", [x])
        if act == "relu6":
            return node("Clip", [x, const(np.float32(0)), const(np.float32(6))])
        if act == "hswish":
            return node("HardSwish", [x])
        # pocketvision's export writes ELU as Max(x, Exp(Min(x, 0)) - 1) (export/graph.py)
        return node("Max", [x, node("Sub", [node("Exp", [node("Min", [x, const(np.float32(0))])]),
                                             const(np.float32(1))])])

    def conv(x: str, cin: int, cout: int, kk: int, stride: int = 1, group: int = 1) -> str:
        w = const(rng.standard_normal((cout, cin // group, kk, kk)) * (2 / (cin // group * kk * kk)) ** 0.5)
        return node("Conv", [x, w, const(np.zeros(cout))], kernel_shape=[kk, kk], strides=[stride, stride],
                    pads=[kk // 2] * 4, group=group)

    x = node("Transpose", ["pixels"], perm=[0, 3, 1, 2])
    x = node("Cast", [x], to=TensorProto.FLOAT)
    x = node("Mul", [node("Sub", [x, const(np.full((1, 3, 1, 1), 127.5))]), const(np.full((1, 3, 1, 1), 1 / 64))])
    x = activation(conv(x, 3, width, 3, 2))
    for _ in range(8 if extra == "deep" else 2):  # inverted-residual blocks with their skips
        mid = width * expand
        h = activation(conv(x, width, mid, 1)) if expand > 1 else x
        h = activation(conv(h, mid, mid, k, group=mid))
        x = node("Add", [x, conv(h, mid, width, 1)])
    if extra == "full":
        x = activation(conv(x, width, width * 2, 3, 2))
        width *= 2
    if extra == "pool":
        x = node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2])
        x = node("LRN", [x], size=5, alpha=1e-4, beta=0.75, bias=2.0)
    x = node("Flatten", [node("GlobalAveragePool", [x])])
    fc = const(rng.standard_normal((2, width)) * 0.1)
    x = node("Softmax", [node("Gemm", [x, fc, const(np.zeros(2))], transB=1)], axis=-1)
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("pixels", TensorProto.UINT8,
                                                                             ["N", side, side, 3])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 2])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()


def _int8(fp32: bytes, side: int) -> bytes:
    """The probe as `export --int8` quantises a model (compress/quantize.py, on random calibration pixels)."""
    from ..compress.quantize import quantize
    with tempfile.TemporaryDirectory() as tmp:
        f, q = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        f.write_bytes(fp32)
        quantize(f, q, np.random.default_rng(side).integers(0, 256, (8, side, side, 3), dtype=np.uint8))
        return q.read_bytes()


# -- measuring and fitting -----------------------------------------------------------------------------------
def _fit(samples: list[tuple[float, float]]) -> list[float]:
    """``ms = a * work + b`` with a, b >= 0 (a in ms per million units), least squares on the relative error: a
    model's latency is a sum of many small kernels, and each must be right in proportion, not only the big ones."""
    w = np.array([s[0] for s in samples]) / 1e6
    t = np.maximum(np.array([s[1] for s in samples]), 1e-4)
    if len(set(w.tolist())) > 1:
        a, b = np.linalg.lstsq(np.stack([w / t, 1 / t], 1), np.ones_like(t), rcond=None)[0]
    else:
        a, b = 0.0, float(np.median(t))
    if b < 0:
        a, b = float(np.median(t / np.maximum(w, 1e-12))), 0.0
    if a < 0:
        a, b = 0.0, float(np.median(t))
    return [float(a), float(b), len(samples)]


def measure(threads: list[int] | None = None, name: str | None = None, runs: int = 20,
            log=lambda s: None) -> dict[str, Any]:
    """Measure this machine's profile (see the module's text). ``threads``: default 1, 2, 4... up to the cores."""
    import onnxruntime as ort

    from .bench import machine
    cores = os.cpu_count() or 1
    threads = sorted(set(threads or [t for t in (1, 2, 4, 8, 16) if t <= cores] or [1]))
    models = []
    for i, (side, *rest) in enumerate(PROBES):
        fp32 = probe(side, *rest)  # type: ignore[arg-type]
        models += [(f"probe{i}-fp32", fp32), (f"probe{i}-int8", _int8(fp32, side))]
    tables: dict[str, Any] = {}
    for t in threads:
        samples: dict[str, list[tuple[float, float]]] = defaultdict(list)
        kinds: dict[str, str] = {}
        runs_here = [kernels(m, t, runs=runs) for _, m in models]
        # The profiler's own cost per kernel (a few microseconds: most of a small kernel's time), taken off
        # every timing before the fit, so that a network of many small kernels is not overestimated.
        # Estimated where it shows most: the probes with the most kernels.
        deep = sorted(runs_here, key=lambda r: -len(r[0]))[:max(2, len(runs_here) // 4)]
        per_node = max(0.0, float(np.median([(sum(n["ms"] for n in nodes) - plain) / len(nodes)
                                             for nodes, plain in deep])))
        for nodes, _ in runs_here:
            for n in nodes:
                samples[n["op"]].append((n["work"], max(n["ms"] - per_node, 1e-4)))
                kinds[n["op"]] = n["kind"]
        ops = {op: _fit(s) + [kinds[op]] for op, s in sorted(samples.items())}
        # Whole networks: plain latency = alpha * (sum of the kernels' fits) + beta (the per-run overhead),
        # fitted on the probes' unprofiled runs (relative error).
        sums = np.array([_sum(nodes, ops) for nodes, _ in runs_here])
        plains = np.array([p for _, p in runs_here])
        alpha, beta = np.linalg.lstsq(np.stack([sums / plains, 1 / plains], 1), np.ones_like(plains),
                                      rcond=None)[0]
        pred = alpha * sums + beta
        err = float(np.median(np.abs(pred - plains) / plains))
        tables[str(t)] = {"ops": ops, "alpha": float(alpha), "beta": float(beta),
                          "profiler_ms_per_kernel": per_node,
                          "fit_error_median": err}
        log(f"{t} thread(s): {len(ops)} kernels from {len(models)} probe networks, median error {err:.0%}")
    return {"format": FORMAT, "runtime": RUNTIME, "name": name or machine(), "machine": machine(),
            "onnxruntime": ort.__version__, "cores": cores, "threads": tables,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _sum(nodes: list[dict[str, Any]], ops: dict[str, list]) -> float:
    total = 0.0
    for n in nodes:
        a, b = _cost(n, ops)
        total += a * n["work"] / 1e6 + b
    return total


def _cost(n: dict[str, Any], ops: dict[str, list]) -> tuple[float, float]:
    if n["op"] in ops:
        return ops[n["op"]][0], ops[n["op"]][1]
    same = [v for v in ops.values() if v[3] == n["kind"]] or list(ops.values())  # a kernel the device never ran
    return float(np.median([v[0] for v in same])), float(np.median([v[1] for v in same]))


# -- using a profile -----------------------------------------------------------------------------------------
def load(path: str | Path) -> dict[str, Any]:
    """A profile file, checked: a one-line error naming the file and what is wrong."""
    p = Path(path)
    try:
        prof = json.loads(p.read_text())
    except OSError:
        raise PocketVisionError(f"--device-profile {p}: no such file (make one on the device with "
                                "`pocketvision device-profile --out FILE`).") from None
    except ValueError:
        raise PocketVisionError(f"{p}: not JSON; a device profile comes from `pocketvision device-profile`.") from None
    if not isinstance(prof, dict) or prof.get("format") != FORMAT:
        raise PocketVisionError(f"{p}: not a device profile (format {FORMAT!r} expected); make one with "
                                "`pocketvision device-profile --out FILE`.")
    try:
        for t, table in prof["threads"].items():
            int(t)
            for op, v in table["ops"].items():
                if len(v) != 4 or not all(isinstance(x, int | float) for x in v[:3]) or v[3] not in ("mac", "elem"):
                    raise ValueError(op)
            float(table["alpha"]), float(table["beta"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise PocketVisionError(f"{p}: damaged device profile ({type(e).__name__} at {e}); measure it again.") from None
    return prof


def thread_counts(profile: dict[str, Any]) -> list[int]:
    return sorted(int(t) for t in profile["threads"])


def predict(model: str | Path, profile: dict[str, Any], threads: int,
            nodes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """-> {"ms": predicted latency on the profile's device, "guessed": kernels the profile has no entry for}.
    ``nodes``: ``kernels(model, 1)[0]`` when the caller already has it (it is the same for every thread count)."""
    table = profile["threads"].get(str(threads))
    if table is None:
        raise PocketVisionError(f"the profile {profile.get('name')!r} has no {threads}-thread table (it has "
                                f"{', '.join(map(str, thread_counts(profile)))}).")
    if nodes is None:
        nodes = kernels(model, 1)[0]
    total = _sum(nodes, table["ops"])
    return {"ms": float(table["alpha"] * total + table["beta"]),
            "guessed": sorted({n["op"] for n in nodes if n["op"] not in table["ops"]})}


__all__ = ["FORMAT", "kernels", "load", "measure", "node_work", "predict", "probe", "thread_counts"]
