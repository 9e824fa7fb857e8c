"""Train any task: options -> (task, config) -> the task's run -> the engine -> bundle metadata + model.

Returns plain (meta, model) so that compression stages can train without importing the Bundle class
(``pocketvision.train`` wraps the result in one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import bundle_file as bundle_io
from ..core.bundle_file import atomic_write_bytes
from ..errors import PocketVisionError
from ..tasks import get_task
from ..tasks.base import parse_options
from ..training import distributed
from ..training.checkpoint import CKPT_META, load_checkpoint
from ..training.config import TrainConfig, make_config
from ..training.engine import Engine
from .options import split_options

# Options a resumed run may change: they affect the display and the machine, not the result. A task adds the
# options that act only after the last epoch (Task.finish_options); any other given option must equal the run's.
RESUME_OVERRIDES = ("progress", "tensorboard", "workers", "devices", "max_restarts", "run_dir", "device",
                    "cache_dir", "cache_mb")


def resumed_options(saved: dict[str, Any], given: dict[str, Any], run: Path) -> dict[str, Any]:
    """The options a run resumed from ``run`` trains with: its checkpoint's, plus those of ``given`` it may change.

    Silently training with the checkpoint's value of an option the user changed would hand back a model made
    otherwise than asked: such an option is refused, in one line that names it and both values. Values are compared
    once validated (``--arch searched:FILE`` is the architecture the run stored), so repeating the run's own command
    line is fine."""
    task = get_task(saved["task"]) if saved.get("task") not in (None, "auto") else None
    may = set(RESUME_OVERRIDES) | set(task.finish_options if task else ())
    own = task.Options.model_fields if task else {}

    def settled(values: dict[str, Any]) -> dict[str, Any]:
        out = make_config(**{k: v for k, v in values.items() if k in TrainConfig.model_fields}).model_dump(mode="json")
        if task is not None:
            out.update(parse_options(task.Options, {k: v for k, v in values.items() if k in own}, "training")
                       .model_dump(mode="json"))
        return out

    before = settled(saved)
    # A dict option (--arch-args) is compared on the keys given: the recipe may have added others to the run's.
    asked = {k: {**saved[k], **v} if isinstance(v, dict) and isinstance(saved.get(k), dict) else v
             for k, v in given.items() if k not in may}
    after = settled({**saved, **asked})
    differ = [f"--{k.replace('_', '-')} {given[k]} (the run has {before[k]})"
              for k in given if k not in may and k in before and after[k] != before[k]]
    if differ:
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(may - set(RESUME_OVERRIDES)))
        also = f" (after its last epoch a run may still change {flags})" if flags else ""
        them = "them" if len(differ) > 1 else "it"
        raise PocketVisionError(f"--resume {run}: {', '.join(differ)}: a resumed run keeps the options it started "
                                f"with; leave {them} out or start a new run{also}.")
    return {**saved, **{k: v for k, v in given.items() if k in may}}


def train_model(data: str | Path, options: dict[str, Any], *, user_model: nn.Module | None = None,
                resume: str | Path | None = None, console=None) -> tuple[dict[str, Any], nn.Module]:
    """-> (bundle metadata, trained model on the CPU). Ctrl-C raises KeyboardInterrupt after the checkpoint.

    Under torchrun (``--devices N``) every process trains its share; rank 0 returns the result, the others
    ``(None, None)``. A group that torchrun restarted after a process died resumes from the run's checkpoint."""
    dist = distributed.from_env()
    if not dist.main:
        from rich.console import Console
        console = Console(stderr=True, quiet=True)  # one voice: rank 0's
    if resume is None and dist.restart:
        where = distributed.run_dir_for(options.get("run_dir"), "train", dist)
        if (where / CKPT_META).exists():
            resume = where
    if resume is not None:
        _, _, meta = load_checkpoint(Path(resume))
        options = resumed_options(meta.get("config", {}), options, Path(resume))
    # A resumed run has every field set already; a model the user brings is not the recipe's architecture.
    task, cfg, opts, recipe = split_options(data, options, recipe=resume is None and user_model is None,
                                            resuming=resume is not None)
    distributed.check_devices(cfg.devices, dist)  # before any image is decoded
    config = {**cfg.model_dump(mode="json"), **opts.model_dump(mode="json")}
    line = recipe.pop("line") if recipe is not None else None
    if line is not None:
        from rich.console import Console
        (console or Console(stderr=True)).print(f"[bold]{line}[/]", highlight=False)
    if cfg.inherit_from and cfg.init_from:
        raise PocketVisionError("--init-from continues a bundle as it is, --inherit-from takes what fits of one: "
                                "choose one.")
    torch.manual_seed(cfg.seed)
    run = task.setup(data, cfg, opts, console, resuming=resume is not None, user_model=user_model)
    if cfg.inherit_from and resume is None:
        n, total = inherit(run.model, cfg.inherit_from)
        if console is not None:
            console.print(f"inherited {n} of {total} tensors from {cfg.inherit_from}")
    engine = Engine(run, cfg, Path(resume) if resume else None, console, config, name=task.name)
    if dist.main and resume is None:
        written = write_run_config(engine.run_dir / RUN_CONFIG, data, config, line)
        if console is not None:
            console.print(f"config: {written} (edit it and rerun: pocketvision train --config {written})",
                          highlight=False)
    result = engine.fit()
    if result.interrupted:
        raise KeyboardInterrupt
    if not dist.main:
        return None, None
    parts = run.finish(result.best, result.run_dir)
    labels, metrics = parts.pop("labels"), parts.pop("metrics")
    metrics.update(best_epoch=result.best_epoch, train_seconds=round(result.seconds, 1))
    if result.best is not None:  # the task's own "higher is better" number for the best epoch (what search ranks)
        metrics["val_score"] = float(result.best.score[0])
    meta = bundle_io.new_meta(task.name, run.spec, labels, run.contract, metrics=metrics, train_config=config,
                              history=result.history, **parts)
    if recipe is not None:
        meta["recipe"] = recipe
    return meta, run.model


