"""The search space: mobile networks built from the registry's blocks, and the mutations evolution applies.

A candidate is plain JSON, what a bundle stores and `train --arch searched:FILE` reads back:

    {"arch": {"name": "searched", "args": {"stem", "stem_act", "head", "dropout", "blocks": [...]}},
     "resolution": 96, "lr": 0.003}

Blocks are ``models/searched.py``'s (``mbconv`` / ``sep`` / ``conv``; kernel 3/5/7; expansion; stride; activation
ELU/ReLU/ReLU6/h-swish; squeeze-excite; skip; BN placement). Random candidates look like MobileNets: a stem, then
stages whose first block halves the resolution and whose widths grow. Mutations are the ones of Real et al. (2017,
2019) and the MnasNet/ProxylessNAS spaces: width, depth (insert/remove a block), kernel, stride, activation,
squeeze-excite, skip, BN placement, block type, expansion, input resolution, learning rate, and identity (train the
same network again).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np

from ..models._base import ACTIVATIONS, make_divisible
from ..models.searched import BN_PLACES, KERNELS, check_blocks, total_stride

RESOLUTIONS = (64, 96, 128, 160, 192, 224)
STEMS = (8, 16, 24, 32)
STAGE_WIDTHS = (16, 24, 40, 80, 112, 160)  # MobileNetV2/EfficientNet-B0's, one per stage
EXPANDS = (1, 3, 4, 6)
HEADS = (0, 256, 512, 1024)
LRS = (1e-3, 2e-3, 3e-3, 5e-3, 1e-2)
MUTATIONS = ("width", "depth+", "depth-", "kernel", "stride", "activation", "se", "skip", "bn", "op", "expand",
             "resolution", "lr", "identity")
MAX_BLOCKS = 20
WIDTH_SCALES = (1.0, 1.25, 1.5, 2.0)  # the final stage's scaling up (final.py)


def key(c: dict[str, Any]) -> str:
    """One string per distinct candidate (what is trained: architecture, resolution, learning rate)."""
    return json.dumps(c, sort_keys=True)


def valid(c: dict[str, Any]) -> bool:
    blocks = c["arch"]["args"]["blocks"]
    return 1 <= len(blocks) <= MAX_BLOCKS and c["resolution"] // total_stride(blocks) >= 2


def random_candidate(rng: np.random.Generator, resolutions: tuple[int, ...] = RESOLUTIONS) -> dict[str, Any]:
    for _ in range(100):
        stages = int(rng.integers(3, 6))
        act = str(rng.choice(ACTIVATIONS))
        bn = "post" if rng.random() < 0.8 else str(rng.choice(BN_PLACES))
        blocks = []
        for s in range(stages):
            width = make_divisible(STAGE_WIDTHS[s] * float(rng.choice((0.5, 0.75, 1.0, 1.25))), 8)
            op = "sep" if rng.random() < 0.3 else "mbconv"
            k, e, se = int(rng.choice(KERNELS)), int(rng.choice(EXPANDS)), bool(rng.random() < 0.3)
            for d in range(int(rng.integers(1, 4))):
                blocks.append({"op": op, "out": width, "k": k, "stride": 2 if d == 0 else 1, "expand": e,
                               "act": act, "se": se, "skip": True, "bn": bn})
        c = {"arch": {"name": "searched", "args": {
            "stem": int(rng.choice(STEMS)), "stem_act": act, "head": int(rng.choice(HEADS)), "dropout": 0.1,
            "blocks": blocks}}, "resolution": int(rng.choice(resolutions)), "lr": float(rng.choice(LRS))}
        if valid(c):
            return c
    raise RuntimeError("no valid random candidate in 100 draws")  # the space's bounds are inconsistent


def _step(choices: tuple, value: Any, rng: np.random.Generator) -> Any:
    """A neighbour of ``value`` in ``choices`` (ordered): one step up or down."""
    i = choices.index(value) if value in choices else int(np.argmin([abs(v - value) for v in choices]))
    j = min(len(choices) - 1, max(0, i + int(rng.choice((-1, 1)))))
    return choices[j] if j != i else choices[i - 1 if i > 0 else i + 1]


def mutate(parent: dict[str, Any], rng: np.random.Generator, resolutions: tuple[int, ...] = RESOLUTIONS
           ) -> tuple[dict[str, Any], str]:
    """A valid child of ``parent`` and the mutation that made it (input sides from ``resolutions``)."""
    for _ in range(50):
        c = copy.deepcopy(parent)
        args = c["arch"]["args"]
        blocks = args["blocks"]
        kind = str(rng.choice(MUTATIONS))
        i = int(rng.integers(len(blocks)))
        b = blocks[i]
        if kind == "width":
            b["out"] = min(512, make_divisible(b["out"] * float(rng.choice((0.75, 1.25))), 8))
        elif kind == "depth+":
            blocks.insert(i + 1, {**b, "stride": 1})
        elif kind == "depth-":
            ones = [j for j, x in enumerate(blocks) if x["stride"] == 1]
            if len(blocks) < 2 or not ones:
                continue
            blocks.pop(int(rng.choice(ones)))
        elif kind == "kernel":
            b["k"] = int(rng.choice([k for k in KERNELS if k != b["k"]]))
        elif kind == "stride":
            b["stride"] = 3 - b["stride"]
        elif kind == "activation":
            act = str(rng.choice([a for a in ACTIVATIONS if a != b["act"]]))
            if rng.random() < 0.5:
                b["act"] = act
            else:  # the whole network (the Not Hotdog team's ELU vs ReLU question)
                for x in blocks:
                    x["act"] = act
                args["stem_act"] = act
        elif kind == "se":
            b["se"] = not b["se"]
        elif kind == "skip":
            b["skip"] = not b["skip"]
        elif kind == "bn":
            bn = str(rng.choice([p for p in BN_PLACES if p != b["bn"]]))
            for x in blocks:
                x["bn"] = bn
        elif kind == "op":
            b["op"] = str(rng.choice([o for o in ("mbconv", "sep", "conv") if o != b["op"]]))
        elif kind == "expand":
            b["expand"] = int(_step(EXPANDS, b["expand"], rng))
        elif kind == "resolution":
            if len(resolutions) < 2:
                continue
            c["resolution"] = int(_step(tuple(resolutions), c["resolution"], rng))
        elif kind == "lr":
            c["lr"] = float(_step(LRS, c["lr"], rng))
        if kind != "identity" and key(c) == key(parent):
            continue
        check_blocks(blocks)
        if valid(c):
            return c, f"{kind} (block {i})" if kind in ("width", "depth+", "kernel", "stride", "se", "skip", "op",
                                                          "expand") else kind
    return copy.deepcopy(parent), "identity"


def scaled(c: dict[str, Any], width: float, resolution: int) -> dict[str, Any]:
    """``c`` with every width (stem, blocks, head) times ``width`` at input side ``resolution``: two of
    EfficientNet's three compound-scaling axes. Depth stays: the search chose the number of blocks per stage."""
    c = copy.deepcopy(c)
    args = c["arch"]["args"]
    args["stem"] = make_divisible(args["stem"] * width, 8)
    if args.get("head"):
        args["head"] = make_divisible(args["head"] * width, 8)
    for b in args["blocks"]:
        b["out"] = make_divisible(b["out"] * width, 8)
    c["resolution"] = int(resolution)
    return c


def describe(c: dict[str, Any]) -> str:
    """A short human summary: resolution, stages as op/width/kernel, activation(s)."""
    blocks = c["arch"]["args"]["blocks"]
    acts = sorted({b["act"] for b in blocks})
    parts = [f"{b['op'][0]}{b['out']}k{b['k']}{'s2' if b['stride'] == 2 else ''}{'+se' if b['se'] else ''}"
             for b in blocks]
    return f"{c['resolution']}px {len(blocks)} blocks [{' '.join(parts)}] {'/'.join(acts)} lr {c['lr']:g}"


__all__ = ["MUTATIONS", "WIDTH_SCALES", "describe", "key", "mutate", "random_candidate", "scaled", "valid"]
