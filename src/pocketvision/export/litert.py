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
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

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


EXTRA_OUTPUTS = ("unfamiliar",)  # outputs besides the first that a LiteRT file carries


def export_tflite(job: ExportJob) -> Path:
    require()
    import torch

    from .graph import SomeOutputs, pixel_graph
    h, w = job.contract.size
    graph = pixel_graph(job.task.graph_model(job.model), job.contract, job.task.graph_head)
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
    with _quiet():
        if job.precision == "fp16":
            data = _fp16_weights(data)
        elif job.precision == "int8":
            data = _int8_full_integer(data, calibration, job.task.int8_recipe(None).op_types)
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


def _int8_full_integer(data: bytes, calibration: np.ndarray, op_types: list[str] | None = None) -> bytes:
    """Static int8 weights and activations (ai-edge-quantizer's static_wi8_ai8), ranges calibrated on
    the user's training images. (PT2E in torch lost 40 points on EfficientNet-Lite0 here; this kept it.)
    ``op_types`` (the task's ``Int8Recipe``): when the task quantises only some op types (the stylizer: its
    convolutions), the other ops stay float, as in its ONNX export; otherwise every op is quantised."""
    from ai_edge_quantizer import quantizer as aeq, recipe

    from ..compress.quantize import QUANT_OPS
    rec = recipe.static_wi8_ai8()  # [{"regex": ".*", "operation": "*", ...}]
    if op_types is not None and set(op_types) < set(QUANT_OPS) and set(op_types) <= set(TFL_OPS):
        rec = [{**rec[0], "operation": op} for t in op_types for op in TFL_OPS[t]]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f32.tflite", Path(tmp) / "int8.tflite"
        src.write_bytes(data)
        q = aeq.Quantizer(str(src))
        q.load_quantization_recipe(rec)
        from ai_edge_litert.interpreter import Interpreter
        signatures = Interpreter(model_content=data).get_signature_list()  # {"serving_default": {...}}
        key = next(iter(signatures))
        arg = signatures[key]["inputs"][0]
        ranges = q.calibrate({key: [{arg: np.ascontiguousarray(x[None])} for x in calibration]})
        q.quantize(ranges).export_model(str(dst), overwrite=True)
        return dst.read_bytes()


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
