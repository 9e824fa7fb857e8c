"""ONNX target: one self-contained ``.onnx`` with the preprocessing contract inside the graph.

Input ``image``: uint8 RGB NHWC, dynamic batch (and dynamic height/width when the task's outputs say the model
is fully convolutional). The graph casts, normalises and transposes; its outputs are the task's
(``OutputSpec.names``: ``probabilities``/``logits``, ``keypoints``, ``image``...). BatchNorm is folded into the
convolutions before capture. Labels, contract, threshold and the task's metadata go into ``metadata_props`` so
the file alone can be used. int8 is static QDQ calibrated on the user's training photos (``compress/int8.py``).
Reload with ``onnxruntime.InferenceSession(path)`` or ``pocketvision predict model.onnx IMAGE``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..compress.int8 import quantize_onnx
from ..errors import PocketVisionError
from ..runtime.onnx_predictor import OnnxPredictor, accelerators
from .base import META_PREFIX, ExportJob, Target, register_target

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ..core.contract import Contract
    from ..tasks.base import Task

DEFAULT_OPSET = 18


def export_onnx(model: nn.Module, contract: Contract, task: Task, metadata: dict[str, Any], out: str | Path,
                opset: int | None = None, teachable: bool = False) -> Path:
    """Capture ``model`` with the contract inside and the task's head after it; write ``out``."""
    import torch

    from .graph import pixel_graph
    opset = opset or DEFAULT_OPSET
    out = Path(out)
    if opset < 17:
        raise PocketVisionError(f"opset {opset} is too old; use >= 17.")
    graph = pixel_graph(task.graph_model(model, teachable), contract, task.graph_head)
    h, w = contract.size
    example = torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8)
    with torch.no_grad():  # a bundle may give a prefix of the task's outputs (no unfamiliarity score, say)
        names = list(task.outputs.names)[:len(graph(example))]
    dims = {0: torch.export.Dim.DYNAMIC}
    if task.outputs.dynamic_size:
        dims.update({1: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC})
    # The exporter chats on stdout, warnings and logging (e.g. "torchvision is not installed"); users
    # get one line from us instead.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            prog = torch.onnx.export(graph, (example,), dynamo=True, input_names=["image"], output_names=names,
                                     dynamic_shapes={"image": dims}, opset_version=opset, external_data=False,
                                     optimize=True, verbose=False)
        except Exception as e:  # noqa: BLE001 - surface the first line; the full trace is noise to users
            raise PocketVisionError(f"ONNX export failed: {str(e).strip().splitlines()[0]}") from e
        finally:
            quiet.setLevel(level)
    import onnx

    proto = prog.model_proto
    axes = {0: "batch", 1: "height", 2: "width"} if task.outputs.dynamic_size else {0: "batch"}
    for value in (*proto.graph.input, *proto.graph.output):
        shape = value.type.tensor_type.shape.dim
        for axis, label in axes.items():
            if axis < len(shape) and not shape[axis].HasField("dim_value"):
                shape[axis].dim_param = label
    del proto.metadata_props[:]
    for k, v in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + k, json.dumps(v)
    proto.producer_name = "pocketvision"
    # A palettised bundle (few distinct values per weight) ships as packed indices + look-up tables;
    # a float one has no such weights and is left as it is.
    from .onnx_palette import palettize_onnx
    palettize_onnx(proto)
    onnx.checker.check_model(proto)
    # Before anything is written: every op must have an onnxruntime (native and web) kernel.
    from .compat import check_onnx, raise_if_incompatible
    raise_if_incompatible(check_onnx(proto))
    # The exporter annotates every node with its torch stack trace and fx node (used above to name a layer in an
    # error); shipped, that is 270 KB of a 369 KB stylizer and ~10% of a classifier, for no runtime use.
    for node in proto.graph.node:
        del node.metadata_props[:]
    out.write_bytes(proto.SerializeToString())
    return out


@register_target
class OnnxTarget(Target):
    name = "onnx"
    timed = True
    runtime = "onnxruntime"
    suffix = ".onnx"
    precisions = ("fp32", "int8")
    description = "uint8 NHWC in, the task's outputs out, metadata in metadata_props (onnxruntime)"
    teachable = True

    def export(self, job: ExportJob) -> None:
        def graph(model: nn.Module, out: Path) -> Path:
            return export_onnx(model, job.contract, job.task, job.meta, out, job.opset, job.teachable)
        if job.precision == "int8":
            quantize_onnx(job, graph)
            return
        graph(job.model, job.out)

    def open(self, path: str | Path, threads: int | None = None, accelerator: str | None = None):
        return OnnxPredictor(path, threads, accelerator)

    def accelerators(self) -> tuple[str, ...]:
        return accelerators()
