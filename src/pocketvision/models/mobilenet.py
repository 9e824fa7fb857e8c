"""MobileNetV1 and MobileNetV2, from scratch (no offline weights exist for them here)."""

from __future__ import annotations

from torch import nn

from ._base import ClassifierNet, ConvBnAct, InvertedResidual, check_range, make_divisible
from .deepdog import SEPARABLE_STRIDES, SeparableNet, separable_as_searched, validate_common
from .registry import register_model
from .searched import expressible

# Pixel-unit ImageNet statistics (torchvision's 0-1 values x 255), so mean/std apply to raw uint8.
IMAGENET_CONTRACT = dict(size=(224, 224), resize="squash", mean=(123.675, 116.28, 103.53),
                         std=(58.395, 57.12, 57.375))

MOBILENET_V1_WIDTHS = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


@register_model("mobilenet_v1", min_size=32, default_contract=IMAGENET_CONTRACT)
def mobilenet_v1(*, num_classes: int = 1000, alpha: float = 1.0, dropout: float = 0.0,
                 channels: list[int] | None = None) -> SeparableNet:
    """MobileNetV1 (Howard et al. 2017): 13 separable convs with BN+ReLU after depthwise and pointwise."""
    validate_common("mobilenet_v1", alpha=alpha, act="relu", dropout=dropout)
    return SeparableNet(MOBILENET_V1_WIDTHS, SEPARABLE_STRIDES, alpha=alpha, act="relu", dw_bn=True,
                        num_classes=num_classes, dropout=dropout, channels=channels)


@expressible("mobilenet_v1")
def mobilenet_v1_as_searched(args: dict) -> dict:
    return separable_as_searched(MOBILENET_V1_WIDTHS, args["alpha"], "relu", args["dropout"], args["channels"])


# (expansion t, channels c, repeats n, first stride s) from the MobileNetV2 paper, table 2.
MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(ClassifierNet):
    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 0.2) -> None:
        cin = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))  # the paper never shrinks the last conv
        layers: list[nn.Module] = [ConvBnAct(3, cin, 3, 2, act="relu6")]
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, 3, s if i == 0 else 1, t, act="relu6"))
                cin = cout
        layers.append(ConvBnAct(cin, last, 1, act="relu6"))
        super().__init__(nn.Sequential(*layers), last, num_classes, dropout)


@register_model("mobilenet_v2", min_size=32, default_contract=IMAGENET_CONTRACT)
def mobilenet_v2(*, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> MobileNetV2:
    """MobileNetV2 (Sandler et al. 2018): inverted residuals with linear bottlenecks, ReLU6."""
    check_range("mobilenet_v2", "width_mult", width_mult, 0.05, 4.0)
    check_range("mobilenet_v2", "dropout", dropout, 0.0, 1.0, hi_open=True)
    return MobileNetV2(width_mult, num_classes, dropout)
