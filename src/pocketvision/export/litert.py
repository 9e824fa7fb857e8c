"""Bundle -> LiteRT ``.tflite`` via litert-torch (extra ``[litert]``), run by the ai-edge-litert interpreter.

Input ``uint8 [1, H, W, 3]`` RGB pixels at the contract's size, output the task's first output
(probabilities ``[1, C]``, keypoints ``[1, K, 3]``, a stylised ``[1, H, W, 3]`` uint8 image): cast and
normalisation are in the graph, as in every pocketvision export. Labels, contract and threshold are stored as flatbuffer
metadata entries named ``pocketvision.<key>`` (JSON). int8 is full-integer post-training
quantisation (ai-edge-quantizer's static int8 recipe) calibrated on the user's training images; fp16
stores half-precision weights. Reload with
``pocketvision.runtime.litert_predictor.LiteRTPredictor(path)`` or ``pocketvision predict model.tflite``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..compress.data import budget_quality
from ..compress.quantize import MAX_FALLBACK, OP_STAGES, QUANT_OPS, Int8Recipe
from ..core.quiet import quiet
from ..errors import PocketVisionError
from ..runtime.litert_predictor import ACCELERATORS, LiteRTPredictor
from .base import META_PREFIX, ExportJob, Target, register_target

INSTALL = "pip install 'pocketvision[litert]'"


def _quiet():
    # litert-torch, torchao and absl print pages of notices, some from C++ straight to fd 2.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return quiet(fd2=True)


def require() -> None:
    try:
        with _quiet():
            import ai_edge_litert  # noqa: F401
            import litert_torch  # noqa: F401
    except ImportError:
        raise PocketVisionError(f"the tflite target needs litert-torch and ai-edge-litert: {INSTALL}") from None


def add_metadata(model_bytes: bytes, metadata: dict[str, Any]) -> bytes:
    """Append ``pocketvision.*`` metadata entries (JSON) to a .tflite flatbuffer."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.convert_bytearray_to_object(bytearray(model_bytes))
    model.metadata = model.metadata or []
    for k, v in metadata.items():
        buf = fb.BufferT()
        buf.data = np.frombuffer(json.dumps(v).encode(), dtype=np.uint8)
        model.buffers.append(buf)
        md = fb.MetadataT()
        md.name = META_PREFIX + k
        md.buffer = len(model.buffers) - 1
        model.metadata.append(md)
    return bytes(fbu.convert_object_to_bytearray(model))


EXTRA_OUTPUTS = ("unfamiliar", "embedding")  # outputs besides the first that a LiteRT file carries


def export_tflite(job: ExportJob) -> Path:
    require()
    import torch

    from .graph import SomeOutputs, pixel_graph
    h, w = job.contract.size
    graph = pixel_graph(job.task.graph_model(job.model, job.teachable), job.contract, job.task.graph_head)
    # LiteRT graphs keep the example's shape: the contract's size, batch 1 (a fully convolutional model
    # still gets a fixed size here; the interpreter runs other sizes only after a resize + re-allocation).
    sample = torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8)
    # The primary output, and the extra ones a device reads by itself (a classifier's unfamiliarity score); the
    # logits stay out (the probabilities say the same). The metadata names them in order.
    with torch.no_grad():
        names = list(job.task.outputs.names)[:len(graph(sample))]
    keep = tuple(i for i, n in enumerate(names) if i == 0 or n in EXTRA_OUTPUTS)
    net = SomeOutputs(graph, keep).eval()
    job.meta = {**job.meta, "outputs": [names[i] for i in keep]}
    calibration = job.calibration(128) if job.precision == "int8" else None
    if job.precision == "int8" and (calibration is None or not len(calibration)):
        raise PocketVisionError("tflite int8 needs calibration images.")
    try:
        with _quiet():
            import litert_torch
            data = litert_torch.convert(net, (sample,)).model_content()
    except Exception as e:  # noqa: BLE001 - converter errors are long; the first line names the op
        raise PocketVisionError(f"tflite export failed: {str(e).strip().splitlines()[0][:300]}") from e
    from .compat import check_tflite, raise_if_incompatible
    raise_if_incompatible(check_tflite(bytes(data)))
    data = add_metadata(bytes(data), {**job.meta, "precision": job.precision})
    # Quantise after adding the metadata: ai-edge-quantizer keeps it, while rewriting its output through
    # the flatbuffer object API would drop the weight buffers it stores past the flatbuffer.
    if job.precision == "fp16":
        with _quiet():
            data = _fp16_weights(data)
    elif job.precision == "int8":
        data = _int8_within_budget(job, data, calibration)  # quiet inside: its own lines reach the log
    job.out.write_bytes(data)
    return job.out


