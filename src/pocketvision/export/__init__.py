"""Export targets: one module per format behind one protocol (``export/base.py``), registered on import.

Importing this package registers onnx, tflite, coreml and web; their converters load only when used.
"""

from . import coreml, litert, onnx, web  # noqa: F401  (registers the targets)
from .base import (META_PREFIX, ExportJob, Target, folder_size, get_target, is_exported, model_files, register_target,
                   publish, staged, target_for_path, target_names, variant_suffix)

__all__ = ["META_PREFIX", "ExportJob", "Target", "check_request", "folder_size", "get_target", "is_exported",
           "model_files", "publish", "register_target", "staged", "target_for_path", "target_names", "variant_suffix"]


def check_request(task, to: str, precision: str = "fp32", bits: int | None = None, qat_steps: int = 0,
                  teachable: bool = False) -> Target:
    """Refuse an export request before any work starts -> the target."""
    target = get_target(to)
    target.check(task, precision, bits, qat_steps, teachable)
    return target
