"""Feed-forward stylizers: one forward pass per photo, trained against a perceptual loss.

* ``johnson`` -- Johnson, Alahi & Fei-Fei 2016 ("Perceptual Losses for Real-Time Style Transfer"): 9x9 conv
  32, two stride-2 3x3 convs (64, 128), five residual blocks at 128, then *nearest upsampling + conv*
  (64, 32) instead of transposed convolutions, which leave checkerboard patterns (Odena et al. 2016), and a
  9x9 conv to RGB. Instance norm throughout (Ulyanov et al. 2016). ~1.7 M parameters, ~10 GMACs at 256x256.
* ``stylenet_mobile`` -- the same shape made for phones: depthwise-separable convs, a thin trunk at 1/4
  resolution, a stride-2 3x3 stem. Default (width 64, 5 blocks): 55 k parameters (~55 KB as int8); exported to
  ONNX it runs in 16.5 ms at 256x256 (61 fps) and 39.5 ms at 384x384 in onnxruntime on one thread of the 2-core
  AMD EPYC here on 2026-12-05 (width 48: 14.0 / 32.5 ms; on the 2-core Xeon of 2026-12-01, width 64: 18 / 48 ms,
  width 48: 15 / 40, width 32: 8 / 22, johnson: 199 / 449 ms). Width 64 is the default because, trained the same
  way (8 epochs), it ends at a 12% lower validation loss than width 48 (17.25 against 19.53; benchmarks/RESULTS.md).

Both: conditional instance norm (Dumoulin, Shlens & Kudlur 2017, "A Learned Representation for Artistic
Style") with ``num_styles`` (gamma, beta) pairs per norm layer; ``forward(x, style=None)`` where ``style`` is an
optional (N, num_styles) weight tensor -- one-hot picks a style, a convex mix blends them, ``None`` = style 0.
Input: NCHW float normalised per the contract, ``(pixel - 127.5) / 127.5``; output: NCHW RGB in 0-255
(``255 * sigmoid``), so an export wrapper only rounds to uint8. Fully convolutional: any height/width that is
a multiple of 4 (the total stride) gives an output of the same size.

Export notes. Instance norm is written from primitive ops (ReduceMean, Sub, Mul, Sqrt, ...), not
``nn.InstanceNorm2d``: converters break on or slow down the fused op (coremltools issue #785; TF Lite's
InstanceNorm is slow, tensorflow #38397) while the primitives map everywhere. Padding is zero padding (reflection
padding is a Pad mode several runtimes lack) and upsampling is ``nn.Upsample(scale_factor=2, mode="nearest")``.
"""

from __future__ import annotations

import torch
from torch import nn

from ._base import check_range
from .registry import register_model

STYLE_CONTRACT = dict(size=(256, 256), resize="squash", mean=(127.5,) * 3, std=(127.5,) * 3)
TOTAL_STRIDE = 4


class CondInstanceNorm(nn.Module):
    """Instance norm + one affine (gamma, beta) per style.

    Equals ``nn.InstanceNorm2d(C, affine=True)`` for ``num_styles=1`` (biased variance over H, W; eps 1e-5).
    With ``style`` weights (N, S) the (gamma, beta) used are ``style @ gamma_table`` -- a blend of styles.
    """

    def __init__(self, channels: int, num_styles: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_styles, channels))
        self.bias = nn.Parameter(torch.zeros(num_styles, channels))

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        if style is None:
            gamma, beta = self.weight[:1], self.bias[:1]  # (1, C): style 0
        else:
            gamma, beta = style @ self.weight, style @ self.bias  # (N, C)
        mean = x.mean(dim=(2, 3), keepdim=True)
        xc = x - mean  # two-pass variance: E[x^2] - E[x]^2 cancels catastrophically when |mean| >> std
        var = (xc * xc).mean(dim=(2, 3), keepdim=True)
        # gamma / std is folded on the (N, C, 1, 1) statistics, so only two full-size ops remain after var.
        scale = gamma[:, :, None, None] * torch.rsqrt(var + self.eps)
        return xc * scale + beta[:, :, None, None]


