"""Task plug-ins (DESIGN.md 5): each task module owns its head, loss, decoding and export signature."""

from __future__ import annotations

from ..errors import unknown_choice

TASKS = ("classify", "keypoints")


def export_wrapper(task: str, model, contract):
    """-> (uint8-NHWC-in nn.Module with the contract inside, output names) for ``task``."""
    if task == "classify":
        from .classify import OUTPUTS, ExportWrapper
    elif task == "keypoints":
        from .keypoints import OUTPUTS, ExportWrapper
    else:
        raise unknown_choice("task", task, TASKS)
    return ExportWrapper(model, contract).eval(), list(OUTPUTS)