@register_target
class LiteRTTarget(Target):
    name = "tflite"
    timed = True
    runtime = "LiteRT"
    suffix = ".tflite"
    precisions = ("fp32", "int8", "fp16")
    install = INSTALL
    converters = ("litert_torch", "ai_edge_litert")
    description = "LiteRT flatbuffer via litert-torch, metadata entries pocketvision.* (extra [litert])"
    teachable = True

    def export(self, job: ExportJob) -> None:
        export_tflite(job)

    def open(self, path: str | Path, threads: int | None = None, accelerator: str | None = None):
        return LiteRTPredictor(path, threads, accelerator)

    def accelerators(self) -> tuple[str, ...]:
        return ACCELERATORS

    def owns(self, path: Path) -> bool:
        if path.suffix == self.suffix:
            return True
        try:  # a LiteRT flatbuffer by any name: its file identifier
            with open(path, "rb") as f:
                return f.read(8)[4:] == b"TFL3"
        except OSError:
            return False


# The task's int8 recipe names ONNX op types; these are the LiteRT ops they become.
TFL_OPS = {"Conv": ("CONV_2D", "DEPTHWISE_CONV_2D"), "Gemm": ("FULLY_CONNECTED",),
           "MatMul": ("FULLY_CONNECTED", "BATCH_MATMUL")}


def _int8_recipe(op_types: list[str] | None, keep_float: list[str],
                 weights_only: list[str] = ()) -> list[dict[str, Any]]:
    """ai-edge-quantizer's static_wi8_ai8 for the task's op types (None: every op it supports), with the ops named
    in ``keep_float`` (their output tensors) left float and those in ``weights_only`` int8 in their weights alone:
    a later entry of the recipe wins for the scopes it matches."""
    from ai_edge_quantizer import recipe

    rec = recipe.static_wi8_ai8()  # [{"regex": ".*", "operation": "*", ...}]
    if op_types is not None and set(op_types) < set(QUANT_OPS) and set(op_types) <= set(TFL_OPS):
        rec = [{**rec[0], "operation": op} for t in op_types for op in dict.fromkeys(TFL_OPS[t])]
    weight_only = recipe.weight_only_wi8_afp32()[0]
    # an op's scope is its output tensors' names, each followed by ";"
    return (rec + [{"regex": f"(^|;){re.escape(name)};", "operation": "*", "algorithm_key": "no_quantize"}
                   for name in keep_float]
            + [{**weight_only, "regex": f"(^|;){re.escape(name)};", "operation": "FULLY_CONNECTED"}
               for name in weights_only])


def _head_ops(data: bytes, max_weights: int = 65536) -> tuple[list[str], list[str]]:
    """``quantize.head_nodes`` on a LiteRT graph: the output tensors of the ops after the global pooling that
    follows the last convolution, as (to keep float, the FULLY_CONNECTED ones over ``max_weights``: weights only).
    (The interpreter's op list is the one reader of a flatbuffer's ops that ships with LiteRT.)"""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=data)
    ops, tensors = it._get_ops_details(), {t["index"]: t for t in it.get_tensor_details()}
    last_conv = max((k for k, o in enumerate(ops) if o["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")), default=-1)
    pool = next((k for k in range(last_conv + 1, len(ops)) if ops[k]["op_name"] in ("MEAN", "AVERAGE_POOL_2D")),
                len(ops))
    keep, weights = [], []
    for o in ops[pool + 1:]:
        w = tensors.get(o["inputs"][1]) if len(o["inputs"]) > 1 else None
        big = o["op_name"] == "FULLY_CONNECTED" and w is not None and int(np.prod(w["shape"])) > max_weights
        (weights if big else keep).extend(tensors[i]["name"] for i in o["outputs"])
    return keep, weights


class _Int8:
    """One float .tflite, calibrated once, quantised with any set of ops kept float."""

    def __init__(self, data: bytes, calibration: np.ndarray, recipe: Int8Recipe, tmp: Path):
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_quantizer import quantizer as aeq
        self.src, self.op_types, self.tmp = tmp / "f32.tflite", recipe.op_types, tmp
        self.head, self.head_weights = _head_ops(data) if recipe.float_head else ([], [])
        self.src.write_bytes(data)
        self.q = aeq.Quantizer(str(self.src))
        self.q.load_quantization_recipe(_int8_recipe(self.op_types, []))  # the widest: its ranges serve every stage
        signatures = Interpreter(model_content=data).get_signature_list()  # {"serving_default": {...}}
        self.key = next(iter(signatures))
        arg = signatures[self.key]["inputs"][0]
        self.samples = [{arg: np.ascontiguousarray(x[None])} for x in calibration]
        with _quiet():
            self.ranges = self.q.calibrate({self.key: self.samples})

    def quantize(self, keep_float: list[str], op_types: list[str] | None = None) -> bytes:
        """int8 with ``keep_float`` ops float; ``op_types``: only these kinds of op (default: the task's)."""
        self.q.load_quantization_recipe(_int8_recipe(op_types or self.op_types, self.head + keep_float,
                                                     self.head_weights))
        dst = self.tmp / "int8.tflite"
        with _quiet():
            self.q.quantize(self.ranges).export_model(str(dst), overwrite=True)
        return dst.read_bytes()

    def worst_ops(self, n_images: int = 16) -> list[str]:
        """Output tensors of the last quantised model, lowest signal-to-noise ratio against the float model first
        (on a few calibration photos), as the ONNX fallback ranks its layers by SQNR."""
        from ai_edge_quantizer.utils.validation_utils import ValidationErrorMetric
        with _quiet():
            result = self.q.validate({self.key: self.samples[:n_images]}, error_metrics=[ValidationErrorMetric.SNR],
                                     use_xnnpack=True, num_threads=max(1, os.cpu_count() or 1))
        errors = result.get_signature_comparison_result(self.key).intermediate_tensors
        snr = {name: float(m.get("snr", m.get(ValidationErrorMetric.SNR, np.inf))) for name, m in errors.items()}
        return [name for name, _ in sorted(snr.items(), key=lambda kv: kv[1])]