RUN_CONFIG = "config.yaml"


def write_run_config(path: Path, data: str | Path, config: dict[str, Any], recipe_line: str | None) -> Path:
    """The run's whole configuration as `train --config` reads it: every option as resolved (the recipe's choices
    included, the recipe itself then off), so the file alone repeats the run and an edit changes only what it says."""
    import yaml
    doc = {"data": str(Path(data).resolve()), **{k: v for k, v in config.items() if k not in ("progress", "run_dir")},
           "recipe": False, "lr_reference_batch": config.get("lr_reference_batch") or config["batch_size"]}
    head = "# pocketvision train --config THIS_FILE (flags on the command line override it)\n"
    if recipe_line:
        head += "".join(f"# {ln}\n" for ln in recipe_line.splitlines())
    atomic_write_bytes(path, (head + yaml.safe_dump(doc, sort_keys=False)).encode())
    return path


def inherit(model: nn.Module, path: str | Path) -> tuple[int, int]:
    """Copy into ``model`` every tensor of the bundle at ``path`` whose name and shape match; -> (copied, total).
    Any bundle will do (another architecture, another task): what does not match keeps its fresh init."""
    from safetensors.torch import load as st_load
    parent = st_load(bundle_io.read(path).weights)
    state = model.state_dict()
    same = {k: v for k, v in parent.items() if k in state and state[k].shape == v.shape and state[k].dtype == v.dtype}
    model.load_state_dict(same, strict=False)
    return len(same), len(state)


def find_lr(data: str | Path, options: dict[str, Any], out_png: str | Path, start: float = 1e-6, end: float = 1.0,
            steps: int = 100, console=None) -> dict[str, Any]:
    """LR range test (Smith 2015) on any task's training loss -> {"suggested_lr", "lrs", "losses", "plot"};
    the suggestion is where the loss falls fastest."""
    import numpy as np

    if distributed.from_env().active:
        raise PocketVisionError("the LR range test runs in one process: start it without torchrun.")
    task, cfg, opts, _ = split_options(data, {**options, "tensorboard": False})
    distributed.check_devices(cfg.devices, distributed.Dist())
    if cfg.compile:
        raise PocketVisionError("--compile: the LR range test runs uncompiled (a few hundred steps do not repay the "
                                "compile time); leave it out.")
    if cfg.inherit_from and cfg.init_from:
        raise PocketVisionError("--init-from continues a bundle as it is, --inherit-from takes what fits of one: "
                                "choose one.")
    torch.manual_seed(cfg.seed)
    run = task.setup(data, cfg, opts, console, resuming=False, user_model=None)
    engine = Engine(run, cfg, None, console, name="find-lr")
    lrs, losses = engine.lr_range_test(start, end, steps)
    lg, ls = np.log10(lrs), np.array(losses)
    cut = max(3, int(np.argmin(ls)))  # steepest descent before the minimum
    grad = np.gradient(ls[:cut], lg[:cut]) if cut >= 3 else np.array([0.0])
    suggested = float(lrs[int(np.argmin(grad))]) if len(grad) > 1 else float(lrs[0])

    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.axvline(suggested, color="r", ls="--", label=f"suggested {suggested:.1e}")
    ax.set_xscale("log"), ax.set_xlabel("learning rate"), ax.set_ylabel("loss (smoothed)"), ax.legend()
    ax.set_title("LR range test")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(out_png, buf.getvalue())
    return {"suggested_lr": suggested, "lrs": lrs, "losses": losses, "plot": str(out_png)}
