"""Carry a palettised model into ONNX natively: packed indices + a look-up table per weight.

A weight initializer made of a palette (at most 2^8 distinct values, or one shared table times a scale
per output channel: ``compress.palette_codec``) is replaced by a small constant subgraph:

    packed uint8 --BitwiseAnd/BitShift--> 4-bit indices --Cast--> Gather(lut) --Reshape--> [Mul(scale)] --> weight

Every input is an initializer, so onnxruntime (native and web) folds the subgraph once when the
session is created: inference runs the same float kernels at the same speed, while the file holds
half a byte per weight at <= 4 bits (one byte at 5-8 bits) plus the table. That is what an app
download costs; raw float weights with 16 distinct values only gzip to about a quarter.
"""

from __future__ import annotations

import numpy as np

from ..compress.palette_codec import encode

MIN_ELEMENTS = 1024  # below this the subgraph costs more than it saves


def _nodes_using(graph, name: str):
    return [n for n in graph.node if name in n.input]


def pack(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, np.ndarray | None] | None:
    """-> (lut float32 [k], packed uint8, bits per index, per-channel scale or None), or None when ``values`` is
    not a palette."""
    pal = encode(values)
    if pal is None:
        return None
    idx = pal.idx
    if len(pal.lut) <= 16:
        if len(idx) % 2:
            idx = np.append(idx, np.uint8(0))
        return pal.lut, (idx[0::2] | (idx[1::2] << 4)).astype(np.uint8), 4, pal.scale
    return pal.lut, idx, 8, pal.scale


def palettize_onnx(model, min_elements: int = MIN_ELEMENTS) -> tuple[object, int]:
    """Rewrite palettised Conv/Gemm/MatMul weights of ``model`` (an onnx.ModelProto) in place.

    -> (model, number of weights rewritten). Weights with > 256 distinct values are left alone.
    """
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    consumers = {"Conv", "Gemm", "MatMul", "ConvTranspose"}
    inits = {t.name: t for t in g.initializer}
    done = 0
    new_nodes = []
    for name, t in list(inits.items()):
        users = _nodes_using(g, name)
        if not users or any(u.op_type not in consumers or list(u.input).index(name) != 1 for u in users):
            continue
        w = numpy_helper.to_array(t)
        if w.dtype != np.float32 or w.size < min_elements:
            continue
        packed = pack(w)
        if packed is None:
            continue
        lut, data, bits, scale = packed
        p = f"{name}__pal"
        g.initializer.remove(t)
        g.initializer.extend([numpy_helper.from_array(lut, f"{p}_lut"), numpy_helper.from_array(data, f"{p}_idx"),
                              numpy_helper.from_array(np.array(w.shape, np.int64), f"{p}_shape")])
        idx = f"{p}_idx"
        if bits == 4:
            g.initializer.extend([numpy_helper.from_array(np.array(15, np.uint8), f"{p}_mask"),
                                  numpy_helper.from_array(np.array(4, np.uint8), f"{p}_four"),
                                  numpy_helper.from_array(np.array([1], np.int64), f"{p}_ax1"),
                                  numpy_helper.from_array(np.array([-1], np.int64), f"{p}_flat"),
                                  numpy_helper.from_array(np.array([0], np.int64), f"{p}_zero"),
                                  numpy_helper.from_array(np.array([w.size], np.int64), f"{p}_n")])
            new_nodes += [
                helper.make_node("BitwiseAnd", [idx, f"{p}_mask"], [f"{p}_lo"]),
                helper.make_node("BitShift", [idx, f"{p}_four"], [f"{p}_hi"], direction="RIGHT"),
                helper.make_node("Unsqueeze", [f"{p}_lo", f"{p}_ax1"], [f"{p}_lo2"]),
                helper.make_node("Unsqueeze", [f"{p}_hi", f"{p}_ax1"], [f"{p}_hi2"]),
                helper.make_node("Concat", [f"{p}_lo2", f"{p}_hi2"], [f"{p}_pairs"], axis=1),
                helper.make_node("Reshape", [f"{p}_pairs", f"{p}_flat"], [f"{p}_all"]),
                helper.make_node("Slice", [f"{p}_all", f"{p}_zero", f"{p}_n"], [f"{p}_u8"]),
            ]
            idx = f"{p}_u8"
        new_nodes += [
            helper.make_node("Cast", [idx], [f"{p}_i32"], to=TensorProto.INT32),
            helper.make_node("Gather", [f"{p}_lut", f"{p}_i32"], [f"{p}_vals"], axis=0),
            helper.make_node("Reshape", [f"{p}_vals", f"{p}_shape"], [name if scale is None else f"{p}_unit"]),
        ]
        if scale is not None:
            g.initializer.append(numpy_helper.from_array(
                scale.reshape((-1,) + (1,) * (w.ndim - 1)).astype(np.float32), f"{p}_scale"))
            new_nodes.append(helper.make_node("Mul", [f"{p}_unit", f"{p}_scale"], [name]))
        done += 1
    if new_nodes:
        # Constant subgraphs first: nodes must stay topologically sorted.
        old = list(g.node)
        del g.node[:]
        g.node.extend(new_nodes + old)
    return model, done
