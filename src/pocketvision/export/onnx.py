"""Bundle -> one self-contained ``.onnx`` with the preprocessing contract inside the graph.

Input ``image``: uint8 RGB NHWC at the contract's size, dynamic batch. The graph casts, normalises and
transposes; outputs ``probabilities`` and ``logits`` (classify) or ``keypoints`` (N, K, 3: x, y, score in
input pixels). BatchNorm is folded into the convolutions before
capture. Labels, contract and threshold go into ``metadata_props`` so the file alone can be used.
Reload with ``onnxruntime.InferenceSession(path)`` or ``pocketvision predict model.onnx IMAGE``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..bundle import atomic_write_bytes
from ..contract import Contract
from ..errors import PocketVisionError
from ..runtime.onnx_predictor import META_PREFIX

DEFAULT_OPSET = 18


class FastELU(nn.Module):
    """ELU as Max(x, Exp(Min(x, 0)) - 1): four vectorised onnxruntime kernels instead of its scalar Elu.

    Exact for alpha=1 (e^x - 1 > x for x < 0, and 0 < x for x > 0); on DeepDog alpha=0.5 at 224 px,
    one thread, this cuts latency from 4.4 to 2.9 ms. Differences from expm1 are ~1e-7.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, torch.exp(torch.clamp(x, max=0.0)) - 1.0)


def fast_activations(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, nn.ELU) and child.alpha == 1.0:
            setattr(model, name, FastELU())
        else:
            fast_activations(child)
    return model


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Conv+BN -> Conv (eval mode) via torch.fx; models fx cannot trace are exported unfolded
    (onnxruntime folds at load time anyway)."""
    import copy

    from torch.fx.experimental.optimization import fuse

    model = fast_activations(copy.deepcopy(model).eval())
    try:
        return fuse(model)
    except Exception:  # noqa: BLE001 - untraceable user models
        return model


def export_onnx(model: nn.Module, contract: Contract, metadata: dict[str, Any], out: str | Path,
                opset: int = DEFAULT_OPSET) -> Path:
    out = Path(out)
    if opset < 17:
        raise PocketVisionError(f"opset {opset} is too old; use >= 17.")
    from ..tasks import export_wrapper
    wrapper, output_names = export_wrapper(metadata.get("task", "classify"), fold_batchnorm(model.eval()), contract)
    h, w = contract.size
    example = torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8)
    # The exporter chats on stdout, warnings and logging (e.g. "torchvision is not installed"); users
    # get one line from us instead.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            prog = torch.onnx.export(
                wrapper, (example,), dynamo=True, input_names=["image"], output_names=output_names,
                dynamic_shapes={"image": {0: torch.export.Dim.DYNAMIC}}, opset_version=opset,
                external_data=False, optimize=True, verbose=False)
        except Exception as e:  # noqa: BLE001 - surface the first line; the full trace is noise to users
            raise PocketVisionError(f"ONNX export failed: {str(e).strip().splitlines()[0]}") from e
        finally:
            quiet.setLevel(level)
    import onnx

    proto = prog.model_proto
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    dim.dim_param = "batch"
    for o in proto.graph.output:
        o.type.tensor_type.shape.dim[0].dim_param = "batch"
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
    data = proto.SerializeToString()
    return atomic_write_bytes(out, data)
