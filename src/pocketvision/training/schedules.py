"""Learning-rate schedules as per-step multipliers of the peak LR, and the input-size schedule of progressive resizing.

Cyclical LRs (Smith 2017: triangular, triangular2, exp_range) are what the Not Hotdog team used; cosine
and one-cycle are the modern defaults. Each returns ``f(step) -> factor`` for ``LambdaLR``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..errors import unknown_choice


def make_schedule(name: str, total_steps: int, steps_per_epoch: int, cycle_epochs: float = 2.0,
                  base_frac: float = 0.1, gamma: float = 0.9995) -> Callable[[int], float]:
    total = max(1, total_steps)
    half = max(1, round(cycle_epochs * steps_per_epoch))  # half a cycle, in steps

    def tri(step: int) -> float:
        cycle = step // (2 * half)
        x = abs(step / half - 2 * cycle - 1)  # 1 -> 0 -> 1 over a cycle
        return max(0.0, 1 - x), cycle

    if name == "constant":
        return lambda s: 1.0
    if name == "cosine":
        warm = min(steps_per_epoch, total // 10)
        return lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))
    if name == "onecycle":
        up = max(1, int(0.25 * total))

        def one(s: int) -> float:
            if s < up:  # cosine warm-up from lr/25
                return 0.04 + 0.96 * 0.5 * (1 - math.cos(math.pi * s / up))
            p = (s - up) / max(1, total - up)
            return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))
        return one
    if name == "triangular":
        return lambda s: base_frac + (1 - base_frac) * tri(s)[0]
    if name == "triangular2":
        return lambda s: base_frac + (1 - base_frac) * tri(s)[0] / (2 ** tri(s)[1])
    if name == "exp_range":
        return lambda s: base_frac + (1 - base_frac) * tri(s)[0] * gamma ** s
    raise unknown_choice("schedule", name, ("onecycle", "cosine", "triangular", "triangular2", "exp_range", "constant"))


def progressive_sizes(start: int, final: tuple[int, int], epochs: int, until: float = 0.75,
                      multiple: int = 16) -> dict[int, tuple[int, int]]:
    """Progressive resizing (fast.ai; EfficientNetV2's progressive learning): epoch (1-based) -> training (h, w).

    An epoch at ``start`` px costs about (start / final)^2 of a full-size one, so more epochs fit in the same time;
    from scratch on a small data set more epochs is what raises accuracy. The long side grows linearly from
    ``start`` to the model's size over the first ``until`` of the run, rounded down to ``multiple`` px, and the rest
    trains at exactly the model's size, so that BatchNorm's statistics are those of the exported resolution.
    """
    h, w = final
    side = max(h, w)
    if not multiple <= start < side:
        raise ValueError(f"progressive start {start} px must be at least {multiple} and below the model's {side} px")
    ramp = max(1, round(until * epochs))
    sizes = {}
    for e in range(1, epochs + 1):
        if e > ramp:
            sizes[e] = (h, w)
            continue
        f = (start + (side - start) * (e - 1) / ramp) / side
        sizes[e] = tuple(max(multiple, int(d * f) // multiple * multiple) for d in (h, w))
    return sizes


def lr_factor(cfg) -> tuple[float, str]:
    """-> (factor on the default/recipe peak LR, what was done) for ``--lr-scaling``."""
    ref = cfg.lr_reference_batch
    if cfg.lr_scaling == "off" or not ref or ref == cfg.batch_size:
        return 1.0, ""
    rule = cfg.lr_scaling if cfg.lr_scaling != "auto" else ("linear" if cfg.optimizer == "sgd" else "sqrt")
    f = cfg.batch_size / ref if rule == "linear" else (cfg.batch_size / ref) ** 0.5
    return f, f"LR x{f:.3g} for batch {cfg.batch_size} (the default LR goes with {ref}; {rule} scaling)"
