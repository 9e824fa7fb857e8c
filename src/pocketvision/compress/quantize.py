"""Int8 post-training static quantisation of an exported ONNX model (onnxruntime.quantization).

QDQ format, per-channel int8 weights, uint8 activations whose ranges are calibrated on the user's own
training images. ``layer_errors`` compares every quantised layer's output with the float model's
(signal-to-quantisation-noise ratio, via ``qdq_loss_debug``), and ``quantize_within_budget`` keeps
the worst layers in float, one at a time, until the held-out accuracy drop fits the budget.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.quiet import quiet
from ..errors import PocketVisionError
from ..tasks.base import QUANT_OPS, Int8Recipe  # noqa: F401  (what a task asks of int8; defined with the protocol)

MAX_FALLBACK = 12
# When every op in int8 is outside the budget, these come before single layers, each keeping more of the graph
# float: the arithmetic only (the glue between: softmax, sums, pooling stay float), then the convolutions only (a
# large classifier head, e.g. the kept 1,000-class ImageNet one, stays float). The ONNX and LiteRT targets share
# them; EfficientNet-Lite0 on hotdog (LiteRT): 0.57 -> 0.70 -> 0.95 held-out quality.
OP_STAGES = (("convolutions and fully connected layers", ("Conv", "Gemm", "MatMul")), ("convolutions", ("Conv",)))


def _Reader(input_name: str, pixels: np.ndarray, batch: int = 16):
    """onnxruntime's CalibrationDataReader over uint8 NHWC pixels (imported lazily: the extra is heavy). ``set_range``
    and ``len`` (in batches) let ``quantize_static`` collect one batch at a time (``CalibStridedMinMax``)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = [{input_name: pixels[i:i + batch]} for i in range(0, len(pixels), batch)]
            self.i, self.end = 0, len(self.batches)

        def __len__(self) -> int:
            return len(self.batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.i, self.end = start_index, min(end_index, len(self.batches))

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= self.end:
                return None
            self.i += 1
            return self.batches[self.i - 1]

        def rewind(self) -> None:
            self.i, self.end = 0, len(self.batches)

    return Reader()


def calibration_batch(pixels: np.ndarray) -> int:
    """Photos per calibration step: 16 at 224 px, fewer for bigger inputs. The calibrator keeps every intermediate
    output of a step in memory (a Percentile histogram is built from all of them at once): 64 photos of 384 px
    through the stylizer in one step took more than 23 GB and were killed."""
    h, w = pixels.shape[1:3]
    return max(1, min(16, 16 * 224 * 224 // (h * w)))


def _input_name(path: Path) -> str:
    import onnx
    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def preprocess(fp32: Path, out: Path) -> Path:
    """``quant_pre_process``: constant folding and shape inference so the quantizer sees every tensor."""
    from onnxruntime.quantization.shape_inference import quant_pre_process
    with quiet():
        # Symbolic shape inference does not understand every dynamo-exported op; ONNX's own is enough.
        quant_pre_process(str(fp32), str(out), skip_symbolic_shape=True)
    return out


def quantize(fp32: Path, out: Path, calibration: np.ndarray, exclude: list[str] | None = None,
             per_channel: bool = True, recipe: Int8Recipe | None = None) -> Path:
    """fp32 ONNX -> int8 QDQ ONNX at ``out`` (written atomically by the caller's temp folder)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    recipe = recipe or Int8Recipe()
    method = CalibrationMethod.Percentile if recipe.calibration == "percentile" else CalibrationMethod.MinMax
    # One calibration batch at a time (ranges and histograms merge across batches): memory stays that of one batch.
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True, "CalibStridedMinMax": 1}
    if recipe.calibration == "percentile":
        extra["CalibPercentile"] = recipe.percentile
    if recipe.float_head:  # the head's large dense layers: int8 weights, float outputs (the rest of it is excluded)
        extra["OpTypesToExcludeOutputQuantization"] = ["Gemm", "MatMul"]
    with tempfile.TemporaryDirectory() as tmp:
        pre = preprocess(fp32, Path(tmp) / "pre.onnx")
        with quiet():
            pixels = calibration[:recipe.max_images]
            quantize_static(str(pre), str(out), _Reader(_input_name(pre), pixels, calibration_batch(pixels)),
                            quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(recipe.op_types), per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude or [], calibrate_method=method, extra_options=extra)
    return out


def layer_errors(fp32: Path, qdq: Path, pixels: np.ndarray) -> list[dict[str, Any]]:
    """Per quantised layer (node producing a Conv/Gemm output): SQNR in dB of its output in the
    int8 model vs the float model on the same images (higher is better). Worst first.

    The int8 graph's copy of a tensor is its dequantised output where the quantiser put a Q/DQ pair after it,
    else the tensor itself (a conv feeding a float op, e.g. ELU's Exp/Min/Max, keeps its name); onnxruntime's
    ``create_activation_matching`` pairs only the first kind, which left ELU networks with no ranking at all."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    # only the layers the fallback can keep float (the saved set also holds some of their inputs)
    producer = {o: n.name for n in onnx.load(str(fp32)).graph.node for o in n.output if n.op_type in ("Conv", "Gemm")}
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, quiet():
        fa, qa = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        modify_model_output_intermediate_tensors(str(fp32), str(fa), op_types_for_saving=["Conv", "Gemm"])
        modify_model_output_intermediate_tensors(str(qdq), str(qa), op_types_for_saving=["Conv", "Gemm"])
        name = _input_name(fp32)
        # A few photos at a time, summed as we go: holding every layer's output of both graphs for all photos
        # (and a float64 copy of each) took more than 23 GB for a stylizer at 384 px.
        step = max(1, calibration_batch(pixels) // 2)
        for i in range(0, len(pixels), step):
            chunk = pixels[i:i + step]
            f_act = collect_activations(str(fa), _Reader(name, chunk, step))
            q_act = collect_activations(str(qa), _Reader(name, chunk, step))
            for t, fs in f_act.items():
                qs = q_act.get(t + "_DequantizeLinear_Output", q_act.get(t))
                if qs is None or t not in producer:
                    continue
                f = np.asarray(fs[0], np.float64)
                d = f - np.asarray(qs[0], np.float64)
                signal[t] = signal.get(t, 0.0) + float(np.sum(f * f))
                noise[t] = noise.get(t, 0.0) + float(np.sum(d * d))
    rows = []
    for t in signal:
        sqnr = 10 * np.log10(signal[t] / noise[t]) if noise[t] > 0 else float("inf")
        if np.isfinite(sqnr):
            rows.append({"tensor": t, "node": producer[t], "sqnr_db": float(sqnr)})
    return sorted(rows, key=lambda r: r["sqnr_db"])


def head_nodes(fp32: Path, max_weights: int = 65536) -> tuple[list[str], list[str]]:
    """The head of an ONNX graph, the nodes after the global pooling that follows the last convolution, as
    (the ones to keep float, its dense layers with more than ``max_weights`` weights: int8 weights only)."""
    import onnx
    from onnx import numpy_helper
    g = onnx.load(str(fp32), load_external_data=False).graph
    sizes = {i.name: int(np.prod(numpy_helper.to_array(i).shape)) for i in g.initializer}
    nodes = list(g.node)
    last_conv = max((k for k, n in enumerate(nodes) if n.op_type == "Conv"), default=-1)
    pool = next((k for k in range(last_conv + 1, len(nodes))
                 if nodes[k].op_type in ("ReduceMean", "GlobalAveragePool")), len(nodes))
    head = nodes[pool + 1:]
    big = [n.name for n in head if n.op_type in ("Gemm", "MatMul") and sizes.get(n.input[1], 0) > max_weights]
    return [n.name for n in head if n.name not in big], big


def quantize_within_budget(fp32: Path, out: Path, calibration: np.ndarray, evaluate: Callable[[Path], float],
                           base_accuracy: float, max_drop: float = 1.0,
                           log: Callable[[str], None] = lambda s: None,
                           recipe: Int8Recipe | None = None,
                           within: Callable[[float], bool] | None = None) -> dict[str, Any]:
    """Quantise per the task's ``recipe``; while the held-out quality is not ``within`` budget (default: the
    accuracy drop is at most ``max_drop`` points), keep the worst layer (lowest SQNR) in float and try again.
    -> report with the per-layer errors and the float fallbacks."""
    within = within or (lambda q: 100 * (base_accuracy - q) <= max_drop + 1e-9)
    if len(calibration) == 0:
        raise PocketVisionError("int8 calibration needs training images; none were found.")
    recipe = recipe or Int8Recipe()
    keep_float = list(recipe.keep_float) + (head_nodes(fp32)[0] if recipe.float_head else [])
    exclude: list[str] = list(keep_float)
    quantize(fp32, out, calibration, exclude, recipe=recipe)
    acc = evaluate(out)
    log(f"int8: held-out quality {base_accuracy:.4f} -> {acc:.4f}")
    best = (acc, recipe)
    for name, types in OP_STAGES:  # whole kinds of op first: the head, the glue
        if within(acc) or set(types) >= set(recipe.op_types):
            break
        recipe = dataclasses.replace(recipe, op_types=list(types))
        quantize(fp32, out, calibration, exclude, recipe=recipe)
        acc = evaluate(out)
        log(f"  only the {name} in int8: quality {acc:.4f}")
        best = max(best, (acc, recipe), key=lambda b: b[0])
    if acc < best[0]:  # fewer kinds of op in int8 can be worse (Conv inputs then see unclipped ranges)
        acc, recipe = best
        quantize(fp32, out, calibration, exclude, recipe=recipe)
        log(f"  back to {', '.join(recipe.op_types)} in int8: quality {acc:.4f}")
    errors = layer_errors(fp32, out, calibration[:64])
    order = [r["node"] for r in errors]
    order = [n for n in order if n not in exclude]
    best_kept = (acc, list(exclude))
    while not within(acc) and order and len(exclude) < MAX_FALLBACK + len(keep_float):
        exclude.append(order.pop(0))
        quantize(fp32, out, calibration, exclude, recipe=recipe)
        acc = evaluate(out)
        log(f"  {exclude[-1]} kept float: quality {acc:.4f}")
        best_kept = max(best_kept, (acc, list(exclude)), key=lambda b: b[0])
    if acc < best_kept[0]:  # no fallback reached the budget: ship the best one seen (the fewest floats among equals)
        acc, exclude = best_kept
        quantize(fp32, out, calibration, exclude, recipe=recipe)
    return {"accuracy_before": base_accuracy, "accuracy_after": acc, "max_drop": max_drop, "within_budget": within(acc),
            "float_fallback": exclude, "kept_float_by_design": list(keep_float), **recipe.describe(),
            "layer_errors": errors, "calibration_images": int(len(calibration[:recipe.max_images]))}
