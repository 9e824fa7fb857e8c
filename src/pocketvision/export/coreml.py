"""Bundle -> Core ML ``.mlpackage`` (ML program) via coremltools (extra ``[coreml]``).

The input is an image (``image``, RGB, the contract's size) whose pixels Core ML scales itself with the
bundle's scale/bias, so an app hands over a camera pixel buffer (Vision resizes it; the contract's
resize mode is in the metadata). Outputs come from ``ClassifierConfig``: ``classLabel`` and
``classLabel_probs``. Labels, contract and threshold are also in the user-defined metadata
(``pocketvision.<key>``, JSON). A palettised bundle is stored palettised (``constexpr_lut_to_dense``
ops, Core ML's native look-up tables); int8 is weight-only linear quantisation.

Core ML runs only on Apple platforms: elsewhere ``inspect`` checks the package structurally and the
result is reported as "not verified numerically on this platform". Reload on macOS with
``coremltools.models.MLModel(path)``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..contract import Contract
from ..errors import PocketVisionError
from ..quiet import quiet
from ..runtime.onnx_predictor import META_PREFIX

INSTALL = "pip install 'pocketvision[coreml]'"


def _ct():
    try:
        with quiet():
            import coremltools as ct
    except ImportError:
        raise PocketVisionError(f"the coreml target needs coremltools: {INSTALL}") from None
    return ct


class _Normalised(nn.Module):
    """Per-channel normalisation Core ML's single ``scale`` cannot express, done in the graph."""

    def __init__(self, model: nn.Module, contract: Contract, scale: float, bias: list[float]):
        super().__init__()
        self.model = model
        mean = torch.tensor(contract.mean).view(1, 3, 1, 1)
        std = torch.tensor(contract.std).view(1, 3, 1, 1)
        # Core ML gives x*scale + bias; we need (x - mean) / std.
        b = torch.tensor(bias).view(1, 3, 1, 1)
        self.register_buffer("a", 1.0 / (std * scale))
        self.register_buffer("c", -mean / std - b / (std * scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.a + self.c)


def export_coreml(model: nn.Module, contract: Contract, metadata: dict[str, Any], out: str | Path,
                  precision: str = "fp32", palettised_bits: int | None = None) -> Path:
    ct = _ct()
    from .onnx import fold_batchnorm
    out = Path(out)
    h, w = contract.size
    net = fold_batchnorm(model.eval())
    if len(set(contract.std)) == 1:
        scale, bias = 1.0 / contract.std[0], [-m / contract.std[0] for m in contract.mean]
    else:
        scale, bias = 1.0 / 255.0, [0.0, 0.0, 0.0]
        net = _Normalised(net, contract, scale, bias)
    try:
        with quiet():
            traced = torch.jit.trace(net.eval(), torch.rand(1, 3, h, w))
            keypoints = metadata.get("task") == "keypoints"
            ml = ct.convert(traced, inputs=[ct.ImageType(name="image", shape=(1, 3, h, w), scale=scale, bias=bias,
                                                         color_layout=ct.colorlayout.RGB)],
                            # keypoints: one tensor (1, K, 3) = x, y, score in input pixels
                            outputs=[ct.TensorType(name="keypoints")] if keypoints else None,
                            classifier_config=None if keypoints else ct.ClassifierConfig(list(metadata["labels"])),
                            convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                            compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)
            from coremltools.optimize.coreml import (OpLinearQuantizerConfig, OpPalettizerConfig,
                                                     OptimizationConfig, linear_quantize_weights,
                                                     palettize_weights)
            if palettised_bits:
                # The weights already hold <= 2^bits distinct values: store them as Core ML look-up tables.
                ml = palettize_weights(ml, OptimizationConfig(global_config=OpPalettizerConfig(
                    mode="unique", weight_threshold=1024)))
            elif precision == "int8":
                ml = linear_quantize_weights(ml, OptimizationConfig(global_config=OpLinearQuantizerConfig(
                    mode="linear_symmetric", weight_threshold=1024)))
    except PocketVisionError:
        raise
    except Exception as e:  # noqa: BLE001 - converter errors are long; the first line names the op
        raise PocketVisionError(f"coreml export failed: {str(e).strip().splitlines()[0][:300]}") from e
    ml.author = "pocketvision"
    what = "keypoints" if metadata.get("task") == "keypoints" else "classifier"
    ml.short_description = f"pocketvision {what}: {', '.join(metadata['labels'])}"
    for k, v in {**metadata, "precision": precision}.items():
        ml.user_defined_metadata[META_PREFIX + k] = json.dumps(v)
    # An .mlpackage is a folder: build it beside the target, then swap it in.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        staged = tmp / out.name
        with quiet():
            ml.save(str(staged))
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        staged.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def inspect(path: str | Path, labels: list[str] | None = None) -> dict[str, Any]:
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
        and [inp.type.imageType.height, inp.type.imageType.width] == list(contract.get("size", [])),
        "outputs": ({o.name for o in desc.output} == {"keypoints"} if meta.get("task") == "keypoints"
                    else {o.name for o in desc.output} >= {"classLabel", "classLabel_probs"}),
        "labels_metadata": meta.get("labels") == labels if labels is not None else "labels" in meta,
        "contract_metadata": bool(contract),
        "palettised_weights": ops.get("constexpr_lut_to_dense", 0),
    }
    ok = all(v for k, v in checks.items() if k != "palettised_weights")
    numeric = sys.platform == "darwin"
    return {"passed": ok, "numeric": numeric, "checks": checks, "ops": ops,
            "reason": ("structure verified; " if ok else "structure check failed; ")
            + ("run numerically with coremltools on macOS" if numeric else "not verified numerically on this platform")}