class ConvNormAct(nn.Module):
    """[nearest x2 upsample] -> conv (zero pad) -> conditional IN -> [ReLU]. ``depthwise``: a 3x3 depthwise
    conv before a 1x1 pointwise one (MobileNet's separable conv); the norm follows the pointwise conv."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, *, num_styles: int = 1,
                 act: bool = True, upsample: bool = False, depthwise: bool = False, norm: bool = True) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest") if upsample else None
        if depthwise:
            # No norm between dw and pw: each IN costs two full reductions, the pw conv mixes channels anyway.
            self.conv = nn.Sequential(nn.Conv2d(cin, cin, k, stride, k // 2, groups=cin, bias=False),
                                      nn.Conv2d(cin, cout, 1, bias=not norm))
        else:
            self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=not norm)  # IN's beta makes a bias redundant
        self.norm = CondInstanceNorm(cout, num_styles) if norm else None
        self.act = nn.ReLU(inplace=True) if act else None

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        if self.up is not None:
            x = self.up(x)
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x, style)
        return self.act(x) if self.act is not None else x


class ResidualBlock(nn.Module):
    """conv-IN-ReLU-conv-IN + identity (Johnson's block without the cropping of the unpadded original)."""

    def __init__(self, c: int, *, num_styles: int = 1, depthwise: bool = False) -> None:
        super().__init__()
        self.a = ConvNormAct(c, c, 3, num_styles=num_styles, depthwise=depthwise)
        self.b = ConvNormAct(c, c, 3, num_styles=num_styles, depthwise=depthwise, act=False)

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.b(self.a(x, style), style)


class StyleNet(nn.Module):
    """encoder (stride 4) -> residual trunk -> decoder (2x nearest upsampling) -> RGB 0-255."""

    def __init__(self, encoder: list[ConvNormAct], trunk: list[ResidualBlock], decoder: list[ConvNormAct],
                 head: nn.Module, num_styles: int, skip: bool = False) -> None:
        super().__init__()
        self.num_styles = num_styles
        self.skip = skip
        self.encoder = nn.ModuleList(encoder)
        self.trunk = nn.ModuleList(trunk)
        self.decoder = nn.ModuleList(decoder)
        self.head = head
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Start near mid-grey rather than saturated: sigmoid'(0) is largest, so early gradients flow.
        last = [m for m in self.head.modules() if isinstance(m, nn.Conv2d)][-1]
        nn.init.normal_(last.weight, 0.0, 1e-3)

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        inp = x
        for m in self.encoder:
            x = m(x, style)
        for m in self.trunk:
            x = m(x, style)
        for m in self.decoder:
            x = m(x, style)
        z = self.head(x)
        if self.skip:
            # A global skip in logit space: with a zero head the output *is* the input photo, so the network
            # learns only the stylisation, not how to redraw the content through a 1/4-resolution trunk (the
            # optimisation method starts from the content image for the same reason). Log/Clip: every runtime.
            p = torch.clamp((inp + 1.0) * 0.5, 1e-3, 1.0 - 1e-3)  # the contract's (pixel - 127.5) / 127.5
            z = z + torch.log(p) - torch.log(1.0 - p)
        return 255.0 * torch.sigmoid(z)

    @staticmethod
    def one_hot(index: int | torch.Tensor, num_styles: int, batch: int = 1) -> torch.Tensor:
        """(N, num_styles) weights picking style ``index`` for every image of a batch of ``batch``."""
        w = torch.zeros(batch, num_styles)
        w[:, index] = 1.0
        return w


def _check_styles(name: str, num_styles: int) -> None:
    check_range(name, "num_styles", num_styles, 1, 1024)


@register_model("johnson", kind="image", default_contract=STYLE_CONTRACT, min_size=TOTAL_STRIDE,
                size_multiple=TOTAL_STRIDE)
def johnson(*, num_styles: int = 1) -> StyleNet:
    """Johnson et al. 2016 transformer net (instance norm, upsample+conv), ~1.7 M params."""
    _check_styles("johnson", num_styles)
    s = dict(num_styles=num_styles)
    enc = [ConvNormAct(3, 32, 9, **s), ConvNormAct(32, 64, 3, 2, **s), ConvNormAct(64, 128, 3, 2, **s)]
    trunk = [ResidualBlock(128, **s) for _ in range(5)]
    dec = [ConvNormAct(128, 64, 3, upsample=True, **s), ConvNormAct(64, 32, 3, upsample=True, **s)]
    return StyleNet(enc, trunk, dec, nn.Conv2d(32, 3, 9, padding=4), num_styles)


@register_model("stylenet_mobile", kind="image", default_contract=STYLE_CONTRACT, min_size=TOTAL_STRIDE,
                size_multiple=TOTAL_STRIDE)
def stylenet_mobile(*, width: int = 64, blocks: int = 5, num_styles: int = 1, skip: bool = False) -> StyleNet:
    """Mobile stylizer: depthwise-separable, ``width`` channels at 1/4 size, ``blocks`` residual blocks."""
    check_range("stylenet_mobile", "width", width, 8, 256)
    check_range("stylenet_mobile", "blocks", blocks, 0, 16)
    _check_styles("stylenet_mobile", num_styles)
    s = dict(num_styles=num_styles)
    half = max(8, width // 2)
    # Full resolution is where the time goes (4x the pixels of 1/2, 16x those of 1/4): nothing runs there but
    # the stride-2 stem and the final upsample + 3x3 conv to RGB. All the width lives at 1/4 resolution.
    enc = [ConvNormAct(3, half, 3, 2, **s), ConvNormAct(half, width, 3, 2, depthwise=True, **s)]
    trunk = [ResidualBlock(width, depthwise=True, **s) for _ in range(blocks)]
    dec = [ConvNormAct(width, half, 3, upsample=True, depthwise=True, **s)]
    head = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(half, 3, 3, padding=1))
    return StyleNet(enc, trunk, dec, head, num_styles, skip)
