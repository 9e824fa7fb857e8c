"""What a stylizer's training, evaluation, check, video filter and the optimisation method take (typed; the CLI's
flags and the API's keywords come from them), and the long side photos are stylised at.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator

from ..base import CheckOptionsBase, Options

Features = Literal["lite0", "vgg16", "vgg19"]  # the loss networks
MAX_SIDE = 1024  # predict: the long side a photo is stylised at (dynamic-size models)


def _as_list(v: Any) -> Any:
    return [v] if isinstance(v, str | os.PathLike) else v


def name_list(v: str | None) -> list[str] | None:
    return None if v is None else [s.strip() for s in v.split(",") if s.strip()]


class LossOptions(Options):
    """The perceptual loss: shared by training a stylizer and by the optimisation method."""

    features: Features = Field("lite0", description="loss network: lite0 (EfficientNet-Lite0, installed ImageNet "
                               "weights, with the softmax transformation) or vgg16/vgg19 (a torchvision weights "
                               "file: --weights)")
    weights: str | None = Field(None, description="VGG weights file in torchvision format, e.g. from `curl -LO "
                                "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth` (nothing is downloaded "
                                "for you)")
    content_layers: str | None = Field(None, description="content layers, comma-separated (default: the loss "
                                       "network's: block4_dw for lite0, relu4_2 for VGG)")
    style_layers: str | None = Field(None, description="style layers, comma-separated (default: the loss network's)")
    content_weight: float | None = Field(None, ge=0, description="content weight (default: the loss network's)")
    style_weight: float | None = Field(None, ge=0, description="style weight (default: 1e4 lite0, 1e6 VGG)")
    tv_weight: float | None = Field(None, ge=0, description="total-variation weight (default: 100 lite0, 0 VGG)")
    softmax: bool | None = Field(None, description="the softmax transformation of the features (Wang et al. 2021; "
                                 "default: on for lite0, off for VGG)")


class StylizeOptions(LossOptions):
    style: list[str] = Field(default_factory=list, description="style image(s); several train one network with "
                             "conditional instance norm (repeat --style)")
    style_size: int | None = Field(None, ge=32, le=2048, description="long side (px) of the style image whose "
                                   "Grams are the targets (default: the training crop size)")
    report_gatys: int = Field(2, ge=0, le=50, description="report: compare the stylizer's losses with the "
                              "optimisation method's on this many validation photos (0 = off)")

    _list = field_validator("style", mode="before")(classmethod(lambda cls, v: _as_list(v)))


class StylizeEvalOptions(Options):
    max_images: int = Field(50, ge=1, description="photos evaluated (the first N of the split)")


class StylizeCheckOptions(CheckOptionsBase):
    style: list[str] = Field(default_factory=list, description="style image(s) to check as well")

    _list = field_validator("style", mode="before")(classmethod(lambda cls, v: _as_list(v)))


class StylizeFilterOptions(Options):
    temporal: float = Field(0.6, ge=0, lt=1, description="temporal smoothing: the share of the previous output "
                            "(warped along the optical flow) kept where the frame did not change; 0 = off")
    max_side: int = Field(512, ge=32, le=4096, description="long side the frames are stylised at")


class GatysOptions(LossOptions):
    style: list[str] = Field(description="style image(s) (repeat --style to blend several)")
    content: str = Field(description="content image")
    out: str = Field("stylized.png", description="output image (.png or .jpg), written atomically")
    size: int = Field(512, ge=16, le=4096, description="long side of the output (px)")
    optimizer: Literal["lbfgs", "adam"] = Field("lbfgs", description="optimiser over the pixels")
    iterations: str | None = Field(None, description="iterations per scale, comma-separated, or one number for "
                                   "all (default: 150,80,60 for L-BFGS)")
    scales: str | None = Field(None, description="coarse-to-fine scales as fractions of --size, comma-separated "
                               "(default: 0.5,0.75,1)")
    lr: float | None = Field(None, gt=0, description="Adam's step in pixel units (default 4)")
    style_scale: float = Field(1.0, gt=0, description="the style image's long side relative to the output's")
    style_blend: str | None = Field(None, description="weights of the --style images, comma-separated")
    preserve_color: bool = Field(False, description="luminance-only transfer: keep the content's colours")
    init: Literal["content", "noise"] = Field("content", description="start from the content image or from noise")
    seed: int = Field(0, description="random seed (noise init)")
    intermediates: str | None = Field(None, description="folder for intermediate images")
    every: int = Field(50, ge=1, description="write an intermediate image every N iterations")

    _list = field_validator("style", mode="before")(classmethod(lambda cls, v: _as_list(v)))
