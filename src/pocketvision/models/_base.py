"""Layers and the one classifier surface every family shares.

Every model is ``features`` (a conv stack -> N,C,H,W) + global average pool + dropout + ``classifier``.
Keeping the backbone and the head in two named children is what makes frozen-backbone transfer
learning, ``reset_classifier`` and Conv+BN folding (``torch.fx``) trivial for all families alike.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import PocketVisionError, unknown_choice

ACTIVATIONS = ("elu", "relu", "relu6", "hswish")


def make_act(name: str) -> nn.Module:
    if name == "elu":
        return nn.ELU(inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    if name == "hswish":  # MobileNetV3's x * relu6(x + 3) / 6: one HardSwish op in ONNX (opset 14)
        return nn.Hardswish(inplace=True)
    raise unknown_choice("act", name, ACTIVATIONS)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a scaled width to a multiple of ``divisor`` (hardware-friendly), never below ``min_value``
    and never more than 10% below ``v`` (the MobileNet/EfficientNet reference rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def check_range(model: str, arg: str, value: float, lo: float, hi: float, *, hi_open: bool = False) -> None:
    """One message template for numeric constraints (sklearn style: the name, the bound, the value)."""
    ok = lo <= value < hi if hi_open else lo <= value <= hi
    if not ok:
        bracket = ")" if hi_open else "]"
        raise PocketVisionError(
            f"The '{arg}' argument of {model} must be in the range [{lo}, {hi}{bracket}. Got {value!r} instead."
        )


class ConvBnAct(nn.Sequential):
    """[pad] -> conv (bias-free: BN's shift makes a bias redundant) -> BN -> [act].

    A plain ``Sequential`` of named children so ``torch.fx.experimental.optimization.fuse`` sees the
    conv -> bn pattern directly. ``tf_pad`` reproduces TensorFlow "SAME" padding for stride-2 convs,
    which is asymmetric (more at the bottom/right) for even input sizes; weights trained in TF expect it.
    """

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                 act: str | None = "relu", *, tf_pad: bool = False, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if tf_pad and stride == 2:
            # TF SAME with stride 2 on an even size n: total pad = k - 2, the extra pixel goes right/bottom.
            # Static, so the graph stays shape-free for fx/ONNX; exact for sizes that stay even (multiples
            # of the total stride, which the registry enforces for such models).
            lo = (k - 2) // 2
            hi = (k - 2) - lo
            layers["pad"] = nn.ZeroPad2d((lo, hi, lo, hi))
            padding = 0
        else:
            padding = k // 2
        layers["conv"] = nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False)
        layers["bn"] = nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum)
        if act is not None:
            layers["act"] = make_act(act)
        super().__init__(layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 / EfficientNet-Lite block: 1x1 expand -> kxk depthwise -> 1x1 linear project (+ skip)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, act: str = "relu6",
                 **conv_kw) -> None:
        super().__init__()
        mid = cin * expand
        # Residual only when shapes match; decided here so forward() has no data-dependent branches.
        self.use_res = stride == 1 and cin == cout
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if expand != 1:
            layers["expand"] = ConvBnAct(cin, mid, 1, act=act, **conv_kw)
        layers["dw"] = ConvBnAct(mid, mid, k, stride, groups=mid, act=act, **conv_kw)
        layers["project"] = ConvBnAct(mid, cout, 1, act=None, **conv_kw)  # linear bottleneck
        self.block = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


class ClassifierNet(nn.Module):
    """The common surface: ``forward_features`` -> (N, num_features), ``forward_head`` -> logits."""

    def __init__(self, features: nn.Module, num_features: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.features = features
        self.num_features = num_features
        self.pool = nn.AdaptiveAvgPool2d(1)  # -> GlobalAveragePool in ONNX, any input size
        self.head_drop = nn.Dropout(dropout)
        self.classifier: nn.Module = nn.Identity()
        self._init_weights()
        self.reset_classifier(num_classes)

    def _init_weights(self) -> None:
        # He init for convs (fan_out, as in the MobileNet references); BN starts as identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """Fresh linear head for ``num_classes`` (0 -> no head: ``forward`` returns pooled features)."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise PocketVisionError(f"num_classes must be an integer >= 0. Got {num_classes!r} instead.")
        self.num_classes = num_classes
        if num_classes == 0:
            self.classifier = nn.Identity()
            return
        self.classifier = nn.Linear(self.num_features, num_classes)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def map_classifier(self, classes: list) -> None:
        """Keep the 1000-way ImageNet head and read each class through the categories it anchors to
        (``models/imagenet_head.py``); the head must be the pretrained one (``num_classes=1000``)."""
        from .imagenet_head import ImageNetClassMap
        if not isinstance(self.classifier, nn.Linear) or self.classifier.out_features != 1000:
            raise PocketVisionError("map_classifier needs the 1000-way ImageNet head in place.")
        self.classifier = ImageNetClassMap(self.classifier, classes)
        self.num_classes = len(classes)

    def attach_familiarity(self, k: int) -> None:
        """Room for a ``Familiarity`` of ``k`` centres (its buffers come with the weights, or from a fit)."""
        from .familiarity import Familiarity
        self.familiarity = Familiarity(k, self.num_features)

    def forward_with_unfamiliar(self, x: torch.Tensor, embedding: bool = False) -> tuple[torch.Tensor, ...]:
        """-> (logits, how unlike the training photos each photo is[, the pooled features]): what an exported
        graph computes (the features with ``embedding``: what a device learns new classes from)."""
        f = self.forward_features(x)
        logits = self.forward_head(f)
        unf = self.familiarity(f, torch.softmax(logits.float(), dim=1))
        return (logits, unf, f) if embedding else (logits, unf)

    def head_input(self, f: torch.Tensor) -> torch.Tensor:
        """What the last Linear sees for pooled features ``f``: ``f`` itself, or a label map's per-class scores.
        A linear probe fits that Linear on these."""
        inputs = getattr(self.classifier, "inputs", None)
        return inputs(f) if inputs is not None else f

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)  # (N, num_features)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head_drop(f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.classifier.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        # Note for frozen-backbone training: also keep the backbone's BN layers in eval() mode,
        # or their running statistics still drift although no gradient flows.
        return self.features.parameters()
