"""DeepDog: the published Not Hotdog network (a MobileNetV1-style depthwise-separable stack, ELU).

stem conv 3x3/32 s2 + BN + ELU, then 13 separable convs (3x3 depthwise -> 1x1 pointwise + BN + ELU)
with pointwise widths 32, 64, 128, 128, 256, 256, 512 x6, 1024 and stride 2 at the 2nd, 4th, 6th and
12th; global average pooling; dense. Total stride 32.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import nn

from ._base import ACTIVATIONS, ClassifierNet, ConvBnAct, check_range, make_divisible
from .registry import register_model
from .searched import expressible
from ..errors import PocketVisionError, unknown_choice

DEEPDOG_WIDTHS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024)
SEPARABLE_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)  # shared with MobileNetV1


class SeparableConv(nn.Sequential):
    """3x3 depthwise -> 1x1 pointwise + BN + act.

    Keras ``SeparableConv2D`` (what DeepDog used) has nothing between the two convs; ``dw_bn=True``
    adds BN + act there (as MobileNetV1 does). The depthwise conv is bias-free in both cases: without
    BN its bias would pass linearly through the pointwise conv into the BN shift, so it is redundant.
    """

    def __init__(self, cin: int, cout: int, stride: int, act: str, dw_bn: bool) -> None:
        dw = (ConvBnAct(cin, cin, 3, stride, groups=cin, act=act) if dw_bn
              else nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False))
        super().__init__(OrderedDict(dw=dw, pw=ConvBnAct(cin, cout, 1, act=act)))


class SeparableNet(ClassifierNet):
    """Stem + a stack of separable convs: DeepDog and MobileNetV1 differ only in widths/act/dw_bn."""

    def __init__(self, widths: Sequence[int], strides: Sequence[int], *, stem: int = 32, alpha: float = 1.0,
                 act: str = "elu", dw_bn: bool = False, num_classes: int = 1000, dropout: float = 0.0,
                 channels: Sequence[int] | None = None) -> None:
        # ``channels`` (stem + one per separable conv) overrides the alpha-scaled widths: what structured
        # pruning writes into the bundle's spec so the smaller net rebuilds from its name and arguments.
        w = list(channels) if channels else [make_divisible(c * alpha, 8) for c in (stem, *widths)]
        if len(w) != len(widths) + 1 or min(w) < 1:
            raise PocketVisionError(f"channels must list {len(widths) + 1} positive widths (stem + "
                                    f"{len(widths)} separable convs); got {list(w)}.")
        layers = [ConvBnAct(3, w[0], 3, 2, act=act)]
        layers += [SeparableConv(cin, cout, s, act, dw_bn) for cin, cout, s in zip(w[:-1], w[1:], strides)]
        super().__init__(nn.Sequential(*layers), w[-1], num_classes, dropout)


def validate_common(model: str, *, alpha: float, act: str, dropout: float) -> None:
    check_range(model, "alpha", alpha, 0.05, 4.0)
    check_range(model, "dropout", dropout, 0.0, 1.0, hi_open=True)
    if act not in ACTIVATIONS:
        raise unknown_choice("act", act, ACTIVATIONS)


@register_model("deepdog", min_size=32,
                # Keras-style -1..1 inputs, squashed (no crop): the original app fed whole camera frames.
                default_contract=dict(size=(224, 224), resize="squash", mean=(127.5,) * 3, std=(127.5,) * 3))
def deepdog(*, num_classes: int = 2, alpha: float = 1.0, act: str = "elu", dw_bn: bool = False,
            dropout: float = 0.0, channels: list[int] | None = None) -> SeparableNet:
    """Not Hotdog's DeepDog: 13 depthwise-separable convs, ELU, width multiplier ``alpha``.

    ``act``: ELU is the published choice but dominates exported latency (ReLU runs ~3x faster on
    onnxruntime at the same accuracy class), hence "relu"/"relu6" are offered.
    """
    validate_common("deepdog", alpha=alpha, act=act, dropout=dropout)
    return SeparableNet(DEEPDOG_WIDTHS, SEPARABLE_STRIDES, alpha=alpha, act=act, dw_bn=dw_bn,
                        num_classes=num_classes, dropout=dropout, channels=channels)


@expressible("deepdog")
def deepdog_as_searched(args: dict[str, Any]) -> dict[str, Any]:
    """DeepDog as searched ``sep`` blocks: with dw_bn the layers are the same (conv -> BN -> act after the depthwise
    and the pointwise conv, no skips), so a search can start from it. Without dw_bn (Keras SeparableConv2D: nothing
    between the two convs) there is no searched equivalent."""
    if not args["dw_bn"]:
        raise PocketVisionError("deepdog without dw_bn (nothing between the depthwise and pointwise convs) has no "
                                "equivalent in the search space; start from a dw_bn=true model (the recipe's).")
    return separable_as_searched(DEEPDOG_WIDTHS, args["alpha"], args["act"], args["dropout"], args["channels"])


def separable_as_searched(widths: Sequence[int], alpha: float, act: str, dropout: float,
                          channels: Sequence[int] | None) -> dict[str, Any]:
    w = list(channels) if channels else [make_divisible(c * alpha, 8) for c in (32, *widths)]
    blocks = [{"op": "sep", "out": cout, "k": 3, "stride": s, "expand": 1, "act": act, "se": False, "skip": False,
               "bn": "post"} for cout, s in zip(w[1:], SEPARABLE_STRIDES)]
    return {"stem": w[0], "stem_act": act, "head": 0, "dropout": dropout, "blocks": blocks}
