"""Keypoint networks: a registry backbone's feature stack + a keypoint head (used by ``tasks/keypoints/``).

The network's ``forward`` already returns decoded points, ``(N, K, 3)`` = x, y, score in *model-input
pixel* coordinates, so the exported graph (ONNX, LiteRT, Core ML, web) hands apps finished points and
no app re-implements the decoding. Training uses ``forward_raw``.

Heads:
- ``regression``: direct (x, y) regression, what the dog-face developer used (he found MSE beat L1);
  plus a visibility logit as the score.
- ``simcc`` (Li et al. 2022, as in RTMPose): each coordinate is a classification over sub-pixel bins
  (``ratio`` bins per pixel) trained against a Gaussian; decoded as the expectation of the softmax, so
  the result is differentiable and sub-pixel, and exports as plain Softmax/MatMul. Usually the more
  accurate of the two at equal size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import PocketVisionError, did_you_mean, unknown_choice
from ...models._base import ConvBnAct
from ...models.registry import build_model

HEADS = ("heatmap", "simcc", "regression")
# SimCC bins cover this margin beyond each edge: tight crops put labelled points a little outside.
BIN_MARGIN = 0.1


def trim_to_stride(features: nn.Sequential, target: int, size: tuple[int, int]) -> nn.Sequential:
    """Keep the blocks of a sequential backbone up to the last one whose output stride is <= ``target``:
    for small keypoint models the deepest, widest blocks cost most parameters and help localisation least."""
    x = torch.zeros(1, 3, *size)
    keep = 0
    with torch.no_grad():
        was = features.training
        features.eval()
        for i, block in enumerate(features):
            x = block(x)
            if size[0] / x.shape[-2] > target * 1.01 and size[0] // x.shape[-2] > target:
                break
            keep = i + 1
        features.train(was)
    return features[:keep]


def set_output_stride(features: nn.Module, target: int) -> int:
    """Turn stride-2 convs after the cumulative stride reaches ``target`` into stride 1 (a finer last
    feature map for localisation, at a modest compute cost) -> the resulting stride."""
    stride = 1
    for mod in features.modules():
        children = dict(mod.named_children())
        if isinstance(mod, nn.Conv2d):
            continue
        for name, conv in children.items():
            if not isinstance(conv, nn.Conv2d) or conv.stride[0] == 1:
                continue
            if stride >= target:
                conv.stride = (1, 1)
                k = conv.kernel_size[0]
                if "pad" in children and isinstance(children["pad"], nn.ZeroPad2d):  # TF-SAME stride-2 pad
                    setattr(mod, "pad", nn.Identity())
                conv.padding = (k // 2, k // 2)
            else:
                stride *= conv.stride[0]
    return stride


class RegressionHead(nn.Module):
    def __init__(self, cin: int, k: int, hw: tuple[int, int], size: tuple[int, int], hidden: int = 256):
        super().__init__()
        self.k, self.size = k, size
        self.reduce = ConvBnAct(cin, 64, 1, act="relu")
        self.fc = nn.Sequential(nn.Flatten(1), nn.Linear(64 * hw[0] * hw[1], hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, 3 * k))
        nn.init.zeros_(self.fc[-1].weight)
        with torch.no_grad():  # start at the centre of the image, score 0.5
            self.fc[-1].bias.copy_(torch.tensor([0.5, 0.5, 0.0]).repeat(k))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(self.reduce(f)).view(-1, self.k, 3)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h, w = self.size
        scale = torch.tensor([float(w), float(h)], dtype=z.dtype, device=z.device)
        return torch.cat([z[..., :2] * scale, torch.sigmoid(z[..., 2:3])], dim=-1)

    def loss(self, z: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
        h, w = self.size
        scale = torch.tensor([float(w), float(h)], dtype=z.dtype, device=z.device)
        lab = (target[..., 2] > 0).float()
        d = z[..., :2] - target[..., :2] / scale
        per = (d * d).sum(-1) if kind == "mse" else d.abs().sum(-1)
        coord = (per * lab).sum() / lab.sum().clamp(min=1)
        vis = F.binary_cross_entropy_with_logits(z[..., 2], lab)
        return coord * (100.0 if kind == "mse" else 10.0) + 0.1 * vis


class _DerivedCoords:
    """The bin/cell centres are computed from the configuration, not weights: not saved, and ignored
    when a bundle written before they became non-persistent still carries them."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for k in ("cx", "cy"):
            state_dict.pop(prefix + k, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SimCCHead(_DerivedCoords, nn.Module):
    def __init__(self, cin: int, k: int, hw: tuple[int, int], size: tuple[int, int], ratio: float = 2.0,
                 channels: int = 16, hidden: int = 256, sigma: float = 1.5):
        super().__init__()
        h, w = size
        self.k, self.size, self.ratio, self.sigma, self.channels = k, size, ratio, sigma, channels
        self.reduce = ConvBnAct(cin, k * channels, 1, act="relu")
        self.mlp = nn.Sequential(nn.Linear(channels * hw[0] * hw[1], hidden), nn.ReLU(inplace=True))
        self.mx, self.my = round(BIN_MARGIN * w), round(BIN_MARGIN * h)
        nx, ny = round((w + 2 * self.mx) * ratio), round((h + 2 * self.my) * ratio)
        self.fx, self.fy = nn.Linear(hidden, nx), nn.Linear(hidden, ny)
        self.register_buffer("cx", (torch.arange(nx, dtype=torch.float32) + 0.5) / ratio - self.mx, persistent=False)
        self.register_buffer("cy", (torch.arange(ny, dtype=torch.float32) + 0.5) / ratio - self.my, persistent=False)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # per point: its channels x the feature map (chunk, not reshape: no shape arithmetic in the graph)
        z = torch.stack(self.reduce(f).chunk(self.k, dim=1), dim=1).flatten(2)
        z = self.mlp(z)
        return self.fx(z), self.fy(z)

    def decode(self, z: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        px, py = torch.softmax(z[0], -1), torch.softmax(z[1], -1)
        x, y = (px * self.cx).sum(-1), (py * self.cy).sum(-1)  # not @ a vector: Core ML's matmul wants 2-D
        # Peak probability relative to a perfectly sharp Gaussian of the training width: ~1 when the
        # model is as sure as its labels, lower when the distribution spreads or splits.
        peak = 1.0 / (self.sigma * 2.5066283)
        score = torch.clamp(torch.sqrt(px.amax(-1) * py.amax(-1)) / peak, max=1.0)
        return torch.stack([x, y, score], dim=-1)

    def loss(self, z, target: torch.Tensor, kind: str = "kl") -> torch.Tensor:
        lab = (target[..., 2] > 0).float()
        total = 0.0
        for logits, centers, coord in ((z[0], self.cx, target[..., 0]), (z[1], self.cy, target[..., 1])):
            d = (centers.view(1, 1, -1) - coord.unsqueeze(-1)) * self.ratio  # in bins
            q = torch.exp(-0.5 * (d / self.sigma) ** 2)
            q = q / q.sum(-1, keepdim=True).clamp(min=1e-12)
            logp = F.log_softmax(logits.float(), -1)
            ce = -(q * logp).sum(-1)
            expect = (logp.exp() * centers).sum(-1)
            l1 = F.smooth_l1_loss(expect, coord, reduction="none", beta=1.0)
            total = total + ((ce + 0.1 * l1) * lab).sum() / lab.sum().clamp(min=1)
        return total


class HeatmapHead(_DerivedCoords, nn.Module):
    """Upsample the backbone's last map to stride 4, one heatmap per point, decoded by integral
    regression (Sun et al. 2018: the softmax-weighted mean position, sub-pixel and differentiable).

    Convolutional all the way, so a face anywhere in the frame is found by the same weights: on 9k
    training faces this generalises far better than flattening the map into a dense layer.
    """

    def __init__(self, cin: int, k: int, hw: tuple[int, int], size: tuple[int, int], channels: int = 96,
                 ups: int = 2, sigma: float = 1.0, in_stride: int = 16):
        super().__init__()
        self.k, self.size, self.sigma = k, size, sigma
        layers: list[nn.Module] = [ConvBnAct(cin, channels, 1, act="relu")]
        for _ in range(ups):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       ConvBnAct(channels, channels, 3, groups=channels, act=None),
                       ConvBnAct(channels, channels, 1, act="relu")]
        self.up = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, k, 1)
        h, w = size
        mh, mw = hw[0] * 2**ups, hw[1] * 2**ups
        sy, sx = h / mh, w / mw  # input pixels per heatmap cell
        # Cell centres for the *flattened* heatmap (index = row * mw + col), so decoding is softmax + two
        # weighted sums: no reshape of the heatmaps, which Core ML's converter cannot trace.
        cols = (torch.arange(mw, dtype=torch.float32) + 0.5) * sx
        rows = (torch.arange(mh, dtype=torch.float32) + 0.5) * sy
        self.register_buffer("cx", cols.repeat(mh), persistent=False)
        self.register_buffer("cy", rows.repeat_interleave(mw), persistent=False)
        self.cell = (sx, sy)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.out(self.up(f))  # (N, K, h, w) logits

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(z.flatten(2).float(), -1)
        x, y = (p * self.cx).sum(-1), (p * self.cy).sum(-1)
        # Peak relative to a Gaussian of the training width: ~1 when as sure as the labels.
        peak = 1.0 / (2 * 3.14159265 * self.sigma**2)
        score = torch.clamp(p.amax(-1) / peak, max=1.0)
        return torch.stack([x, y, score], dim=-1)

    def loss(self, z: torch.Tensor, target: torch.Tensor, kind: str = "kl") -> torch.Tensor:
        lab = (target[..., 2] > 0).float()
        logp = F.log_softmax(z.flatten(2).float(), -1)
        dx = (self.cx - target[..., 0:1]) / self.cell[0]
        dy = (self.cy - target[..., 1:2]) / self.cell[1]
        q = torch.exp(-0.5 * (dx**2 + dy**2) / self.sigma**2)
        q = q / q.sum(-1, keepdim=True).clamp(min=1e-12)
        ce = -(q * logp).sum(-1)
        p = logp.exp()
        xy = torch.stack([(p * self.cx).sum(-1), (p * self.cy).sum(-1)], -1)
        l1 = F.smooth_l1_loss(xy, target[..., :2], reduction="none", beta=1.0).sum(-1)
        return ((ce + 0.5 * l1) * lab).sum() / lab.sum().clamp(min=1)


