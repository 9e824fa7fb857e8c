"""Regularized (aging) evolution, Real et al. 2019, and the original kill-the-worse rule of Real et al. 2017.

The search proceeds in rounds of ``batch`` candidates. A round's candidates are drawn from the population as it
stood after the previous round, with a generator seeded by (seed, round): so the candidates, and therefore the
whole search, do not depend on how many workers evaluate them or in which order they finish, and a resumed search
proposes exactly what the interrupted one would have.

Population: the first ``population`` evaluations are random architectures, or, when the search starts from known
networks (``starts``: the user's own model, a hand-designed reference), those networks and mutants of them; after
that each child joins and one member leaves, the oldest (``aging``, the regularized rule: every architecture must
keep being re-discovered to stay) or the least fit (``worst``). Parent: the fittest of ``sample`` members drawn at
random (tournament). Fitness: the validation score when the candidate meets the hard limits (measured latency,
size), else the score minus 1 (``constrained``); or MnasNet's weighted product score * (latency / limit) ^ -0.07
(``weighted``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .space import RESOLUTIONS, mutate, random_candidate

RULES = ("aging", "worst")
OBJECTIVES = ("constrained", "weighted")
MNAS_W = -0.07  # MnasNet's soft-constraint exponent


@dataclass
class Evaluated:
    """One trained and measured candidate (a row of history.json)."""

    round: int
    slot: int
    candidate: dict[str, Any]
    parent: int | None  # the index (in evaluation order) of its parent; None for the random population
    mutation: str
    score: float  # the task's validation score, higher is better (accuracy; -NME...)
    latency_ms: float | None
    size_mb: float | None
    predicted_ms: float | None = None  # the block table's prediction
    feasible: bool = True
    skipped: str | None = None  # why it was not trained (the table predicted far above the limit)
    seconds: float = 0.0
    index: int = 0  # position in evaluation order (round, slot)


def fitness(e: Evaluated, objective: str, max_latency_ms: float | None) -> float:
    if objective == "weighted" and max_latency_ms and e.latency_ms:
        return e.score * (e.latency_ms / max_latency_ms) ** MNAS_W
    return e.score if e.feasible else e.score - 1.0


def population_after(history: list[Evaluated], size: int, rule: str, objective: str,
                     max_latency_ms: float | None) -> list[Evaluated]:
    """Replay the history: the population as it stands after the last evaluation."""
    pop: list[Evaluated] = []
    for e in history:
        pop.append(e)
        if len(pop) > size:
            if rule == "aging":
                pop.pop(0)
            else:
                pop.pop(int(np.argmin([fitness(x, objective, max_latency_ms) for x in pop])))
    return pop


def propose(history: list[Evaluated], rnd: int, batch: int, *, seed: int, population: int, sample: int,
            rule: str, objective: str, max_latency_ms: float | None, resolutions: tuple[int, ...] = RESOLUTIONS,
            starts: list[dict[str, Any]] | None = None) -> list[tuple[dict[str, Any], int | None, str]]:
    """Round ``rnd``'s candidates: (candidate, parent index or None, mutation), from ``history`` before it."""
    rng = np.random.default_rng([seed, rnd])
    out: list[tuple[dict[str, Any], int | None, str]] = []
    pop = population_after(history, population, rule, objective, max_latency_ms)
    for slot in range(batch):
        if len(history) + slot < population or len(pop) < 2:
            i = len(history) + slot
            if not starts:
                out.append((random_candidate(rng, resolutions), None, "random"))
            elif i < len(starts):
                out.append((starts[i], None, "start"))
            else:  # the first population spreads around the starting networks (one mutation each)
                child, how = mutate(starts[i % len(starts)], rng, resolutions)
                out.append((child, None, f"start: {how}"))
            continue
        picks = rng.choice(len(pop), size=min(sample, len(pop)), replace=False)
        parent = max((pop[int(i)] for i in picks), key=lambda e: (fitness(e, objective, max_latency_ms), -e.index))
        child, how = mutate(parent.candidate, rng, resolutions)
        out.append((child, parent.index, how))
    return out


def pareto_front(history: list[Evaluated], with_size: bool = True) -> list[Evaluated]:
    """Feasible candidates that no other feasible candidate beats on score, latency (and size) at once."""
    pts = [e for e in history if e.feasible and e.latency_ms is not None and e.skipped is None]

    def costs(e: Evaluated) -> tuple[float, ...]:  # lower is better in every coordinate
        return (-e.score, e.latency_ms, e.size_mb or 0.0) if with_size else (-e.score, e.latency_ms)

    def dominated(a: Evaluated) -> bool:
        ca = costs(a)
        return any(all(x <= y for x, y in zip(costs(b), ca)) and costs(b) != ca for b in pts)
    return sorted((e for e in pts if not dominated(e)), key=lambda e: (e.latency_ms, e.index))


__all__ = ["OBJECTIVES", "RULES", "Evaluated", "fitness", "pareto_front", "population_after", "propose"]
