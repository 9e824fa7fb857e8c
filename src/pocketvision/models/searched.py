"""Networks described block by block (what `pocketvision search` evolves), and AlexNet as the classic baseline.

``searched`` takes its whole architecture as arguments, so a bundle stores and rebuilds any searched network from
its spec like any other model:

    {"name": "searched", "args": {"stem": 16, "stem_act": "relu", "head": 0, "dropout": 0.1, "num_classes": 2,
     "blocks": [{"op": "mbconv", "out": 24, "k": 5, "stride": 2, "expand": 4, "act": "hswish", "se": true,
                 "skip": true, "bn": "post"}, ...]}}

A block's ``op``: ``mbconv`` (1x1 expand -> kxk depthwise -> [squeeze-excite] -> 1x1 linear project, MobileNetV2),
``sep`` (kxk depthwise -> 1x1 pointwise, DeepDog/MobileNetV1) or ``conv`` (a plain kxk conv). ``bn``: ``post``
(conv -> BN -> activation, the usual order), ``pre`` (conv -> activation -> BN: the order the Not Hotdog team found
to matter for their ELU network) or ``none``. ``skip`` adds the input when the shapes allow it (stride 1, same
width). Every field is checked at the entry with one message naming the block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import PocketVisionError, unknown_choice
from ._base import ACTIVATIONS, ClassifierNet, check_range, make_act
from .registry import model_entry, register_model

OPS = ("mbconv", "sep", "conv")
BN_PLACES = ("post", "pre", "none")
KERNELS = (3, 5, 7)
BLOCK_FIELDS = {"op": "mbconv", "out": 16, "k": 3, "stride": 1, "expand": 1, "act": "relu", "se": False,
                "skip": True, "bn": "post"}


# The default network: MobileNetV2's stage pattern at a phone-camera budget (5 stride-2 stages, SE late).
DEFAULT_BLOCKS = [
    {"op": "mbconv", "out": 16, "k": 3, "stride": 2, "expand": 1, "act": "relu6"},
    {"op": "mbconv", "out": 24, "k": 3, "stride": 2, "expand": 4, "act": "relu6"},
    {"op": "mbconv", "out": 24, "k": 3, "stride": 1, "expand": 4, "act": "relu6"},
    {"op": "mbconv", "out": 40, "k": 5, "stride": 2, "expand": 4, "act": "hswish", "se": True},
    {"op": "mbconv", "out": 80, "k": 3, "stride": 2, "expand": 4, "act": "hswish"},
    {"op": "mbconv", "out": 96, "k": 3, "stride": 1, "expand": 4, "act": "hswish", "se": True},
]


def _unit(cin: int, cout: int, k: int, stride: int, groups: int, act: str | None, bn: str) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["conv"] = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bn == "none")
    if bn == "post":
        layers["bn"] = nn.BatchNorm2d(cout)
    if act is not None:
        layers["act"] = make_act(act)
    if bn == "pre":
        layers["bn"] = nn.BatchNorm2d(cout)
    return nn.Sequential(layers)


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al.): pooled features -> 1x1 reduce -> ReLU -> 1x1 expand -> hard sigmoid -> scale."""

    def __init__(self, ch: int, ratio: float = 0.25) -> None:
        super().__init__()
        mid = max(8, int(ch * ratio))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(ch, mid, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(mid, ch, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class Block(nn.Module):
    def __init__(self, cin: int, b: dict[str, Any]) -> None:
        super().__init__()
        cout, k, s, act, bn = b["out"], b["k"], b["stride"], b["act"], b["bn"]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if b["op"] == "conv":
            layers["conv"] = _unit(cin, cout, k, s, 1, act, bn)
            mid = cout
        elif b["op"] == "sep":
            layers["dw"] = _unit(cin, cin, k, s, cin, act, bn)
            mid = cin
        else:
            mid = cin * b["expand"]
            if b["expand"] != 1:
                layers["expand"] = _unit(cin, mid, 1, 1, 1, act, bn)
            layers["dw"] = _unit(mid, mid, k, s, mid, act, bn)
        if b["se"]:
            layers["se"] = SqueezeExcite(mid)
        if b["op"] == "sep":
            layers["pw"] = _unit(cin, cout, 1, 1, 1, act, bn)
        elif b["op"] == "mbconv":
            layers["project"] = _unit(mid, cout, 1, 1, 1, None, bn)  # linear bottleneck
        self.body = nn.Sequential(layers)
        self.use_res = bool(b["skip"]) and s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.use_res else self.body(x)


def check_blocks(blocks: Any) -> list[dict[str, Any]]:
    """The blocks with defaults filled, or a one-line error naming the block and field."""
    if not isinstance(blocks, list) or not blocks:
        raise PocketVisionError("searched: 'blocks' must be a non-empty list of block specs.")
    if len(blocks) > 40:
        raise PocketVisionError(f"searched: {len(blocks)} blocks; at most 40.")
    out = []
    for i, b in enumerate(blocks):
        if not isinstance(b, dict):
            raise PocketVisionError(f"searched: block {i} must be a mapping, got {b!r}.")
        extra = sorted(set(b) - set(BLOCK_FIELDS))
        if extra:
            raise PocketVisionError(f"searched: block {i} has unknown field(s) {extra}; fields: "
                                    f"{', '.join(BLOCK_FIELDS)}.")
        b = {**BLOCK_FIELDS, **b}
        where = f"searched block {i}"
        if b["op"] not in OPS:
            raise unknown_choice(f"{where} op", str(b["op"]), OPS)
        if b["act"] not in ACTIVATIONS:
            raise unknown_choice(f"{where} act", str(b["act"]), ACTIVATIONS)
        if b["bn"] not in BN_PLACES:
            raise unknown_choice(f"{where} bn", str(b["bn"]), BN_PLACES)
        for f, choices in (("k", KERNELS), ("stride", (1, 2))):
            if b[f] not in choices or isinstance(b[f], bool):
                raise PocketVisionError(f"{where}: '{f}' must be one of {list(choices)}; got {b[f]!r}.")
        for f, lo, hi in (("out", 4, 2048), ("expand", 1, 8)):
            if not isinstance(b[f], int) or isinstance(b[f], bool):
                raise PocketVisionError(f"{where}: '{f}' must be an integer; got {b[f]!r}.")
            check_range(where, f, b[f], lo, hi)
        for f in ("se", "skip"):
            if not isinstance(b[f], bool):
                raise PocketVisionError(f"{where}: '{f}' must be true or false; got {b[f]!r}.")
        out.append(b)
    return out


class SearchedNet(ClassifierNet):
    def __init__(self, blocks: list[dict[str, Any]], stem: int, stem_act: str, head: int, num_classes: int,
                 dropout: float) -> None:
        layers: list[nn.Module] = [_unit(3, stem, 3, 2, 1, stem_act, "post")]
        cin = stem
        for b in blocks:
            layers.append(Block(cin, b))
            cin = b["out"]
        if head:  # a 1x1 conv before pooling widens the features the classifier sees (MobileNetV2's 1280)
            layers.append(_unit(cin, head, 1, 1, 1, stem_act, "post"))
            cin = head
        super().__init__(nn.Sequential(*layers), cin, num_classes, dropout)


def load_searched(path: str) -> tuple[dict[str, Any], int | None]:
    """``--arch searched:FILE``: (the network's arguments, its input side or None) from the JSON `pocketvision search`
    wrote for a candidate (``{"arch": {"name": "searched", "args": ...}, "resolution": ...}``) or a bare args map."""
    import json
    from pathlib import Path
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise PocketVisionError(f"{path}: not a readable architecture JSON ({e}); give the file `pocketvision "
                                "search` wrote (arch.json, or a candidate of history.json).") from None
    arch = doc.get("arch", doc) if isinstance(doc, dict) else None
    args = arch.get("args", arch) if isinstance(arch, dict) and arch.get("name", "searched") == "searched" else None
    if not isinstance(args, dict) or "blocks" not in args:
        raise PocketVisionError(f"{path}: no searched architecture in it (expected {{\"arch\": {{\"name\": "
                                "\"searched\", \"args\": {\"blocks\": [...]}}}}).")
    res = doc.get("resolution") if isinstance(doc.get("resolution"), int) else None
    return {k: v for k, v in args.items() if k != "num_classes"}, res


# Hand-designed networks whose layers are exactly some searched blocks register a converter here (model name ->
# fn(args) -> searched args), so that `pocketvision search --start BUNDLE` can begin from the user's own network.
_CONVERTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def expressible(name: str) -> Callable:
    """Decorator: ``fn(args) -> searched args`` for the registered model ``name`` (raise PocketVisionError for
    arguments that have no searched equivalent)."""
    def deco(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        _CONVERTERS[name] = fn
        return fn
    return deco


def as_searched(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``searched`` arguments (without num_classes) that build the same layers as the model ``spec``."""
    name = spec.get("name")
    if name not in _CONVERTERS:
        raise PocketVisionError(f"a {name} network has no equivalent in the search space; a search can start from "
                                f"{', '.join(sorted(_CONVERTERS))} networks or an architecture JSON.")
    args = {**model_entry(name).default_args, **spec.get("args", {})}
    out = _CONVERTERS[name](args)
    check_blocks(out["blocks"])
    return out


@expressible("searched")
def _searched_as_searched(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if k != "num_classes"}


def total_stride(blocks: list[dict[str, Any]]) -> int:
    return 2 * 2 ** sum(1 for b in blocks if b.get("stride", 1) == 2)


@register_model("searched", min_size=16,
                default_contract=dict(size=(96, 96), resize="squash", mean=(127.5,) * 3, std=(127.5,) * 3))
def searched(*, num_classes: int = 2, blocks: list | None = None, stem: int = 16, stem_act: str = "relu",
             head: int = 0, dropout: float = 0.1) -> SearchedNet:
    """A network given block by block (`pocketvision search` writes these; `train --arch searched:FILE`); without
    ``blocks``, a small MobileNetV2-like start."""
    blocks = check_blocks(DEFAULT_BLOCKS if blocks is None else blocks)
    check_range("searched", "stem", stem, 4, 256)
    check_range("searched", "head", head, 0, 4096)
    check_range("searched", "dropout", dropout, 0.0, 1.0, hi_open=True)
    if stem_act not in ACTIVATIONS:
        raise unknown_choice("stem_act", stem_act, ACTIVATIONS)
    return SearchedNet(blocks, stem, stem_act, head, num_classes, dropout)


class AlexNet(ClassifierNet):
    """Krizhevsky et al. 2012: five convs (11x11/4, 5x5, 3x3 x3), ReLU, local response normalisation after the first
    two, overlapping 3x3/2 max-pooling, then two dropout + fully connected layers. One change: the last feature
    map is global-average pooled rather than flattened at 6x6, so any input size works and fc6 has 256 x 4096
    weights instead of 9216 x 4096."""

    def __init__(self, num_classes: int, width: float, fc: int, dropout: float, lrn: bool) -> None:
        c = [max(8, round(v * width)) for v in (64, 192, 384, 256, 256)]

        def norm() -> list[nn.Module]:
            return [nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)] if lrn else []
        features = nn.Sequential(
            nn.Conv2d(3, c[0], 11, 4, 2), nn.ReLU(inplace=True), *norm(), nn.MaxPool2d(3, 2),
            nn.Conv2d(c[0], c[1], 5, 1, 2), nn.ReLU(inplace=True), *norm(), nn.MaxPool2d(3, 2),
            nn.Conv2d(c[1], c[2], 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(c[2], c[3], 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(c[3], c[4], 3, 1, 1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self._fc, self._fc_dropout = fc, dropout
        super().__init__(features, c[4], num_classes, dropout)

    def reset_classifier(self, num_classes: int) -> None:
        super().reset_classifier(num_classes)
        if num_classes:  # fc6 -> fc7 -> fc8, each with AlexNet's dropout before it (head_drop is the first)
            self.classifier = nn.Sequential(
                nn.Linear(self.num_features, self._fc), nn.ReLU(inplace=True), nn.Dropout(self._fc_dropout),
                nn.Linear(self._fc, self._fc), nn.ReLU(inplace=True), nn.Linear(self._fc, num_classes))
            nn.init.normal_(self.classifier[-1].weight, 0.0, 0.01)


@register_model("alexnet", min_size=63,
                default_contract=dict(size=(224, 224), resize="squash", mean=(123.675, 116.28, 103.53),
                                      std=(58.395, 57.12, 57.375)))
def alexnet(*, num_classes: int = 2, width: float = 1.0, fc: int = 4096, dropout: float = 0.5,
            lrn: bool = True) -> AlexNet:
    """AlexNet (2012), the reference baseline: ReLU, LRN, overlapping max-pooling, dropout; ``width`` scales the
    convolutions, ``fc`` the two hidden fully connected layers."""
    check_range("alexnet", "width", width, 0.125, 4.0)
    check_range("alexnet", "fc", fc, 16, 8192)
    check_range("alexnet", "dropout", dropout, 0.0, 1.0, hi_open=True)
    return AlexNet(num_classes, width, fc, dropout, lrn)