def _int8_full_integer(data: bytes, calibration: np.ndarray, op_types: list[str] | None = None) -> bytes:
    """Every op the task quantises in int8, none kept float (the benchmarks' reading of the plain recipe)."""
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Int8Recipe(op_types=op_types or list(QUANT_OPS))
        return _Int8(data, calibration, recipe, Path(tmp)).quantize([])


def _int8_within_budget(job: ExportJob, data: bytes, calibration: np.ndarray) -> bytes:
    """Full-integer int8 (ai-edge-quantizer's static recipe, ranges calibrated on the user's training photos);
    while the held-out quality (photos and their phone-photo twin) is outside the task's budget, keep more of the
    graph float: by kinds of op (``OP_STAGES``), then the op with the lowest SNR, one at a time, as the ONNX
    target does. (PT2E in torch lost 40 points on EfficientNet-Lite0 here; this kept it.)"""
    held = job.held_out() if job.held_out is not None else None
    task = job.task
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        q = _Int8(data, calibration, task.int8_recipe(None), t)
        out = q.quantize([])
        if held is None or not len(held.pixels):
            return out

        def outputs(model: bytes) -> np.ndarray:
            (t / "judged.tflite").write_bytes(model)
            return LiteRTPredictor(t / "judged.tflite").run_pixels(held.pixels)
        judge = budget_quality(task, job.meta, held, outputs(data))
        base, acc = judge(outputs(data)), judge(outputs(out))
        job.log(f"int8 (LiteRT): held-out quality {base:.4f} -> {acc:.4f}")

        def within(a: float) -> bool:
            return task.within_budget(base, a, job.max_drop)
        ops, kept, stage = q.op_types, [], "every op"
        best = (acc, out, ops, stage)
        for name, types in OP_STAGES:
            if within(acc) or (q.op_types is not None and set(types) >= set(q.op_types)):
                break  # within budget, or the task quantises no more than this already
            out, ops, stage = q.quantize([], list(types)), list(types), name
            acc = judge(outputs(out))
            job.log(f"  only the {name} in int8: quality {acc:.4f}")
            best = max(best, (acc, out, ops, stage), key=lambda b: b[0])
        if best[3] != stage:  # fewer kinds of op in int8 can be worse: go on from the best stage
            acc, _, ops, stage = best
            out = q.quantize([], ops)  # again, so that worst_ops ranks this stage's ops
            job.log(f"  back to {stage} in int8: quality {acc:.4f}")
        order = [] if within(acc) else q.worst_ops()
        best = (acc, out, list(kept))
        while not within(acc) and order and len(kept) < MAX_FALLBACK:
            kept.append(order.pop(0))
            out = q.quantize(kept, ops)
            acc = judge(outputs(out))
            job.log(f"  {kept[-1]} kept float: quality {acc:.4f}")
            best = max(best, (acc, out, list(kept)), key=lambda b: b[0])
        acc, out, kept = best  # none reached the budget: the best one seen (the fewest floats among equals)
        job.report["int8"] = {"accuracy_before": base, "accuracy_after": acc, "max_drop": job.max_drop,
                              "within_budget": within(acc), "int8_ops": stage, "float_fallback": kept,
                              "calibration_images": int(len(calibration))}
        return out


def _fp16_weights(data: bytes) -> bytes:
    from ai_edge_quantizer import quantizer as aeq
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f32.tflite", Path(tmp) / "f16.tflite"
        src.write_bytes(data)
        q = aeq.Quantizer(str(src))
        q.add_weight_only_config(regex=".*", operation_name=TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                 algorithm_key=AlgorithmName.FLOAT_CASTING)
        q.quantize().export_model(str(dst), overwrite=True)
        return dst.read_bytes()
