"""pocketvision: from a folder of photos to a verified on-device vision model.

Imports are lazy so that ``pocketvision predict model.onnx`` (the runtime path) never loads torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["train", "find_lr", "load", "starter", "Bundle", "Contract", "PocketVisionError", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .api import Bundle, find_lr, load, starter, train
    from .core.contract import Contract
    from .errors import PocketVisionError

_LAZY = {"train": "api", "find_lr": "api", "load": "api", "starter": "api", "Bundle": "api", "Contract": "core.contract",
         "PocketVisionError": "errors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'pocketvision' has no attribute {name!r}")