def check_head_args(head: str, cls: type, args: dict[str, Any]) -> None:
    """Head arguments are checked against the head's signature at the entry (a typo is one line, not a
    TypeError deep inside the constructor)."""
    import inspect
    valid = [n for n in list(inspect.signature(cls).parameters)[4:]]  # after cin, k, hw, size
    for k in args:
        if k not in valid:
            raise PocketVisionError(f"Unrecognized argument {k!r} for the {head} head. Valid arguments: "
                                    f"{', '.join(valid)}.{did_you_mean(str(k), valid)}")


class KeypointNet(nn.Module):
    """Backbone feature stack (from the registry) + a keypoint head; ``forward`` -> (N, K, 3) points."""

    def __init__(self, features: nn.Module, num_keypoints: int, size: tuple[int, int],
                 head: str = "simcc", output_stride: int = 16, trim: bool = True, **head_args: Any):
        super().__init__()
        if head not in HEADS:
            raise unknown_choice("head", head, HEADS)
        if trim and isinstance(features, nn.Sequential):
            features = trim_to_stride(features, output_stride, size)
        self.features = features
        self.output_stride = set_output_stride(self.features, output_stride)
        with torch.no_grad():
            was = self.features.training
            self.features.eval()
            f = self.features(torch.zeros(1, 3, *size))
            self.features.train(was)
        hw, feat_channels = tuple(f.shape[-2:]), f.shape[1]
        cls = {"simcc": SimCCHead, "regression": RegressionHead, "heatmap": HeatmapHead}[head]
        check_head_args(head, cls, head_args)
        self.head = cls(feat_channels, num_keypoints, hw, size, **head_args)
        self.num_keypoints = num_keypoints

    def forward_raw(self, x: torch.Tensor):
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor, raw: bool = False) -> torch.Tensor:
        """Decoded points (the exported graph); ``raw``: the head's training outputs, through ``__call__`` so
        that a DistributedDataParallel wrapper sees the training forward."""
        return self.forward_raw(x) if raw else self.head.decode(self.forward_raw(x))

    def head_parameters(self):
        return self.head.parameters()

    def backbone_parameters(self):
        return self.features.parameters()


def build_keypoint_model(spec: dict[str, Any], size: tuple[int, int], pretrained: bool = False) -> KeypointNet:
    """``spec`` = {"name": backbone, "args": backbone args, "head": {"type", "num_keypoints", ...}}."""
    head = dict(spec.get("head") or {})
    if "num_keypoints" not in head:
        raise PocketVisionError("keypoint model spec needs head.num_keypoints.")
    backbone = build_model({"name": spec["name"], "args": {**spec.get("args", {}), "num_classes": 0}},
                           pretrained=pretrained)
    kind = head.pop("type", "simcc")
    k = head.pop("num_keypoints")
    stride = head.pop("output_stride", 16)
    trim = head.pop("trim", True)
    return KeypointNet(backbone.features, k, tuple(size), kind, stride, trim, **head)


def keypoint_spec(arch: str, arch_args: dict[str, Any], num_keypoints: int, head: str, output_stride: int = 16,
                  **head_args: Any) -> dict[str, Any]:
    return {"name": arch, "args": {k: v for k, v in arch_args.items() if k != "num_classes"},
            "head": {"type": head, "num_keypoints": num_keypoints, "output_stride": output_stride, **head_args}}
