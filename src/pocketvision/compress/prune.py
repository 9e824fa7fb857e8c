"""Structured channel pruning that makes the model faster, not just sparser.

Whole output channels of the stem and of every pointwise conv are removed by importance (L1 norm of
the channel's filter times its BatchNorm scale |gamma| / sqrt(var + eps): what the channel contributes
after normalisation); the depthwise conv that follows loses the same channels, and the classifier the
matching inputs. A smaller network is *rebuilt* (the spec's ``channels`` argument), so every runtime
runs fewer MACs; a short fine-tune then recovers the accuracy.

Supported: the separable-conv family (``deepdog``, ``mobilenet_v1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import PocketVisionError

PRUNABLE = ("deepdog", "mobilenet_v1")


@dataclass
class PruneReport:
    ratio: float
    channels_before: list[int]
    channels_after: list[int]
    params_before: int
    params_after: int


def _importance(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    scale = bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight.detach().abs().flatten(1).sum(1) * scale.detach()


def _take_bn(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, keep: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).data.copy_(getattr(src, name).data[keep])


@torch.no_grad()
def prune_separable(model: nn.Module, spec: dict, ratio: float, multiple: int = 8) -> tuple[nn.Module, dict, PruneReport]:
    """-> (pruned model with copied weights, its spec, report). ``ratio``: share of channels removed
    from each layer (rounded to ``multiple`` channels: SIMD-friendly widths)."""
    from ..models import build_model

    if spec.get("name") not in PRUNABLE:
        raise PocketVisionError(f"structured pruning supports {', '.join(PRUNABLE)}; this bundle is "
                                f"{spec.get('name')!r}. Use --bits or --int8 to compress it instead.")
    if not 0.0 < ratio < 0.95:
        raise PocketVisionError(f"prune ratio must be in (0, 0.95); got {ratio}.")
    feats = model.features
    stem, blocks = feats[0], list(feats)[1:]
    convs = [(stem.conv, stem.bn)] + [(b.pw.conv, b.pw.bn) for b in blocks]
    before = [c.out_channels for c, _ in convs]
    keeps = []
    for conv, bn in convs:
        n = conv.out_channels
        k = max(multiple, int(round(n * (1 - ratio) / multiple)) * multiple) if n > multiple else n
        keeps.append(torch.sort(torch.topk(_importance(conv, bn), min(k, n)).indices).values)
    after = [len(k) for k in keeps]
    new_spec = {"name": spec["name"], "args": {**spec.get("args", {}), "channels": after}}
    new = build_model(new_spec).eval()
    nstem, nblocks = new.features[0], list(new.features)[1:]
    nstem.conv.weight.copy_(stem.conv.weight[keeps[0]])
    _take_bn(nstem.bn, stem.bn, keeps[0])
    for i, (b, nb) in enumerate(zip(blocks, nblocks)):
        kin, kout = keeps[i], keeps[i + 1]
        if isinstance(b.dw, nn.Conv2d):
            nb.dw.weight.copy_(b.dw.weight[kin])
        else:  # dw_bn: ConvBnAct
            nb.dw.conv.weight.copy_(b.dw.conv.weight[kin])
            _take_bn(nb.dw.bn, b.dw.bn, kin)
        nb.pw.conv.weight.copy_(b.pw.conv.weight[kout][:, kin])
        _take_bn(nb.pw.bn, b.pw.bn, kout)
    new.classifier.weight.copy_(model.classifier.weight[:, keeps[-1]])
    new.classifier.bias.copy_(model.classifier.bias)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return new, new_spec, PruneReport(ratio, before, after, count(model), count(new))
