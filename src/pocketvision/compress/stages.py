"""Compression stages: bundle -> (new bundle with its lineage, report), measured on held-out images.

Each stage needs its compression in the task's ``compressions`` (``Bundle.require``); the quality that
budgets are checked against is the task's (``Task.quality``), on the bundle's held-out images.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import PocketVisionError
from .data import budget_quality, held_out, training_pixels
from .prune import prune_separable


def _outputs(bundle, model: nn.Module, x: torch.Tensor) -> np.ndarray:
    head = bundle.plugin.graph_head
    # channels-last on a copy: 1.7x faster on CPU for Lite0's depthwise convolutions (19 s -> 11 s for 374 photos
    # on 2 cores), and the model itself keeps contiguous weights for saving.
    net = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        return np.concatenate([head(net(x[i:i + 64].contiguous(memory_format=torch.channels_last)))[0].numpy()
                               for i in range(0, len(x), 64)])


FISHER_IMAGES = 128  # training photos for the Fisher estimate: 4 forward/backward passes of 32


def palettize_bundle(bundle, bits: int = 4, data: str | Path | None = None, *, max_drop: float | None = 1.0,
                     finetune_steps: int | None = None, min_size: int = 1024, group_channels: int = 0,
                     layer_bits: dict[str, int] | None = None, sensitivity: str = "fisher",
                     channel_scale: bool | None = None, log=lambda s: None) -> tuple[Any, dict[str, Any]]:
    """Round every weight of each layer to one of 2^bits shared values -> (new bundle, report).

    Measured on held-out images (the bundle's val split or ``data``); palette values are fine-tuned on
    training images (``finetune_steps``, distilled from this model); layers are raised to 8 bits, most
    sensitive first, until the quality drop is within ``max_drop`` points.
    """
    bundle.require("palettize", "palettisation")
    from .palettize import PaletteConfig, finetune_centroids, palettize

    refine_if_over = finetune_steps is None  # auto: only when the search alone misses the budget
    if finetune_steps is None:  # auto: 100 steps up to ~1M parameters, fewer (>= 20) for bigger nets
        n_params = sum(p.numel() for p in bundle.model.parameters())
        finetune_steps = min(100, max(20, int(100 * 1e6 / max(n_params, 1))))
    try:
        cfg = PaletteConfig(bits=bits, min_size=min_size, group_channels=group_channels, layer_bits=layer_bits or {},
                            max_drop=max_drop, finetune_steps=finetune_steps, sensitivity=sensitivity,
                            channel_scale=channel_scale)
    except ValueError as e:  # pydantic: one line naming the field
        raise PocketVisionError(f"palettisation settings: {str(e).splitlines()[-1].strip()}") from e
    held = held_out(bundle, data)
    x_val = torch.from_numpy(bundle.contract.normalize(held.pixels))
    reference = _outputs(bundle, bundle.model.eval(), x_val)
    judge = budget_quality(bundle.plugin, bundle.meta, held, reference)

    def evaluate(m: nn.Module) -> tuple[float, np.ndarray]:
        out = _outputs(bundle, m, x_val)
        return judge(out), out

    refine, notes, fisher_batches = None, [], None
    contract, teacher = bundle.contract, bundle.model
    if sensitivity == "fisher" and bundle.plugin.sampled_nll is not None:
        try:  # training photos, never the held-out ones the budget is judged on
            fisher_px = training_pixels(bundle, data, limit=FISHER_IMAGES, seed=1)
        except PocketVisionError as e:
            notes.append(f"Fisher sensitivity skipped (layers scanned one by one): {e}")
        else:
            def fisher_batches():
                return (torch.from_numpy(contract.normalize(fisher_px[i:i + 32]))
                        for i in range(0, len(fisher_px), 32))
    if finetune_steps:
        def refine(m: nn.Module) -> nn.Module:
            try:  # loaded only when a fine-tune runs (512 photos: ~15 s to decode)
                train_px = training_pixels(bundle, data)
            except PocketVisionError as e:
                notes.append(f"palette fine-tuning skipped: {e}")
                return m
            rng = np.random.default_rng(0)

            def batch(step: int):
                x = train_px[rng.integers(0, len(train_px), 32)].copy()
                flip = rng.random(len(x)) < 0.5
                x[flip] = x[flip, :, ::-1]
                return torch.from_numpy(contract.normalize(x)), None
            # 1e-4: at 1e-3, Lite0's 8-bit palettes lost 1.1 points on val after 20 steps (1e-4: 0.5, and
            # 97.9% agreement with the float model on the shifted twin against 95.7%)
            return finetune_centroids(m, batch, finetune_steps, teacher, lr=1e-4)
    model, report = palettize(bundle.model, cfg, evaluate, log=log, refine=refine, fisher_batches=fisher_batches,
                              sampled_nll=bundle.plugin.sampled_nll, refine_if_over=refine_if_over,
                              base_accuracy=judge(reference))
    out = report.to_dict()
    if report.note:
        notes.append(report.note)
    out.update(bits=bits, notes=notes, n_images=len(held.pixels),
               accuracy_change=None if report.accuracy is None else report.accuracy - report.base_accuracy)
    steps = finetune_steps if report.finetuned else 0
    return bundle.derived(model, "palettize", {"bits": bits, "max_drop": max_drop, "finetune_steps": steps,
                                               "min_size": min_size, "group_channels": group_channels,
                                               "channel_scale": cfg.scaled,
                                               "accuracy_before": report.base_accuracy,
                                               "accuracy_after": report.accuracy,
                                               "layer_bits": {la.name: la.bits for la in report.layers}}), out


def auto_palettize(bundle, data: str | Path | None = None, max_drop: float = 1.0, candidates=(2, 3, 4, 6, 8),
                   finetune_steps: int | None = None, log=lambda s: None) -> tuple[Any, dict[str, Any]]:
    """Try palettes of each size in ``candidates`` (mixed bits within the budget) and keep the smallest
    result whose held-out quality drop is within ``max_drop`` points."""
    tried, best = [], None
    for bits in candidates:
        log(f"auto: trying {bits}-bit palettes")
        small, rep = palettize_bundle(bundle, bits, data, max_drop=max_drop, finetune_steps=finetune_steps)
        within = -100 * rep["accuracy_change"] <= max_drop + 1e-9
        tried.append({"bits": bits, "palette_bytes": rep["palette_bytes"], "accuracy": rep["accuracy"],
                      "within_budget": within})
        if within and (best is None or rep["palette_bytes"] < best[1]["palette_bytes"]):
            best = (small, rep)
    if best is None:
        raise PocketVisionError(f"no palette size kept the accuracy drop within {max_drop} points "
                                f"({tried}); raise --max-drop or keep the float model.")
    small, rep = best
    rep["auto"] = tried
    small.meta["lineage"][-1]["auto"] = {"max_drop": max_drop, "tried": tried}
    return small, rep


def prune_bundle(bundle, ratio: float = 0.3, data: str | Path | None = None, *, epochs: int = 10, lr: float = 0.01,
                 log=lambda s: None, **train_options: Any) -> tuple[Any, dict[str, Any]]:
    """Remove ``ratio`` of the channels of every layer (structured), rebuild the smaller net and fine-tune
    it on the training data -> (new bundle, report). ``train_options`` are training options."""
    bundle.require("prune", "pruning")
    from ..pipeline.train import train_model
    held = held_out(bundle, data)
    judge = budget_quality(bundle.plugin, bundle.meta, held, bundle.predict_pixels(held.pixels))

    def quality(b) -> float:
        return judge(b.predict_pixels(held.pixels))
    base = quality(bundle)
    small, spec, rep = prune_separable(bundle.model, bundle.meta["arch"], ratio)
    pruned = type(bundle)({**bundle.meta, "arch": spec}, small)
    before_ft = quality(pruned)
    log(f"pruned {rep.params_before:,} -> {rep.params_after:,} parameters; accuracy {base:.4f} -> "
        f"{before_ft:.4f} before fine-tuning")
    d = bundle.meta.get("data", {})
    root = data or d.get("root")
    if not root or not Path(root).is_dir():
        raise PocketVisionError("pruning fine-tunes on the training images: pass --data DIR.")
    cfg = bundle.meta.get("train_config", {})
    with tempfile.TemporaryDirectory() as tmp:
        init = pruned.save(Path(tmp) / "pruned.pvb")
        options = {"task": bundle.task, "arch": spec["name"],
                   "arch_args": {k: v for k, v in spec["args"].items() if k != "num_classes"},
                   "size": bundle.contract.size[0], "pretrained": False, "epochs": epochs, "lr": lr,
                   "optimizer": "sgd", "weight_decay": 5e-4, "schedule": "cosine", "label_smoothing": 0.0,
                   "augment": cfg.get("augment", {}), "val_fraction": d.get("val_fraction", 0.15),
                   "seed": d.get("seed", 0), "run_dir": Path(tmp) / "run", "tensorboard": False,
                   "init_from": str(init), **train_options}
        meta, model = train_model(root, options)
    tuned = type(bundle)(meta, model)
    after = quality(tuned)
    report = {"ratio": ratio, "channels_before": rep.channels_before, "channels_after": rep.channels_after,
              "params_before": rep.params_before, "params_after": rep.params_after,
              "accuracy_before": base, "accuracy_pruned": before_ft, "accuracy_after": after,
              "accuracy_change": after - base, "finetune_epochs": epochs}
    out = bundle.derived(tuned.model, "prune", report)
    # the fine-tune's spec: the pruned channels, and the unfamiliarity score refitted on the pruned features
    out.meta["arch"] = tuned.meta["arch"]
    out.meta["unfamiliar"] = tuned.meta.get("unfamiliar")
    return out, report
