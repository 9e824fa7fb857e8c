"""Bundle -> Core ML ``.mlpackage`` (ML program) via coremltools (extra ``[coreml]``).

The input is an image (``image``, RGB, the contract's size) whose pixels Core ML scales itself with the
bundle's scale/bias, so an app hands over a camera pixel buffer (Vision resizes it; the contract's
resize mode is in the metadata; a fully convolutional model takes a range of sizes). Outputs are the task's
Core ML type (``OutputSpec.coreml``): ``ClassifierConfig`` (``classLabel`` and ``classLabel_probs``), a
MultiArray (keypoints) or an image (a stylised picture, RGB). Labels, contract and threshold are also in the
user-defined metadata
(``pocketvision.<key>``, JSON). A palettised bundle is stored palettised (``constexpr_lut_to_dense``
ops, Core ML's native look-up tables; a channel-scaled palette as its table times a per-channel ``mul``,
which iOS 16 runs — coremltools' own ``enable_per_channel_scale`` needs iOS 18 and takes the largest
magnitude along one axis only); int8 is weight-only linear quantisation.

Core ML runs only on Apple platforms: elsewhere ``inspect`` checks the package structurally and the
result is reported as "not verified numerically on this platform". Reload on macOS with
``coremltools.models.MLModel(path)``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..compress.palette_codec import encode
from ..core.quiet import quiet
from ..errors import PocketVisionError
from .base import META_PREFIX, ExportJob, Target, register_target

INSTALL = "pip install 'pocketvision[coreml]'"
# A fully convolutional model (``OutputSpec.dynamic_size``) takes any image side in this range.
FLEXIBLE_SIDES = (64, 2048)


def _ct():
    try:
        with quiet():
            import coremltools as ct
    except ImportError:
        raise PocketVisionError(f"the coreml target needs coremltools: {INSTALL}") from None
    return ct


def _traced_net(job: ExportJob, scale: float, bias: list[float]):
    """The model after Core ML's own pixel scaling: any normalisation its single ``scale`` cannot express
    is done in the graph, then the task's Core ML head."""
    import torch
    from torch import nn

    from .graph import fold_batchnorm
    contract, head = job.contract, job.task.coreml_head

    class Net(nn.Module):
        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model
            mean = torch.tensor(contract.mean).view(1, 3, 1, 1)
            std = torch.tensor(contract.std).view(1, 3, 1, 1)
            # Core ML gives x*scale + bias; the model wants (x - mean) / std.
            b = torch.tensor(bias).view(1, 3, 1, 1)
            self.register_buffer("a", 1.0 / (std * scale))
            self.register_buffer("c", -mean / std - b / (std * scale))
            self.identity = len(set(contract.std)) == 1

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return head(self.model(x if self.identity else x * self.a + self.c))
    return Net(fold_batchnorm(job.model.eval())).eval()


def export_coreml(job: ExportJob) -> Path:
    ct = _ct()
    import torch
    contract, spec = job.contract, job.task.outputs
    h, w = contract.size
    if len(set(contract.std)) == 1:
        scale, bias = 1.0 / contract.std[0], [-m / contract.std[0] for m in contract.mean]
    else:
        scale, bias = 1.0 / 255.0, [0.0, 0.0, 0.0]
    net = _traced_net(job, scale, bias)
    labels = list(job.meta["labels"])
    shape: Any = (1, 3, h, w)
    if spec.dynamic_size:
        lo, hi = FLEXIBLE_SIDES
        shape = ct.Shape(shape=(1, 3, ct.RangeDim(lo, hi, default=h), ct.RangeDim(lo, hi, default=w)))
    name = spec.names[0]
    outputs = {"classifier": None, "tensor": [ct.TensorType(name=name)],
               "image": [ct.ImageType(name=name, color_layout=ct.colorlayout.RGB)]}[spec.coreml]
    try:
        with quiet():
            traced = torch.jit.trace(net, torch.rand(1, 3, h, w) * 255)
            ml = ct.convert(traced, inputs=[ct.ImageType(name="image", shape=shape, scale=scale, bias=bias,
                                                         color_layout=ct.colorlayout.RGB)],
                            outputs=outputs,
                            classifier_config=ct.ClassifierConfig(labels) if spec.coreml == "classifier" else None,
                            convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                            compute_precision=ct.precision.FLOAT16 if job.precision == "fp16" else ct.precision.FLOAT32)
            from coremltools.optimize.coreml import (OpLinearQuantizerConfig, OpPalettizerConfig, OptimizationConfig,
                                                     linear_quantize_weights)
            if job.palettised_bits:
                # The weights already hold <= 2^bits distinct values (per channel after its scale): store them
                # as Core ML look-up tables, in one rewrite so the scales are not folded back into dense weights.
                from coremltools.models.utils import _apply_graph_pass
                from coremltools.optimize.coreml._quantization_passes import palettize_weights as palettizer
                ml = _apply_graph_pass(ml, [_channel_scales_pass(), palettizer(config=OptimizationConfig(
                    global_config=OpPalettizerConfig(mode="unique", weight_threshold=1024)))])
            elif job.precision == "int8":
                ml = linear_quantize_weights(ml, OptimizationConfig(global_config=OpLinearQuantizerConfig(
                    mode="linear_symmetric", weight_threshold=1024)))
    except PocketVisionError:
        raise
    except Exception as e:  # noqa: BLE001 - converter errors are long; the first line names the op
        raise PocketVisionError(f"coreml export failed: {str(e).strip().splitlines()[0][:300]}") from e
    ml.author = "pocketvision"
    ml.short_description = f"pocketvision {job.task.name}: {', '.join(labels)}"
    for k, v in {**job.meta, "precision": job.precision}.items():
        ml.user_defined_metadata[META_PREFIX + k] = json.dumps(v)
    # coremltools names a package by its suffix; the staging path keeps the user's name, whatever it is
    saved = job.tmp / "model.mlpackage"
    with quiet():
        ml.save(str(saved))
    saved.rename(job.out)
    return job.out


