"""VGG-16/19 feature stacks: the classic loss network of neural style transfer.

Built by hand with torchvision's exact module layout, so the official torchvision checkpoints load
key for key (``features.0.weight``, ``features.0.bias``, ``features.2.weight``, ... -- the indices of
``torchvision.models.vgg16().features`` / ``vgg19().features``); only the ``features`` part is built, the
classifier's 120 M parameters are never needed for a perceptual loss.

No weights ship with pocketvision and nothing is downloaded: fetch the official file yourself, once::

    curl -LO https://download.pytorch.org/models/vgg19-dcbb9e9d.pth   # VGG-19 (548 MB)
    curl -LO https://download.pytorch.org/models/vgg16-397923af.pth   # VGG-16 (528 MB)

and pass its path (``.pth``/``.pt``, read with ``torch.load(weights_only=True)``; or a ``.safetensors``
with the same keys). A file placed in torch's hub cache (``$TORCH_HOME/hub/checkpoints/``, where
torchvision itself would put it) is found without a path. The weights expect torchvision's input:
RGB in [0, 1] normalised by the ImageNet mean/std (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`).

VGG is deliberately *not* in the model registry: it is a loss network, never a model a bundle ships.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import PocketVisionError, unknown_choice

# torchvision's configurations "D" (vgg16) and "E" (vgg19): conv widths, "M" = 2x2 max-pool.
VGG_CFGS: dict[str, tuple[int | str, ...]] = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}
WEIGHT_FILES = {"vgg16": "vgg16-397923af.pth", "vgg19": "vgg19-dcbb9e9d.pth"}
WEIGHT_URL = "https://download.pytorch.org/models/{}"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SHOW = 6  # keys listed per category in a mismatch message; the counts say how many more


def download_hint(name: str) -> str:
    return f"curl -LO {WEIGHT_URL.format(WEIGHT_FILES[name])}"


def layer_indices(name: str) -> dict[str, int]:
    """``{"conv1_1": 0, "relu1_1": 1, ..., "pool1": 4, ...}``: the usual names -> ``features`` indices."""
    if name not in VGG_CFGS:
        raise unknown_choice("vgg", name, VGG_CFGS)
    out: dict[str, int] = {}
    i, block, k = 0, 1, 1
    for v in VGG_CFGS[name]:
        if v == "M":
            out[f"pool{block}"] = i
            i, block, k = i + 1, block + 1, 1
        else:
            out[f"conv{block}_{k}"], out[f"relu{block}_{k}"] = i, i + 1
            i, k = i + 2, k + 1
    return out


class VGGFeatures(nn.Module):
    """``features`` exactly as torchvision lays it out (Conv2d 3x3 pad 1, ReLU, MaxPool2d 2x2).

    ReLUs are *not* in-place (unlike torchvision's): a perceptual loss keeps several intermediate
    activations alive for the backward pass, and an in-place ReLU would overwrite a kept conv output.
    """

    def __init__(self, name: str = "vgg19") -> None:
        super().__init__()
        if name not in VGG_CFGS:
            raise unknown_choice("vgg", name, VGG_CFGS)
        self.name = name
        layers: list[nn.Module] = []
        cin = 3
        for v in VGG_CFGS[name]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU()]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.layer_index = layer_indices(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def default_weights_path(name: str) -> Path:
    """Where torchvision would cache the official file; looked in when no path is given."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHT_FILES[name]


def _read_state_dict(path: Path, name: str) -> Mapping[str, torch.Tensor]:
    if not path.exists():
        raise PocketVisionError(f"VGG weights file {path} not found. Download the official {name} weights "
                                f"(once, ~0.5 GB): {download_hint(name)}")
    if not path.is_file():
        raise PocketVisionError(f"VGG weights path {path} is not a file. Pass the .pth/.safetensors file "
                                f"itself (get it with: {download_hint(name)}).")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise PocketVisionError(f"{path} is not a readable .safetensors file ({e}). "
                                    f"Re-download it or convert the official {WEIGHT_FILES[name]}.") from None
    if not _looks_like_torch_file(path):
        raise PocketVisionError(f"{path} is not a PyTorch weights file (neither torch's zip format nor a "
                                f"pickle). Get the official {name} weights: {download_hint(name)}")
    try:
        # weights_only: a tensor-only unpickler, so a file from a stranger cannot run code.
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        culprit = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" ({culprit.group(1)})" if culprit else ""
        raise PocketVisionError(
            f"{path} holds pickled Python objects{what}, not just tensors; they are not loaded because "
            f"unpickling can run code. Save model.state_dict() instead, or use the official file: "
            f"{download_hint(name)}") from None
    except (RuntimeError, OSError, EOFError, ValueError, AttributeError) as e:
        raise PocketVisionError(f"{path} is not a readable PyTorch weights file ({str(e).splitlines()[0][:120]}). "
                                f"Re-download it: {download_hint(name)}") from None
    # Checkpoints of training scripts often wrap the weights one level down.
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PocketVisionError(f"{path} does not hold a state dict (name -> tensor), got {type(sd).__name__}. "
                                f"Get the official {name} weights: {download_hint(name)}")
    return sd


def _looks_like_torch_file(path: Path) -> bool:
    # torch.save writes a zip; checkpoints from before torch 1.6 (the official VGG files among them) are
    # a bare pickle stream, which starts with the PROTO opcode 0x80.
    with open(path, "rb") as f:
        head = f.read(2)
    return zipfile.is_zipfile(path) or head[:1] == b"\x80"


def _guess_arch(keys: set[str]) -> str | None:
    convs = {k for k in keys if k.startswith("features.") and k.endswith(".weight")}
    for arch in VGG_CFGS:
        want = {f"features.{i}.weight" for n, i in layer_indices(arch).items() if n.startswith("conv")}
        if convs == want:
            return arch
    return None


def load_vgg_weights(model: VGGFeatures, path: str | Path) -> VGGFeatures:
    """Load a torchvision-format VGG checkpoint into ``model`` (strict on ``features.*``).

    ``classifier.*`` keys are ignored (a perceptual loss never uses them). Any other difference --
    a missing or extra ``features`` key, or a tensor of another shape, e.g. a vgg16 file given as
    vgg19 or a ``vgg19_bn`` file -- raises :class:`PocketVisionError` naming the file and listing the
    differing keys. Download the official weights with
    ``curl -LO https://download.pytorch.org/models/vgg19-dcbb9e9d.pth`` (vgg16: ``vgg16-397923af.pth``).
    """
    path = Path(path).expanduser()
    sd = _read_state_dict(path, model.name)
    feats = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    own = {f"features.{k}": v for k, v in model.features.state_dict().items()}
    missing = sorted(own.keys() - feats.keys(), key=_natural)
    unexpected = sorted(feats.keys() - own.keys(), key=_natural)
    wrong = sorted((k for k in own.keys() & feats.keys() if own[k].shape != feats[k].shape), key=_natural)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                more = f" and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:_SHOW])}{more})")
        if wrong:
            shown = [f"{k} {tuple(feats[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:_SHOW]]
            more = f" and {len(wrong) - _SHOW} more" if len(wrong) > _SHOW else ""
            parts.append(f"{len(wrong)} shape mismatches, file vs {model.name} ({'; '.join(shown)}{more})")
        guess = _guess_arch(set(feats))
        hint = (f" It looks like a {guess} file: use features={guess!r}." if guess and guess != model.name
                else f" Use the official file: {download_hint(model.name)}")
        raise PocketVisionError(f"{path} does not match {model.name}: {'; '.join(parts)}.{hint}")
    model.features.load_state_dict({k.removeprefix("features."): v for k, v in feats.items()}, strict=True)
    return model


def _natural(key: str) -> tuple:
    # features.10.weight after features.2.weight: humans read indices as numbers.
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


def build_vgg(name: str = "vgg19", weights: str | Path | None = None) -> VGGFeatures:
    """VGG feature stack with weights from ``weights`` (a path; ``None`` = torch's hub cache, where
    torchvision keeps the official file; ``"random"`` = untrained, for timing and tests only)."""
    model = VGGFeatures(name)
    if weights == "random":
        return model
    if weights is None:
        path = default_weights_path(name)
        if not path.is_file():
            raise PocketVisionError(
                f"{name} needs its ImageNet weights, which are not bundled. Download them once: "
                f"{download_hint(name)} (or into {path.parent}/ to be found automatically), then pass "
                f"weights='{WEIGHT_FILES[name]}'. Or use features='lite0', whose weights are installed.")
        weights = path
    return load_vgg_weights(model, weights)
