"""Palettisation: every weight of a layer becomes one of 2^bits shared values (k-means per layer).

The Not Hotdog team shrank their download to ~25% this way. The model keeps its float architecture
(weights are "dequantised" palette values), so torch, ONNX, LiteRT and Core ML all run it unchanged;
each exporter then stores the palette natively where it can (ONNX: packed indices + a look-up table
that onnxruntime folds at load time, see ``export/onnx_palette.py``; Core ML: its own palettisation).

BatchNorm is folded into the preceding convolution *before* clustering: exporters fold it anyway.
Folding multiplies each output channel by a different factor, so by default every channel is divided
by its largest magnitude first and one shared palette is fitted to the normalised values (one scale
per channel, as Core ML's ``enable_per_channel_scale``). Measured on EfficientNet-Lite0 (hotdog val +
its phone-photo twin, no fine-tuning): 8-bit per-layer palettes lost 2.7 points on the twin, channel-
scaled ones 0.5. Folded BN layers become exact identities (scale 1, mean 0, var 1 - eps) plus a shift,
so the architecture and its state-dict keys do not change.

Steps: ``fold_batchnorm_`` -> ``eligible_layers`` -> ``sensitivity`` (optional) -> ``palettize``
(mixed bits by budget) -> ``finetune_centroids`` (optional).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from ..errors import PocketVisionError
from .palette_codec import encode


class PaletteConfig(BaseModel):
    """Palettisation settings (validated; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bits: int = Field(4, ge=2, le=8, description="palette of 2^bits values per layer (or group)")
    min_size: int = Field(1024, ge=1, description="layers with fewer weights stay float")
    group_channels: int = Field(0, ge=0, description="0: one palette per layer; N: one per N output channels")
    channel_scale: bool | None = Field(None, description="one shared palette of values divided by each output "
                                                         "channel's largest magnitude (default: on unless "
                                                         "group_channels)")
    layer_bits: dict[str, int] = Field(default_factory=dict, description="per-layer bits (0 = keep float)")
    max_drop: float | None = Field(1.0, ge=0, description="accuracy budget in points for mixed bits "
                                                          "(None: every layer at `bits`)")
    finetune_steps: int = Field(0, ge=0, description="centroid fine-tuning steps (0 = off)")
    sensitivity: Literal["fisher", "scan"] = Field(
        "fisher", description="how layers are ranked for 8 bits: 'fisher' (one backward pass per batch for every "
                              "layer at once, HAWQ-style) or 'scan' (palettise each layer alone and measure)")

    @model_validator(mode="after")
    def _scale_or_groups(self):
        if self.channel_scale and self.group_channels:
            raise ValueError("channel_scale and group_channels are two ways to fit channels of different ranges: "
                             "choose one")
        return self

    @property
    def scaled(self) -> bool:
        return self.channel_scale if self.channel_scale is not None else not self.group_channels


@dataclass
class LayerPalette:
    name: str
    shape: tuple[int, ...]
    bits: int  # 0 = float
    sensitivity: float | None = None  # accuracy change (points) when only this layer is palettised ('scan')
    prob_change: float | None = None  # mean |dp| vs the float model, same condition ('scan')
    fisher: float | None = None  # estimated loss increase 1/2 sum F_ii dw_i^2 of palettising it alone ('fisher')


@dataclass
class PaletteReport:
    layers: list[LayerPalette] = field(default_factory=list)
    base_accuracy: float | None = None
    accuracy: float | None = None
    float_bytes: int = 0  # fp32 bytes of the palettised layers
    palette_bytes: int = 0  # packed indices + look-up tables of the same layers
    within_budget: bool | None = None
    note: str | None = None
    finetuned: bool = False  # the palette values were fine-tuned (and that result kept)

    def to_dict(self) -> dict[str, Any]:
        return {"base_accuracy": self.base_accuracy, "accuracy": self.accuracy, "float_bytes": self.float_bytes,
                "within_budget": self.within_budget, "note": self.note, "finetuned": self.finetuned,
                "palette_bytes": self.palette_bytes,
                "layers": [{"name": la.name, "shape": list(la.shape), "bits": la.bits,
                            "sensitivity": la.sensitivity, "prob_change": la.prob_change, "fisher": la.fisher}
                           for la in self.layers]}


# -- k-means in one dimension ---------------------------------------------------------------------
def kmeans_1d(values: np.ndarray, k: int, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars -> (sorted centroids float32 [k'], uint8 index per value).

    Hand-written because in 1-D assignment is a binary search against the midpoints and the update is
    a segment mean of the sorted values: ~50x faster than a general k-means on a million weights.
    Centroids start at quantiles, which also keeps outliers from stealing a centroid each.
    """
    flat = values.ravel().astype(np.float64)
    x = np.sort(flat)
    uniq = np.unique(x)
    if len(uniq) <= k:  # already palettised (or tiny): exact
        c = uniq
    else:
        c = np.quantile(x, (np.arange(k) + 0.5) / k)
        csum = np.concatenate([[0.0], np.cumsum(x)])
        for _ in range(iters):
            b = np.concatenate([[0], np.searchsorted(x, (c[1:] + c[:-1]) / 2), [len(x)]])
            n = np.diff(b)
            new = np.where(n > 0, (csum[b[1:]] - csum[b[:-1]]) / np.maximum(n, 1), c)
            if np.allclose(new, c, rtol=0, atol=1e-12):
                break
            c = np.sort(new)
    idx = np.searchsorted((c[1:] + c[:-1]) / 2, flat).astype(np.uint8)
    return c.astype(np.float32), idx


def palettize_tensor(w: torch.Tensor, bits: int, group_channels: int = 0, channel_scale: bool = False
                     ) -> torch.Tensor:
    """Replace ``w``'s values by their nearest of 2^bits k-means centroids (per group of output channels), or with
    ``channel_scale`` by ``scale[c] * centroid``: one palette of the values divided by each output channel's largest
    magnitude. Its ends are pinned at -1 and +1, so the scale of a channel stays its largest magnitude exactly and
    the palette can be read back from the weights alone (``palette_codec.encode``)."""
    a = w.detach().cpu().numpy().astype(np.float32)
    if channel_scale and a.ndim >= 2:
        flat = a.reshape(a.shape[0], -1)
        scale = np.abs(flat).max(axis=1)
        v = flat / np.where(scale > 0, scale, 1)[:, None]
        inner = v[np.abs(v) < 1]
        c = np.concatenate([[-1.0], kmeans_1d(inner, 2 ** bits - 2)[0] if inner.size else [], [1.0]])
        idx = np.searchsorted((c[1:] + c[:-1]) / 2, v.ravel())
        out = c.astype(np.float32)[idx].reshape(flat.shape) * scale[:, None].astype(np.float32)
        return torch.from_numpy(out.reshape(a.shape).astype(np.float32)).to(w.dtype)
    out = np.empty_like(a)
    groups = [slice(0, a.shape[0])] if not group_channels else \
        [slice(i, i + group_channels) for i in range(0, a.shape[0], group_channels)]
    for g in groups:
        c, idx = kmeans_1d(a[g], 2 ** bits)
        out[g] = c[idx].reshape(a[g].shape)
    return torch.from_numpy(out).to(w.dtype)


def palette_bytes(numel: int, out_channels: int, bits: int, group_channels: int = 0,
                  channel_scale: bool = False) -> int:
    groups = 1 if not group_channels else -(-out_channels // group_channels)
    packed_bits = 4 if bits <= 4 else 8  # what the ONNX carrier stores (nibbles or bytes)
    return -(-numel * packed_bits // 8) + groups * (2 ** bits) * 4 + (4 * out_channels if channel_scale else 0)


# -- BatchNorm folding that keeps the architecture -------------------------------------------------
def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, bn name) for every BatchNorm fed only by a convolution (found by tracing the graph)."""
    import torch.fx as fx
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable user models: nothing folded
        return []
    mods = dict(model.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(mods.get(src.target), nn.Conv2d)
                and len(src.users) == 1):
            pairs.append((src.target, node.target))
    return pairs


@torch.no_grad()
def fold_batchnorm_(model: nn.Module) -> list[str]:
    """Fold each conv->BN pair in place: the conv takes the scale, the BN keeps only a shift.

    After this the BN is y = x + shift (weight 1, mean 0, running_var chosen so var + eps == 1 in
    float32), so exporters that fold it again leave the conv's weights bit-identical.
    """
    mods = dict(model.named_modules())
    folded = []
    for conv_name, bn_name in conv_bn_pairs(model):
        conv, bn = mods[conv_name], mods[bn_name]
        if not bn.track_running_stats or bn.running_var is None:
            continue
        scale = (bn.weight if bn.affine else torch.ones_like(bn.running_mean)) / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
        conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
        if conv.bias is not None:
            shift = shift + conv.bias * scale
            conv.bias.zero_()
        if not bn.affine:
            continue  # the shift has nowhere to go; leave this pair alone
        one = torch.ones_like(bn.running_var)
        bn.running_var.copy_(one - bn.eps)
        if not torch.all(bn.running_var + bn.eps == one):
            bn.running_var.copy_(one)  # float rounding: nearly identity
        bn.running_mean.zero_()
        bn.weight.copy_(one)
        bn.bias.copy_(shift)
        folded.append(conv_name)
    return folded


def eligible_layers(model: nn.Module, min_size: int) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d | nn.Linear) and m.weight.numel() >= min_size}


# -- the stage -------------------------------------------------------------------------------------
EvalFn = Callable[[nn.Module], tuple[float, np.ndarray]]  # model -> (accuracy 0..1, probabilities)


def apply_bits(model: nn.Module, bits: dict[str, int], group_channels: int = 0, channel_scale: bool = False,
               cache: dict[tuple[str, int], torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``model`` with each named layer palettised to its bits (0 = unchanged). ``cache`` keeps each
    (layer, bits) result across calls on the same model: a search tries many mixes of the same palettes."""
    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    cache = {} if cache is None else cache
    with torch.no_grad():
        for name, b in bits.items():
            if b:
                w = mods[name].weight
                if (name, b) not in cache:
                    cache[name, b] = palettize_tensor(w, b, group_channels, channel_scale)
                w.copy_(cache[name, b])
    return out


def sensitivity(model: nn.Module, layers: list[str], bits: int, evaluate: EvalFn, group_channels: int = 0,
                base: tuple[float, np.ndarray] | None = None, channel_scale: bool = False
                ) -> dict[str, tuple[float, float]]:
    """Per layer: (accuracy change in points, mean |dp|) when only that layer is palettised."""
    acc0, p0 = base or evaluate(model)
    out = {}
    for name in layers:
        acc, p = evaluate(apply_bits(model, {name: bits}, group_channels, channel_scale))
        out[name] = (100.0 * (acc - acc0), float(np.abs(p - p0).mean()))
    return out


def fisher_sensitivity(model: nn.Module, layers: list[str], bits: int, batches: Iterable[torch.Tensor],
                       sampled_nll: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                       group_channels: int = 0, seed: int = 0, channel_scale: bool = False) -> dict[str, float]:
    """Per layer, the loss increase palettising it alone is expected to cause, ``1/2 sum_i F_ii dw_i^2``, from
    the diagonal of the Fisher information (a second-order estimate as in HAWQ, Dong et al. 2019, with the Fisher
    standing in for the Hessian). One forward/backward per batch serves every layer, instead of one held-out
    evaluation per layer. Labels are drawn from the model's own predictions, so the expected cross terms of a
    batch gradient vanish and its square estimates the summed per-photo Fisher (``sampled_nll``: the task's)."""
    mods = dict(model.named_modules())
    weights = [mods[n].weight for n in layers]
    fisher = [torch.zeros_like(w) for w in weights]
    g = torch.Generator().manual_seed(seed)
    model.eval()
    n = 0
    for x in batches:
        grads = torch.autograd.grad(sampled_nll(model(x), g), weights)
        for f, gr in zip(fisher, grads):
            f.add_(gr.detach() ** 2)
        n += len(x)
    out = {}
    with torch.no_grad():
        for name, w, f in zip(layers, weights, fisher):
            dw = palettize_tensor(w, bits, group_channels, channel_scale) - w
            out[name] = float(0.5 * (f * dw**2).sum() / max(n, 1))
    return out


def palettize(model: nn.Module, cfg: PaletteConfig, evaluate: EvalFn | None = None,
              log: Callable[[str], None] = lambda s: None,
              refine: Callable[[nn.Module], nn.Module] | None = None,
              fisher_batches: Callable[[], Iterable[torch.Tensor]] | None = None,
              sampled_nll: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
              refine_if_over: bool = False, base_accuracy: float | None = None) -> tuple[nn.Module, PaletteReport]:
    """-> (palettised copy, report). ``evaluate`` (on held-out images) enables mixed bits: layers are raised to
    8 bits, most sensitive first, until the accuracy drop is within ``cfg.max_drop`` points. Sensitivity is the
    Fisher estimate on ``fisher_batches`` (training photos) with the task's ``sampled_nll`` when both are given and
    ``cfg.sensitivity == "fisher"``, else the one-layer-at-a-time scan on the held-out images.

    How many of the ranked layers go to 8 bits is a binary search on the held-out images *before* ``refine``
    (e.g. centroid fine-tuning, the expensive part: ~100 s for Lite0 on 2 cores), which then runs once on the
    chosen mix; its result is kept only if it is not worse. Each search step costs one evaluation (the palettes of
    each layer are clustered once), so the whole allocation is log2(layers) evaluations and one fine-tune, not
    log2(layers) fine-tunes. Searching unrefined errs towards more 8-bit layers (larger, never less accurate).
    ``refine_if_over``: fine-tune only when the chosen mix still misses the budget (Lite0: the search alone lands
    within it, and 29 fine-tuning steps cost 2.5 of the 5 minutes without changing the result). ``base_accuracy``:
    the float model's, when the caller has measured it already."""
    tune = refine
    refine = refine or (lambda m: m)
    work = copy.deepcopy(model).eval()
    fold_batchnorm_(work)
    layers = eligible_layers(work, cfg.min_size)
    unknown = sorted(set(cfg.layer_bits) - set(dict(work.named_modules())))
    if unknown:
        raise PocketVisionError(f"layer_bits names unknown layer(s) {unknown}; see `pocketvision compress "
                                f"--scan` for the layer names.")
    bits = {n: cfg.bits for n in layers}
    bits.update(cfg.layer_bits)
    report = PaletteReport()
    free = [n for n in layers if n not in cfg.layer_bits]
    cache: dict[tuple[str, int], torch.Tensor] = {}

    def palettised(b: dict[str, int]) -> nn.Module:
        return apply_bits(work, b, cfg.group_channels, cfg.scaled, cache)
    if evaluate is None:
        report.finetuned = tune is not None
        return _report(refine(palettised(bits)), bits, cfg, report, {}, {})
    base = None if base_accuracy is not None else evaluate(work)
    report.base_accuracy = base_accuracy if base is None else base[0]
    order, sens, fish = _ranked(work, free, cfg, evaluate, base, fisher_batches, sampled_nll, log)

    def drop(a: float) -> float:
        return 100 * (report.base_accuracy - a)

    def over(a: float) -> bool:
        return cfg.max_drop is not None and drop(a) > cfg.max_drop + 1e-9

    def raised(k: int) -> dict[str, int]:
        return {**bits, **{n: 8 for n in order[:k]}}
    measured: dict[int, float] = {}

    def acc_at(k: int) -> float:  # k most sensitive layers at 8 bits, before fine-tuning
        if k not in measured:
            measured[k] = evaluate(palettised(raised(k)))[0]
            log(f"  {k} layers at 8 bits before fine-tuning: drop {drop(measured[k]):.2f} points")
        return measured[k]
    lo, hi = 0, len(order)  # once searching: k = lo misses the budget, k = hi meets it
    if not over(acc_at(0)) or not order:
        hi = 0
    elif over(acc_at(hi)):
        lo = hi  # nothing to search: the fine-tune below is the last chance
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if over(acc_at(mid)) else (lo, mid)
    bits = raised(hi)
    plain = palettised(bits)
    result, acc = plain, acc_at(hi)
    if tune is not None and (over(acc) or not refine_if_over):
        result, acc = _refined(plain, acc, tune, evaluate, report, log)
    log(f"  {sum(b == 8 for b in bits.values())} of {len(bits)} layers at 8 bits: drop {drop(acc):.2f} points")
    report.accuracy = acc
    report.within_budget = not over(acc)
    if over(acc):
        report.note = (f"the {cfg.max_drop}-point budget is out of reach for palettes here: with "
                       f"{sum(b == 8 for b in bits.values())} of {len(bits)} layers at 8 bits the drop is still "
                       f"{drop(acc):.2f} points (try --int8, or a larger --max-drop)")
        log(f"  {report.note}")
    return _report(result, bits, cfg, report, sens, fish)


def _ranked(work: nn.Module, free: list[str], cfg: PaletteConfig, evaluate: EvalFn, base, fisher_batches,
            sampled_nll, log: Callable[[str], None]
            ) -> tuple[list[str], dict[str, tuple[float, float]], dict[str, float]]:
    """The free layers, most sensitive first -> (order, scan results, Fisher estimates)."""
    sens: dict[str, tuple[float, float]] = {}
    fish: dict[str, float] = {}
    if cfg.sensitivity == "fisher" and fisher_batches is not None and sampled_nll is not None:
        log(f"sensitivity: Fisher estimate for {len(free)} layers at {cfg.bits} bits")
        fish = fisher_sensitivity(work, free, cfg.bits, fisher_batches(), sampled_nll, cfg.group_channels,
                                  channel_scale=cfg.scaled)
    else:
        log(f"sensitivity scan: {len(free)} layers at {cfg.bits} bits")
        sens = sensitivity(work, free, cfg.bits, evaluate, cfg.group_channels, base, cfg.scaled)
    # Most sensitive first: largest estimated loss increase, or largest accuracy loss then probability change.
    order = ([n for n in sorted(fish, key=lambda n: -fish[n]) if cfg.bits < 8] if fish else
             [n for n in sorted(sens, key=lambda n: (sens[n][0], -sens[n][1])) if cfg.bits < 8])
    return order, sens, fish


def _refined(plain: nn.Module, acc: float, tune: Callable[[nn.Module], nn.Module], evaluate: EvalFn,
             report: PaletteReport, log: Callable[[str], None]) -> tuple[nn.Module, float]:
    """The palette values fine-tuned, kept only if held-out photos do not get worse -> (model, accuracy)."""
    log("  fine-tuning the palette values")
    tuned = tune(copy.deepcopy(plain))
    tuned_acc = evaluate(tuned)[0]
    if tuned_acc >= acc:
        report.finetuned = True
        return tuned, tuned_acc
    return plain, acc


def _report(result: nn.Module, bits: dict[str, int], cfg: PaletteConfig, report: PaletteReport,
            sens: dict[str, tuple[float, float]], fish: dict[str, float]) -> tuple[nn.Module, PaletteReport]:
    mods = dict(result.named_modules())
    for name, b in bits.items():
        w = mods[name].weight
        report.layers.append(LayerPalette(name, tuple(w.shape), b, *(sens.get(name, (None, None))),
                                          fisher=fish.get(name)))
        if b:
            report.float_bytes += w.numel() * 4
            report.palette_bytes += palette_bytes(w.numel(), w.shape[0], b, cfg.group_channels, cfg.scaled)
    return result.eval(), report


def finetune_centroids(model: nn.Module, pixels_fn: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                       steps: int, teacher: nn.Module, lr: float = 1e-4, temperature: float = 2.0) -> nn.Module:
    """Train only the palette values (indices fixed), distilling from the float ``teacher``.

    Each palettised weight becomes ``lut[idx]`` (times its channel's fixed scale for channel-scaled palettes); the
    gradient of a centroid is the sum of the gradients of the weights that share it. ``pixels_fn(step)`` -> a
    normalised input batch (N,C,H,W) and labels. Returns the model with updated (still palettised) weights.
    """
    import torch.nn.functional as F

    mods = dict(model.named_modules())
    luts: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...]]] = {}
    pinned: dict[str, torch.Tensor] = {}
    for name, m in mods.items():
        if isinstance(m, nn.Conv2d | nn.Linear):
            w = m.weight.detach()
            pal = encode(w.cpu().numpy())
            if pal is not None and w.numel() > len(pal.lut):
                scale = torch.ones(w.shape[0]) if pal.scale is None else torch.from_numpy(pal.scale)
                luts[name] = (nn.Parameter(torch.from_numpy(pal.lut)), torch.from_numpy(pal.idx.astype(np.int64)),
                              scale.reshape(-1, 1), tuple(w.shape))
                if pal.scale is not None:  # the +-1 ends are what makes each scale readable from the weights
                    pinned[name] = torch.from_numpy(np.abs(pal.lut) == 1)

    def dense(lut: torch.Tensor, idx: torch.Tensor, scale: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return (lut[idx].reshape(shape[0], -1) * scale).reshape(shape)
    if not luts:
        return model
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([v[0] for v in luts.values()], lr=lr)
    model.eval()  # BN statistics stay fixed: only the palette moves
    teacher.eval()
    for step in range(steps):
        x, _ = pixels_fn(step)
        with torch.no_grad():
            t = F.softmax(teacher(x) / temperature, dim=1)
        # functional_call swaps the palettised weights in, so autograd reaches the centroids.
        params = {f"{n}.weight": dense(*v) for n, v in luts.items()}
        s = torch.func.functional_call(model, params, (x,))
        loss = F.kl_div(F.log_softmax(s / temperature, dim=1), t, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for n, mask in pinned.items():
                lut = luts[n][0]
                lut.clamp_(-1 + 1e-4, 1 - 1e-4)
                lut[mask] = torch.sign(lut[mask])
    with torch.no_grad():
        for n, v in luts.items():
            mods[n].weight.copy_(dense(*v))
    for p in model.parameters():
        p.requires_grad_(True)
    return model
