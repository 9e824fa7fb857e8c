"""Training recipes: the best known settings for an architecture, chosen for the user, never a paragraph to copy.

A task plug-in proposes a :class:`Recipe` for (architecture, pretrained or not, data-set size, device) through
``Task.recipe``; :func:`apply_recipe` lays it between the task's engine defaults and what the user typed, so
every field stays overridable (a flag always wins, key by key for ``arch_args`` and ``augment``). The chosen
recipe is printed when training starts and recorded in the bundle (``meta["recipe"]``) with the fields it set
and the ones the user overrode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RecipeContext:
    """What a recipe may depend on."""

    arch: str
    pretrained: bool  # ImageNet weights will be loaded (the architecture has them and --scratch was not given)
    device: str  # "cpu" or "cuda"
    n_images: int | None  # training images (None: not counted)
    size: int | None = None  # the input side asked for (a flag, or a searched architecture's file); None: not given


@dataclass(frozen=True)
class Recipe:
    name: str
    why: str  # where it comes from: the measurement that chose it
    engine: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    arch_args: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # the task's own options
    # Fields that only work together: the user setting one of a group leaves the whole group to the user (an
    # SGD learning rate of 0.1 under the user's AdamW would diverge).
    # Progressive resizing's start is chosen for the recipe's size: a size of the user's own turns it off.
    coupled: tuple[tuple[str, ...], ...] = (("optimizer", "lr", "weight_decay"),
                                            ("size", "progressive", "progressive_until"))


def scaled_epochs(base_epochs: int, base_images: int, n_images: int | None, floor: int, *,
                  grow_to: int | None = None) -> int:
    """``base_epochs`` measured on ``base_images``; a bigger data set gets the same number of image steps
    (never fewer than ``floor`` epochs), a smaller one the measured count -- or, with ``grow_to``, the same number
    of image steps too (at most ``grow_to`` epochs): for tasks whose training is a number of samples, not passes."""
    if not n_images or n_images == base_images:
        return base_epochs
    if n_images < base_images:
        return base_epochs if grow_to is None else min(grow_to, -(-base_epochs * base_images // n_images))
    return max(floor, round(base_epochs * base_images / n_images))


def apply_recipe(recipe: Recipe, given: dict[str, Any], task_given: dict[str, Any]
                 ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """-> (engine fields to set, task options to set, record for the bundle).

    ``given``: the TrainConfig fields the user set; ``task_given``: the task options the user set. A field the
    user set keeps the user's value; ``arch_args`` and ``augment`` merge key by key (the user's keys win)."""
    held = {k for group in recipe.coupled if any(g in given for g in group) for k in group}
    engine = {k: v for k, v in recipe.engine.items() if k not in given and k not in held}
    if recipe.arch_args:
        engine["arch_args"] = {**recipe.arch_args, **given.get("arch_args", {})}
    if recipe.augment:
        engine["augment"] = {**recipe.augment, **given.get("augment", {})}
    options = {k: v for k, v in recipe.options.items() if k not in task_given}
    overridden = sorted([k for k in recipe.engine if k in given] + [k for k in recipe.options if k in task_given]
                        + [f"arch_args.{k}" for k in recipe.arch_args if k in given.get("arch_args", {})]
                        + [f"augment.{k}" for k in recipe.augment if k in given.get("augment", {})])
    applied = {**{k: v for k, v in engine.items() if k not in ("arch_args", "augment")}, **options,
               **{f"arch_args.{k}": v for k, v in recipe.arch_args.items() if f"arch_args.{k}" not in overridden},
               **{f"augment.{k}": v for k, v in recipe.augment.items() if f"augment.{k}" not in overridden}}
    record = {"name": recipe.name, "why": recipe.why, "applied": applied, "overridden": overridden,
              "left_with_yours": sorted(k for k in held if k in recipe.engine and k not in given)}
    return engine, options, record


def describe(record: dict[str, Any], ctx: RecipeContext) -> str:
    """One line for the start of training."""
    where = (f"{ctx.arch}, {'pretrained' if ctx.pretrained else 'from scratch'}"
             f"{f', {ctx.n_images:,} images' if ctx.n_images else ''}, {ctx.device}")
    fields = " ".join(f"{k}={v}" for k, v in record["applied"].items()) or "the defaults"
    over = f"; yours: {', '.join(record['overridden'])}" if record["overridden"] else ""
    if record["left_with_yours"]:
        over += f" (so {', '.join(record['left_with_yours'])} keep the engine default)"
    return f"recipe {record['name']} ({where}): {fields}{over} (any flag overrides)"