def _channel_scales_pass():
    """A MIL pass that rewrites each channel-scaled palette weight ``W`` as ``mul(U, scale)``, where ``U`` holds only
    the shared table's values (which the palettiser then stores as a look-up table)."""
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass


    class ChannelScales(AbstractGraphPass):
        def apply(self, prog):
            for f in prog.functions.values():
                for op in list(f.operations):
                    val = op.val.val if op.op_type == "const" else None
                    if not isinstance(val, np.ndarray) or val.dtype != np.float32 or val.size < 1024:
                        continue
                    pal = encode(val)
                    if pal is None or pal.scale is None:
                        continue
                    with f:
                        unit = mb.const(val=pal.lut[pal.idx].reshape(val.shape), before_op=op, name=op.name + "_unit")
                        w = mb.mul(x=unit, y=pal.scale.reshape((-1,) + (1,) * (val.ndim - 1)), before_op=op,
                                   name=op.name + "_scaled")
                    op.enclosing_block.replace_uses_of_var_after_op(anchor_op=op, old_var=op.outputs[0], new_var=w)
                    f.remove_ops([op])
    return ChannelScales()


@register_target
class CoreMLTarget(Target):
    name = "coreml"
    runtime = "Core ML (Apple devices)"
    suffix = ".mlpackage"
    precisions = ("fp32", "fp16", "int8")
    install = INSTALL
    converters = ("coremltools",)
    description = "ML program with an image input (extra [coreml]); runs on Apple platforms only"

    def export(self, job: ExportJob) -> None:
        export_coreml(job)

    def open(self, path: str | Path, threads: int | None = None, accelerator: str | None = None):
        raise PocketVisionError(f"{path}: Core ML models run only on Apple platforms (coremltools on macOS); "
                                "here they are checked structurally by `pocketvision export`.")

    def inspect(self, path: str | Path, meta: dict[str, Any], task) -> dict[str, Any] | None:
        rep = inspect(path, meta.get("labels"), task.outputs)
        return {"n": 0, "passed": rep["passed"], "numeric": rep["numeric"], "structure": rep["checks"],
                "criterion": rep["reason"]}


def inspect(path: str | Path, labels: list[str] | None, outputs) -> dict[str, Any]:
    """Structural check of an .mlpackage (works on Linux): spec, input/outputs, metadata, palettes.

    -> {"passed": structure ok, "numeric": False off macOS, "checks": {...}, "reason": ...}
    """
    ct = _ct()
    path = Path(path)
    with quiet():
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    desc = spec.description
    meta = {k[len(META_PREFIX):]: json.loads(v) for k, v in desc.metadata.userDefined.items()
            if k.startswith(META_PREFIX)}
    ops: dict[str, int] = {}
    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            for op in block.operations:
                ops[op.type] = ops.get(op.type, 0) + 1
    inp = desc.input[0]
    contract = meta.get("contract", {})
    checks = {
        "ml_program": spec.WhichOneof("Type") == "mlProgram",
        "image_input": inp.name == "image" and inp.type.WhichOneof("Type") == "imageType"
        and (outputs.dynamic_size or [inp.type.imageType.height, inp.type.imageType.width]
             == list(contract.get("size", []))),
        "outputs": _outputs_ok({o.name: o.type.WhichOneof("Type") for o in desc.output}, outputs),
        "labels_metadata": meta.get("labels") == labels if labels is not None else "labels" in meta,
        "contract_metadata": bool(contract),
        "palettised_weights": ops.get("constexpr_lut_to_dense", 0),
    }
    ok = all(v for k, v in checks.items() if k != "palettised_weights")
    numeric = sys.platform == "darwin"
    return {"passed": ok, "numeric": numeric, "checks": checks, "ops": ops,
            "reason": ("structure verified; " if ok else "structure check failed; ")
            + ("run numerically with coremltools on macOS" if numeric else "not verified numerically on this platform")}


def _outputs_ok(found: dict[str, str], outputs) -> bool:
    """The package's outputs are what the task's ``OutputSpec`` asked Core ML for."""
    if outputs.coreml == "classifier":
        return {"classLabel", "classLabel_probs"} <= set(found)
    kind = "imageType" if outputs.coreml == "image" else "multiArrayType"
    return found == {outputs.names[0]: kind}
