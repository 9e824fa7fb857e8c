"""Why DeepDog's ELU costs so much on onnxruntime: each way of writing ELU, alone, on one DeepDog-sized tensor.

Usage: python benchmarks/elu_ort.py

One 1x112x112x64 tensor (DeepDog alpha=1's second activation; the 14 ELUs of DeepDog alpha=1 @224 see about 3.1M
values, 3.9x this one), onnxruntime CPU, 1 thread, median of 7 rounds x 40 runs, rounds interleaved. The question
it answers: is there any graph onnxruntime runs fast that computes ELU (fp32, or int8 between quantised convs)?
"""

import time

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
from onnx import TensorProto as T

from pocketvision.deploy.bench import machine

SHAPE = (1, 64, 112, 112)
F, U8 = T.FLOAT, T.UINT8


def _scalar(name: str, dtype: int, value) -> onnx.TensorProto:
    return oh.make_tensor(name, dtype, [], [value])


CONSTS = [_scalar("zero", F, 0.0), _scalar("one", F, 1.0), _scalar("s", F, 0.05), _scalar("zp", U8, 40),
          oh.make_tensor("table", U8, [256], list(range(256)))]


def _case(nodes: list, dtype_in: int, dtype_out: int) -> ort.InferenceSession:
    used = {i for n in nodes for i in n.input}
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", dtype_in, SHAPE)],
                          [oh.make_tensor_value_info("y", dtype_out, SHAPE)],
                          initializer=[c for c in CONSTS if c.name in used])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _n(op: str, ins: list[str], out: str, **kw) -> onnx.NodeProto:
    return oh.make_node(op, ins, [out], **kw)


DQ, Q = _n("DequantizeLinear", ["x", "s", "zp"], "a"), _n("QuantizeLinear", ["b", "s", "zp"], "y")
CASES = {
    # fp32, what the exporter can write
    "fp32 Relu (what ELU would cost if it were ReLU)": ([_n("Relu", ["x"], "y")], F, F),
    "fp32 Elu (onnxruntime's kernel)": ([_n("Elu", ["x"], "y")], F, F),
    "fp32 Max(x, Exp(Min(x, 0)) - 1) (our export)": ([_n("Min", ["x", "zero"], "m"), _n("Exp", ["m"], "e"),
                                                      _n("Sub", ["e", "one"], "d"), _n("Max", ["x", "d"], "y")], F, F),
    # int8: between two quantised convs the value arrives and leaves as uint8
    "int8 DQ -> Elu -> Q": ([DQ, _n("Elu", ["a"], "b"), Q], U8, U8),
    "int8 DQ -> Max(x, Exp(Min(x, 0)) - 1) -> Q": ([DQ, _n("Min", ["a", "zero"], "m"), _n("Exp", ["m"], "e"),
                                                   _n("Sub", ["e", "one"], "d"), _n("Max", ["a", "d"], "b"), Q], U8, U8),
    "int8 256-entry table lookup, Cast + Gather (how an exact int8 ELU could be written)": ([_n("Cast", ["x"], "i", to=T.INT32),
                                                                _n("Gather", ["table", "i"], "y", axis=0)], U8, U8),
    # what onnxruntime does fuse into a 256-entry lookup (QLinearLeakyRelu / QLinearSigmoid): no ELU among them
    "int8 DQ -> LeakyRelu -> Q (fused: lookup table)": ([DQ, _n("LeakyRelu", ["a"], "b"), Q], U8, U8),
    "int8 DQ -> Sigmoid -> Q (fused: lookup table)": ([DQ, _n("Sigmoid", ["a"], "b"), Q], U8, U8),
}


def main(rounds: int = 7, runs: int = 40) -> None:
    rng = np.random.default_rng(0)
    inputs = {F: rng.standard_normal(SHAPE).astype(np.float32), U8: rng.integers(0, 256, SHAPE, dtype=np.uint8)}
    sessions = {name: (_case(*spec), inputs[spec[1]]) for name, spec in CASES.items()}
    med: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(rounds):
        for name, (sess, x) in sessions.items():
            for _ in range(5):
                sess.run(None, {"x": x})
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                sess.run(None, {"x": x})
                times.append(time.perf_counter() - t)
            med[name].append(float(np.median(times)))
    print(f"machine: {machine()}, onnxruntime {ort.__version__}, 1 thread")
    print("command: python benchmarks/elu_ort.py\n")
    print(f"| graph on one {'x'.join(map(str, SHAPE))} tensor | p50 ms | vs fp32 Relu |")
    print("|---|---|---|")
    base = float(np.median(med[next(iter(CASES))]))
    for name, m in med.items():
        print(f"| {name} | {np.median(m) * 1000:.3f} | {np.median(m) / base:.1f}x |")


if __name__ == "__main__":
    main()
