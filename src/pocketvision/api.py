"""Public Python API; the CLI is a thin layer over these functions.

    import pocketvision as pv
    bundle = pv.train("photos/", out="hotdog.pvb", arch="deepdog", arch_args={"alpha": 0.5})
    bundle = pv.load("hotdog.pvb")
    bundle.evaluate("photos/")            # metrics dict (+ HTML report with report_dir=...)
    bundle.export("hotdog.onnx")          # exported and verified on the validation images
    bundle.predict(["a.jpg", "b.jpg"])    # the task's records
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .model_bundle import Bundle, ExportResult, load
from .runtime.artifact import load_any

__all__ = ["Bundle", "ExportResult", "find_lr", "load", "load_any", "train"]


def train(data: str | Path, out: str | Path | None = None, *, model: nn.Module | None = None,
          resume: str | Path | None = None, console=None, **options: Any) -> Bundle | None:
    """Train a model for any task on ``data`` and return (and write, with ``out``) its bundle.

    ``options`` are the engine's :class:`pocketvision.training.config.TrainConfig` fields (arch, epochs, lr...)
    plus the task's own options (``pocketvision.tasks.get_task(name).Options``); ``task`` picks the task
    (default: from the data). ``model`` brings your own ``torch.nn.Module`` (classify: float NCHW in, logits out).
    Under torchrun every process calls this; rank 0 gets the bundle (and writes ``out``), the others None.
    """
    from .training.run import train_model
    meta, net = train_model(data, options, user_model=model, resume=resume, console=console)
    if meta is None:  # a distributed run's other processes (torchrun): rank 0 has the bundle
        return None
    b = Bundle(meta, net)
    if out is not None:
        b.save(out)
    return b


def find_lr(data: str | Path, **options: Any) -> dict[str, Any]:
    """LR range test with the same options as :func:`train`; saves ``RUN_DIR/lr_find.png``.

    -> ``{"suggested_lr", "plot", "lrs", "losses"}``.
    """
    from .training.run import find_lr as _find_lr
    run_dir = Path(options.pop("run_dir", None) or "runs/find-lr")
    return _find_lr(data, {**options, "run_dir": run_dir}, run_dir / "lr_find.png")
