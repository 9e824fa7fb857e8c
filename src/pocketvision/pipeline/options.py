"""A flat ``train(**options)`` -> the task, the engine's config, the task's own options and the recipe.

The engine's options are ``training.config.TrainConfig``; each task's are its ``Options`` model. This module sits
above both (it asks the task registry), so neither has to know the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from ..errors import PocketVisionError
from ..tasks import get_task, task_names
from ..tasks.base import detect_task, option_owner, parse_options, refuse_foreign
from ..training.config import TrainConfig, make_config
from ..training.recipes import RecipeContext, apply_recipe, describe

TaskName = Literal[("auto", *task_names())]  # type: ignore[valid-type]  # from the registry


def split_options(data: str | Path, options: dict[str, Any], *, recipe: bool = True, resuming: bool = False):
    """A flat ``train(**options)`` -> (task plug-in, engine config, the task's options, recipe record or None).

    The task is ``task=`` or, with ``auto``, the one that owns the task options given, else the first whose
    ``detect`` accepts ``data``. An option of another task, or an engine option the task cannot use, is refused.
    With ``recipe`` the task's recipe for this architecture, data and device fills what the user did not set
    (``training/recipes.py``); then the task's engine defaults.
    """
    engine = {k: v for k, v in options.items() if k in TrainConfig.model_fields}
    rest = {k: v for k, v in options.items() if k not in TrainConfig.model_fields}
    cfg = make_config(**engine)
    if cfg.task != "auto":
        task = get_task(cfg.task)
    else:  # data that only one task reads, else the task whose options were given, else the fallback
        found = detect_task(data)
        owners = {o for k in rest for o in option_owner(k)}
        if found.fallback and len(owners) == 1 and all(option_owner(k) for k in rest):
            found = get_task(owners.pop())
        task = found
    refused = [k for k in task.refuses if k in cfg.model_fields_set
               and getattr(cfg, k) != TrainConfig.model_fields[k].default]
    foreign = [k for k in rest if k not in task.Options.model_fields and option_owner(k)]
    if refused or foreign:  # one line for everything this task cannot use
        flags = ", ".join("--" + k.replace("_", "-") for k in refused + foreign)
        why = [f"--{k.replace('_', '-')}: {task.refuses[k]}" for k in refused]
        why += [f"--{k.replace('_', '-')} is a{'n' if option_owner(k)[0][0] in 'aeiou' else ''} "
                f"{' and '.join(option_owner(k))} option" for k in foreign]
        many = len(refused) + len(foreign) > 1
        raise PocketVisionError(f"{flags}: a {task.name} training does not use {'them' if many else 'it'} "
                                f"({'; '.join(why)}). Leave {'them' if many else 'it'} out.")
    refuse_foreign(task, rest, "Options", "training")  # unknown names: 'did you mean'
    given = {k: getattr(cfg, k) for k in cfg.model_fields_set}
    record, recipe_engine = None, {}
    if recipe and cfg.recipe and not cfg.init_from:  # a run from a bundle is a fine-tune, not a fresh recipe
        ctx = recipe_context(task, data, cfg)
        chosen = task.recipe(ctx)
        if chosen is not None:
            recipe_engine = chosen.engine
            engine_set, options_set, record = apply_recipe(chosen, given, rest)
            given = {**given, **engine_set}
            rest = {**options_set, **rest}
            record["line"] = describe(record, ctx)
    defaults = {k: v for k, v in task.engine_defaults.items() if k not in given}
    cfg = make_config(**{**defaults, **given, "task": task.name})
    # the batch the default or recipe LR goes with: the recipe's, else the task's default, else the engine's
    if not resuming:  # a resumed run keeps the reference it started with (its config holds it)
        cfg = _lr_reference(cfg, {k for k, v in engine.items() if v is not None},
                            recipe_engine.get("batch_size") or task.engine_defaults.get("batch_size")
                            or TrainConfig.model_fields["batch_size"].default)
    return task, cfg, parse_options(task.Options, rest, "training"), record


def _lr_reference(cfg: TrainConfig, user: set[str], reference: int) -> TrainConfig:
    """Record which batch size (``reference``) the default or recipe LR goes with, so that the engine can scale it
    when the user changed --batch-size (``lr_scaling``); an LR the user gave is never scaled."""
    if "lr" in user:  # used as it is: no reference batch, no scaling
        if "lr_scaling" in user and cfg.lr_scaling in ("linear", "sqrt"):
            raise PocketVisionError(f"--lr-scaling {cfg.lr_scaling} with --lr: an LR you give is used as it is; "
                                    "leave one of them out.")
        return cfg
    if "batch_size" not in user or cfg.lr_reference_batch is not None:
        return cfg
    return cfg.model_copy(update={"lr_reference_batch": reference})


def recipe_context(task, data: str | Path, cfg: TrainConfig):
    """What the recipe depends on: the architecture (the task's default when none was given), whether ImageNet
    weights will load, the device, the number of training images (the task counts them) and the input side asked
    for."""
    from ..models import model_entry
    arch = cfg.arch or task.default_arch[0]
    entry = model_entry(arch)
    device = "cpu"
    if cfg.device != "cpu":
        from ..training.engine import pick_device
        device = pick_device(cfg.device).type
    return RecipeContext(arch=arch, pretrained=bool(cfg.pretrained and entry.pretrained), device=device,
                         n_images=task.count_images(data), size=cfg.size)
