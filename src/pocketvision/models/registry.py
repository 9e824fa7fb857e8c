"""Model registry: ``@register_model`` makes a builder listable, buildable from a spec and size-checked.

A spec is plain data, ``{"name": "deepdog", "args": {"alpha": 0.5, "num_classes": 2}}``, so a bundle
can store it and rebuild the network. Arguments are checked against the builder's signature *here*,
at the entry point (a typo fails with the list of valid names, not deep inside a constructor), and
their types against the builder's defaults. Ranges are checked by the builders with one message style.
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import PocketVisionError, did_you_mean, unknown_choice

_PRETRAINED_KW = "pretrained"  # passed by build_model(pretrained=...), never part of spec["args"]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    default_contract: dict[str, Any]  # Contract.from_dict() input: size, resize, mean, std (pixel units)
    min_size: int  # smallest height/width: the total stride of the network
    size_multiple: int  # height/width must be a multiple of this (1 = any size)
    pretrained: bool  # whether offline ImageNet weights exist
    default_args: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # What the network maps an image to: "classifier" (a feature stack + a linear head: classify, and the
    # backbone of keypoint models) or "image" (image-to-image, e.g. a stylizer). A task names the kinds it builds.
    kind: str = "classifier"


_REGISTRY: dict[str, ModelEntry] = {}


MODEL_KINDS = ("classifier", "image")


def register_model(name: str, *, default_contract: dict[str, Any], min_size: int = 32,
                   size_multiple: int = 1, pretrained: bool = False, kind: str = "classifier") -> Callable:
    """Decorator over ``builder(*, ...) -> nn.Module`` (all arguments keyword with defaults; a classifier
    takes ``num_classes``; a builder with ``pretrained=True`` also takes ``pretrained: bool``)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind {kind!r} is not one of {MODEL_KINDS}")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        # Developer errors (wrong builder shape) -> plain exceptions with tracebacks, not user errors.
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        params = inspect.signature(fn).parameters
        bad = [p.name for p in params.values()
               if p.kind is not p.KEYWORD_ONLY or p.default is inspect.Parameter.empty]
        if bad or (kind == "classifier" and "num_classes" not in params) or (pretrained != (_PRETRAINED_KW in params)):
            raise TypeError(f"builder for {name!r}: arguments must be keyword-only with defaults, a classifier's "
                            f"include num_classes, and take 'pretrained' iff pretrained=True (bad: {bad})")
        defaults = {k: p.default for k, p in params.items() if k != _PRETRAINED_KW}
        doc = (inspect.getdoc(fn) or "").split("\n")[0]
        _REGISTRY[name] = ModelEntry(name, fn, dict(default_contract), min_size, size_multiple,
                                     pretrained, defaults, doc, kind)
        return fn

    return deco


def list_models(pattern: str = "*", *, pretrained: bool = False, kind: str | None = None) -> list[str]:
    """Registered names matching a glob (``list_models("mobilenet*")``); ``pretrained=True`` keeps only
    those with offline weights, ``kind`` only those of that kind."""
    return sorted(n for n, e in _REGISTRY.items()
                  if fnmatch.fnmatch(n, pattern) and (e.pretrained or not pretrained) and kind in (None, e.kind))


def model_entry(name: str) -> ModelEntry:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise unknown_choice("arch", str(name), list_models())
    return _REGISTRY[name]


_TYPE_WORDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _type_ok(value: Any, default: Any) -> bool:
    # bool is an int in Python; keep them apart so alpha=True or num_classes=True is refused.
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return True  # None or containers: the builder validates


def resolve_args(name: str, args: dict[str, Any] | None) -> dict[str, Any]:
    """Validate argument names and types for ``name``; return the full argument dict (defaults filled)."""
    entry = model_entry(name)
    args = {} if args is None else args
    if not isinstance(args, dict):
        raise PocketVisionError(f"Model args for {name} must be a mapping. Got {type(args).__name__}.")
    valid = entry.default_args
    for k, v in args.items():
        if k not in valid:
            hint = " Use build_model(spec, pretrained=True) for weights." if k == _PRETRAINED_KW else ""
            raise PocketVisionError(f"Unrecognized argument {k!r} for model {name}. Valid arguments: "
                                    f"{', '.join(valid)}.{did_you_mean(str(k), valid)}{hint}")
        if not _type_ok(v, valid[k]):
            kind = _TYPE_WORDS.get(type(valid[k]), type(valid[k]).__name__)
            raise PocketVisionError(f"The {k!r} argument of {name} must be {kind}. "
                                    f"Got {v!r} instead.")
    return {**valid, **args}


def build_model(spec: dict[str, Any] | str, pretrained: bool = False) -> nn.Module:
    """``{"name": ..., "args": {...}}`` (or just a name) -> model. ``model.spec`` records the full spec
    (defaults filled in) so it can be stored and rebuilt exactly."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise PocketVisionError(f'A model spec is {{"name": str, "args": {{...}}}}. Got {spec!r}.')
    extra = set(spec) - {"name", "args", "familiarity"}
    if extra:
        raise PocketVisionError(f"Unrecognized model spec key(s) {sorted(extra)}. Valid keys: name, args, "
                                "familiarity.")
    k = spec.get("familiarity")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 4096):
        raise PocketVisionError(f"The model spec's 'familiarity' must be a number of centres in [1, 4096]. Got {k!r}.")
    name = spec["name"]
    entry = model_entry(name)
    args = resolve_args(name, spec.get("args"))
    kw = dict(args)
    if pretrained:
        if not entry.pretrained:
            raise PocketVisionError(f"No pretrained weights for {name}. Models with weights: "
                                    f"{', '.join(list_models(pretrained=True)) or 'none'}.")
        kw[_PRETRAINED_KW] = True
    model = entry.builder(**kw)
    model.spec = {"name": name, "args": copy.deepcopy(args)}
    if k is not None:  # how unlike the training photos a photo is (models/familiarity.py), inside the network
        if not hasattr(model, "attach_familiarity"):
            raise PocketVisionError(f"{name} has no pooled features to score familiarity on; drop 'familiarity'.")
        model.attach_familiarity(k)
        model.spec["familiarity"] = k
    return model


def check_input_size(name: str, size: tuple[int, int] | int, args: dict[str, Any] | None = None) -> None:
    """Raise a one-line error if ``name`` cannot take ``size`` = (h, w). ``args`` are validated too
    (kept in the signature so a family whose stride depends on its args can refine this)."""
    entry = model_entry(name)
    resolve_args(name, args)
    hw = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    try:
        h, w = (int(s) for s in hw)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise PocketVisionError(f"Input size must be (height, width) integers. Got {size!r}.") from None
    m, mult = entry.min_size, entry.size_multiple
    rule = f"at least {m}" + (f" and a multiple of {mult}" if mult > 1 else "")
    if min(h, w) < m or h % mult or w % mult:
        raise PocketVisionError(
            f"{name} cannot take input size {h}x{w}: it downsamples by {m}, so height and width must be "
            f"{rule} (e.g. {m}, 160, 224).")
