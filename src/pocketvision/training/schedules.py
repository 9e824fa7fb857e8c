"""Learning-rate schedules as per-step multipliers of the peak LR.

Cyclical LRs (Smith 2017: triangular, triangular2, exp_range) are what the Not Hotdog team used; cosine
and one-cycle are the modern defaults. Each returns ``f(step) -> factor`` for ``LambdaLR``.
"""

from __future__ import annotations

import math
from collections.abc import Callable


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
    from ..errors import unknown_choice
    raise unknown_choice("schedule", name, ("onecycle", "cosine", "triangular", "triangular2", "exp_range", "constant"))
