"""pocketvision: from a folder of photos to a verified on-device vision model.

Imports are lazy so that ``pocketvision predict model.onnx`` (the runtime path) never loads torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["train", "find_lr", "load", "Bundle", "Contract", "PocketVisionError", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .api import find_lr, train
    from .api import Bundle
    from .contract import Contract
    from .errors import PocketVisionError


def __getattr__(name: str) -> Any:
    if name == "train":
        from .api import train
        return train
    if name == "find_lr":
        from .api import find_lr
        return find_lr
    if name == "load":
        from .api import load
        return load
    if name == "Bundle":
        from .api import Bundle
        return Bundle
    if name == "Contract":
        from .contract import Contract
        return Contract
    if name == "PocketVisionError":
        from .errors import PocketVisionError
        return PocketVisionError
    raise AttributeError(f"module 'pocketvision' has no attribute {name!r}")
