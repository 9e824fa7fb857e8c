"""The training loop, readable top to bottom: data -> model -> (probe) -> epochs -> best -> bundle.

Pretrained architectures first fit a logistic-regression head on frozen features (the linear-probe
baseline, fast and exact), then fine-tune the whole network with augmentation at a lower backbone LR;
the best epoch on validation (the probe counts as epoch 0) is kept, so fine-tuning never ends below
the linear-probe baseline.
"""

from __future__ import annotations

import csv
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..contract import Contract
from ..data.folder import Splits, scan
from ..errors import PocketVisionError
from ..tasks import classify
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .loader import (ImageDataset, _decode_source, decode_all, default_workers, estimate_cache_mb, make_loader,
                     to_input)
from .schedules import make_schedule, progressive_sizes
from .top_tune import supports_top_tune, top_tune


@dataclass(kw_only=True)
class RunResult:
    """What every task's training loop returns besides its data and its validation predictions."""
    model: nn.Module
    spec: dict[str, Any]
    contract: Contract
    history: list[dict[str, Any]] = field(default_factory=list)
    val_paths: list[Path] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    run_dir: Path | None = None
    problems: list[str] = field(default_factory=list)
    interrupted: bool = False


@dataclass(kw_only=True)
class FitResult(RunResult):
    splits: Splits
    val_probs: np.ndarray | None = None
    val_labels: np.ndarray | None = None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PocketVisionError(f"device={name!r} but CUDA is not available here. Use --device cpu.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise PocketVisionError(f"device={name!r} is not a torch device (auto, cpu, cuda, cuda:N).") from None


def build(cfg: TrainConfig, num_classes: int, user_model: nn.Module | None) -> tuple[nn.Module, dict, Contract]:
    from ..models import build_model, check_input_size, model_entry

    if user_model is not None:  # bring your own model: contract from the config, weights from the user
        size = cfg.size or 224
        return user_model, {"name": "custom", "class": type(user_model).__qualname__,
                            "args": {"num_classes": num_classes}}, Contract(size=(size, size), resize="squash")
    arch = cfg.arch or "efficientnet_lite0"
    entry = model_entry(arch)
    spec = {"name": arch, "args": {**cfg.arch_args, "num_classes": num_classes}}
    base = Contract.from_dict(entry.default_contract)
    size = (cfg.size, cfg.size) if cfg.size else base.size
    check_input_size(arch, size, spec["args"])
    if cfg.init_from:  # start from a bundle's weights and keep its preprocessing contract
        from ..api import load
        parent = load(cfg.init_from)
        if parent.meta["arch"].get("args", {}) != spec["args"] or parent.meta["arch"].get("name") != spec["name"]:
            raise PocketVisionError(f"{cfg.init_from}: its architecture {parent.meta['arch']} differs from the "
                                    f"requested {spec}; train with the same --arch and --arch-args.")
        return parent.model, spec, parent.contract
    model = build_model(spec, pretrained=cfg.pretrained and entry.pretrained)
    return model, spec, Contract.from_dict({**base.to_dict(), "size": list(size)})


@torch.no_grad()
def run_model(model: nn.Module, loader, contract: Contract, device, channels_last: bool, features: bool = False,
              amp_dtype=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (outputs, labels, indices) for a whole loader, in eval mode."""
    model.eval()
    outs, ys, idxs = [], [], []
    fn = model.forward_features if features else model
    ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    for batch in loader:
        if batch is None:
            continue
        x, y, idx = batch
        with ctx:
            o = fn(to_input(x, contract, device, channels_last))
        outs.append(o.float().cpu().numpy())
        ys.append(y.numpy())
        idxs.append(idx.numpy())
    if not outs:
        raise PocketVisionError("no readable images to run the model on.")
    return np.concatenate(outs), np.concatenate(ys), np.concatenate(idxs)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _val_score(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    acc = float((probs.argmax(1) == y).mean())
    loss = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1)).mean())
    return acc, loss


def _make_optimizer(cfg: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(groups, alpha=0.9, momentum=0.9, eps=1e-3, weight_decay=cfg.weight_decay)


def _set_bn_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class _Logger:
    """CSV always; TensorBoard when available and asked for."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.csv_path = run_dir / "log.csv"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard not installed: CSV only
                self.tb = None

    def epoch(self, row: dict[str, Any]) -> None:
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, int | float):
                    self.tb.add_scalar(k.replace("_", "/", 1), v, row["epoch"])

    def scalar(self, tag: str, v: float, step: int) -> None:
        if self.tb:
            self.tb.add_scalar(tag, v, step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()


def _grid(x: torch.Tensor, cols: int = 8) -> np.ndarray:
    """uint8 NHWC batch -> one HWC image grid (TensorBoard 'augmented inputs')."""
    n, h, w, c = x.shape
    rows = math.ceil(n / cols)
    out = np.zeros((rows * h, cols * w, c), np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        out[r * h:(r + 1) * h, k * w:(k + 1) * w] = x[i].numpy()
    return out


def fit(data: str | Path, cfg: TrainConfig, user_model: nn.Module | None = None, resume: Path | None = None,
        console=None) -> FitResult:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..data.augment import AugmentConfig, Augmenter

    console = console or Console(stderr=True)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    splits = scan(data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    num_classes = len(splits.classes)
    model, spec, contract = build(cfg, num_classes, user_model)
    # checked before any image is decoded; epoch -> training input size
    sizes = _progressive(cfg, spec, contract, cfg.epochs) if cfg.progressive and not cfg.linear_probe else None
    device = pick_device(cfg.device)
    cuda = device.type == "cuda"
    # auto = on for our registry models on CPU too: PyTorch's CPU (oneDNN) convolutions also run faster in NHWC
    # (2 cores, DeepDog alpha=0.5 @160 model step: 180 img/s against 134 in NCHW). A user's own module stays NCHW
    # unless asked: a `.view()` after its convs would fail on channels_last strides.
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and (cuda or spec["name"] != "custom"))
    amp_dtype = None
    if cfg.amp == "on" or (cfg.amp == "auto" and cuda):
        amp_dtype = torch.bfloat16 if (not cuda or torch.cuda.is_bf16_supported()) else torch.float16
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    run_dir = Path(resume or cfg.run_dir or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    workers = default_workers() if cfg.workers is None else cfg.workers

    # --- data: decode once into RAM when it fits, else decode lazily in the workers -----------------
    aug_cfg = AugmentConfig(**cfg.augment)
    augmenter = Augmenter(aug_cfg, contract)
    problems: list[str] = []
    fit_fn = contract.load
    src_fn = lambda p: _decode_source(p, contract)  # noqa: E731
    train_samples, val_samples = list(splits.train), list(splits.val)
    use_cache = estimate_cache_mb(len(train_samples), contract, True) <= cfg.cache_mb
    console.print(f"[bold]data[/] {splits.root}: {len(splits.classes)} classes {splits.classes}, "
                  f"train {len(train_samples)}, val {len(val_samples)} "
                  f"({'folders' if splits.explicit else f'stratified split, seed {cfg.seed}'})")
    t0 = time.perf_counter()
    val_cache, p = decode_all(val_samples, fit_fn)
    problems += p
    train_cache = None
    if use_cache:
        train_cache, p = decode_all(train_samples, src_fn)
        problems += p
    for msg in problems:
        console.print(f"[yellow]skipped unreadable image[/] {msg}")
    keep = [i for i, a in enumerate(val_cache) if a is not None]
    val_samples, val_cache = [val_samples[i] for i in keep], [val_cache[i] for i in keep]
    if train_cache is not None:
        keep = [i for i, a in enumerate(train_cache) if a is not None]
        train_samples, train_cache = [train_samples[i] for i in keep], [train_cache[i] for i in keep]
    if not val_samples or not train_samples:
        raise PocketVisionError(f"{data}: no readable images in the {'val' if not val_samples else 'train'} split.")
    console.print(f"decoded {len(train_samples) + len(val_samples)} images in {time.perf_counter() - t0:.1f}s "
                  f"({'RAM cache' if use_cache else 'lazy decode'}, {workers} workers)")

    counts = [sum(1 for s in train_samples if s.label == c) for c in range(num_classes)]
    missing = [splits.classes[c] for c, n in enumerate(counts) if n == 0]
    if missing:
        raise PocketVisionError(f"{data}: class(es) {missing} have no readable training images.")
    weights = classify.class_weights(counts, cfg.class_weights)
    if weights is not None and len(weights) != num_classes:
        raise PocketVisionError(f"class_weights has {len(weights)} values but the data has {num_classes} classes "
                                f"{splits.classes}.")
    if weights is not None:
        weights = weights.to(device)

    train_ds = ImageDataset(train_samples, contract, augmenter, cfg.seed, train_cache, sizes=sizes)
    plain_train_ds = ImageDataset(train_samples, contract, None, cfg.seed, train_cache)
    val_ds = ImageDataset(val_samples, contract, None, cfg.seed, val_cache, fitted=True)
    eval_bs = max(cfg.batch_size, 64)
    val_loader = make_loader(val_ds, eval_bs, False, 0, cfg.seed)
    y_val = np.array([s.label for s in val_samples])
    logger = _Logger(run_dir, cfg.tensorboard)
    history: list[dict[str, Any]] = []
    is_pretrained = cfg.pretrained and spec["name"] != "custom" and _has_pretrained(spec["name"])
    freeze_bn = cfg.freeze_bn if cfg.freeze_bn is not None else is_pretrained

    def evaluate(net: nn.Module | None = None) -> tuple[np.ndarray, float, float]:
        logits, y, _ = run_model(net or model, val_loader, contract, device, channels_last, amp_dtype=amp_dtype)
        probs = _softmax(logits)
        acc, loss = _val_score(probs, y)
        return probs, acc, loss

    start_epoch, best = 1, None
    best_state, best_epoch, best_probs = None, 0, None
    opt_state: dict = {}
    if resume is not None:
        sd, opt_state, meta = load_checkpoint(run_dir)
        model.load_state_dict(sd)
        start_epoch = int(meta["next_epoch"])
        best = tuple(meta["best"]) if meta.get("best") else None
        best_epoch = int(meta.get("best_epoch", 0))
        history = meta.get("history", [])
        if (run_dir / "best.safetensors").exists():
            from safetensors.torch import load_file
            best_state = load_file(str(run_dir / "best.safetensors"))
        console.print(f"[bold]resuming[/] {run_dir} at epoch {start_epoch}")

    # --- pretrained + 'top': probe, then the last blocks on cached activations (top_tune.py) --------
    label_smoothing = cfg.label_smoothing if cfg.label_smoothing is not None else (0.0 if is_pretrained else 0.1)
    if (resume is None and is_pretrained and cfg.finetune == "top"
            and supports_top_tune(model, cfg.top_blocks) and device.type == "cpu"):
        def log(row: dict) -> None:
            history.append(row)
            logger.epoch({k: v for k, v in row.items() if k != "best"})
            what = "linear probe" if row["phase"] == "probe" else f"top fine-tune {row['epoch']}/{cfg.epochs}"
            console.print(f"{what}: val acc {row['val_acc']:.4f}  val loss {row['val_loss']:.4f}  "
                          f"({row['seconds']:.0f}s){'  *best' if row.get('best') else ''}")
        if sizes:  # the top blocks train on cached activations of full-size images: nothing to resize
            console.print("[yellow]--progressive has no effect with --finetune top[/] (use --finetune full)")
        train_px = _fitted_train(train_samples, train_cache, contract)
        res = top_tune(model, cfg.top_blocks, train_px, np.array([s.label for s in train_samples]),
                       np.stack(val_cache), y_val, contract, epochs=0 if cfg.linear_probe else cfg.epochs,
                       lr=cfg.lr or 3e-5, weight_decay=cfg.weight_decay, label_smoothing=label_smoothing,
                       class_weights=weights, seed=cfg.seed,
                       probe=(lambda f, y: classify.fit_probe(f, y, num_classes, balanced=cfg.class_weights == "auto"))
                       if (cfg.probe_init or cfg.linear_probe) else None, log=log)
        logger.close()
        model = model.cpu().to(memory_format=torch.contiguous_format).eval()
        return FitResult(model=model, spec=spec, contract=contract, splits=splits, history=history,
                         val_probs=res["best_probs"], val_labels=y_val, val_paths=[s.path for s in val_samples],
                         best_epoch=res["best_epoch"], seconds=time.perf_counter() - t_start, run_dir=run_dir,
                         problems=problems)

    # --- linear probe: the frozen-feature baseline, and the head's starting point --------------------
    if resume is None and is_pretrained and (cfg.linear_probe or cfg.probe_init):
        t0 = time.perf_counter()
        plain_loader = make_loader(plain_train_ds, eval_bs, False, workers if not use_cache else 0, cfg.seed)
        tr_f, tr_y, _ = run_model(model, plain_loader, contract, device, channels_last, features=True,
                                  amp_dtype=amp_dtype)
        W, b = classify.fit_probe(tr_f, tr_y, num_classes, balanced=cfg.class_weights == "auto")
        head = classify.final_linear(model)
        with torch.no_grad():
            head.weight.copy_(W.to(device))
            head.bias.copy_(b.to(device))
        probs, acc, loss = evaluate()
        row = {"epoch": 0, "phase": "probe", "train_loss": float("nan"), "val_loss": loss, "val_acc": acc,
               "lr": 0.0, "img_per_s": len(train_samples) / (time.perf_counter() - t0),
               "seconds": time.perf_counter() - t_start}
        history.append(row)
        logger.epoch(row)
        best, best_epoch, best_probs = (acc, -loss), 0, probs
        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        console.print(f"linear probe: val acc {acc:.4f}  loss {loss:.4f}  ({time.perf_counter() - t0:.1f}s)")

    epochs = 0 if cfg.linear_probe else cfg.epochs
    mix_rng = np.random.default_rng([cfg.seed, 7])
    teacher = Teacher(cfg.distill, splits.classes, device, cfg.distill_t) if cfg.distill else None
    if epochs and start_epoch <= epochs:
        train_loader = make_loader(train_ds, cfg.batch_size, True, workers, cfg.seed, drop_last=len(train_ds) > cfg.batch_size)
        steps_per_epoch = max(1, len(train_loader))
        peak = cfg.lr or (1e-4 if is_pretrained else 3e-3)
        if hasattr(model, "head_parameters") and is_pretrained:
            head_ids = {id(p) for p in model.head_parameters()}
            groups = [{"params": [p for p in model.parameters() if id(p) not in head_ids], "lr": peak * cfg.backbone_lr_mult,
                       "name": "backbone"},
                      {"params": [p for p in model.parameters() if id(p) in head_ids], "lr": peak, "name": "head"}]
        else:
            groups = [{"params": list(model.parameters()), "lr": peak, "name": "all"}]
        for g in groups:
            g["initial_lr"] = g["lr"]
        optimizer = _make_optimizer(cfg, groups)
        if opt_state:
            optimizer.load_state_dict(opt_state)
        ema = _make_ema(model, cfg.ema, run_dir if resume is not None else None)
        scored = ema.module if ema is not None else model  # what is evaluated and kept
        sched_fn = make_schedule(cfg.schedule, epochs * steps_per_epoch, steps_per_epoch, cfg.clr_cycle_epochs)
        step = (start_epoch - 1) * steps_per_epoch

        def set_lr(s: int) -> float:
            f = sched_fn(s)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * f
            return optimizer.param_groups[-1]["lr"]

        interrupted = False
        old_handler = signal.getsignal(signal.SIGINT)
        progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[of]}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
                            disable=not cfg.progress, transient=True)
        stale = 0
        try:
            with progress:
                for epoch in range(start_epoch, epochs + 1):
                    frozen = epoch <= cfg.freeze_epochs and hasattr(model, "backbone_parameters")
                    for p in (model.backbone_parameters() if hasattr(model, "backbone_parameters") else []):
                        p.requires_grad_(not frozen)
                    model.train()
                    if freeze_bn or frozen:
                        _set_bn_eval(model)
                    train_ds.set_epoch(epoch)
                    task = progress.add_task("train", total=steps_per_epoch, epoch=epoch, of=epochs, info="")
                    t_ep, seen, loss_sum = time.perf_counter(), 0, 0.0
                    for bi, batch in enumerate(train_loader):
                        if batch is None:
                            continue
                        x, y, _ = batch
                        if epoch == start_epoch and bi == 0 and logger.tb:
                            logger.tb.add_image("inputs/augmented", _grid(x[:32]), epoch, dataformats="HWC")
                        lr = set_lr(step)
                        y_b, lam = y, 1.0
                        if cfg.mixup and mix_rng.random() < cfg.mixup:
                            x, y_b, lam = _cutmix(x, y, mix_rng)
                        xin = to_input(x, contract, device, channels_last)
                        y, y_b = y.to(device, non_blocking=True), y_b.to(device, non_blocking=True)
                        ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
                        with ctx:
                            logits = model(xin)
                        loss = F.cross_entropy(logits.float(), y, weight=weights, label_smoothing=label_smoothing)
                        if lam < 1.0:
                            loss = lam * loss + (1 - lam) * F.cross_entropy(
                                logits.float(), y_b, weight=weights, label_smoothing=label_smoothing)
                        if teacher is not None:
                            loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * teacher.loss(x, logits)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        if ema is not None:
                            ema.update_parameters(model)
                        step += 1
                        seen += len(y)
                        loss_sum += float(loss.detach()) * len(y)
                        if step % 10 == 0:
                            logger.scalar("lr", lr, step)
                        ips = seen / (time.perf_counter() - t_ep)
                        progress.update(task, advance=1, info=f"loss {loss_sum / seen:.4f}  lr {lr:.2e}  {ips:.0f} img/s")
                    train_time = time.perf_counter() - t_ep
                    probs, acc, vloss = evaluate(scored)
                    progress.remove_task(task)
                    row = {"epoch": epoch, "phase": "frozen" if frozen else "train", "train_loss": loss_sum / max(1, seen),
                           "val_loss": vloss, "val_acc": acc, "lr": lr, "img_per_s": seen / train_time,
                           "seconds": time.perf_counter() - t_start}
                    history.append(row)
                    logger.epoch(row)
                    score = (acc, -vloss)
                    improved = best is None or score > best
                    if improved:
                        best, best_epoch, best_probs, stale = score, epoch, probs, 0
                        best_state = {k: v.detach().cpu().clone() for k, v in scored.state_dict().items()}
                        from safetensors.torch import save as st_save

                        from ..bundle import atomic_write_bytes
                        atomic_write_bytes(run_dir / "best.safetensors",
                                           st_save({k: v.contiguous() for k, v in best_state.items()}))
                    else:
                        stale += 1
                    px = f"  {train_ds.sizes[epoch][0]}px" if train_ds.sizes else ""
                    console.print(f"epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f}  val loss {vloss:.4f}  "
                                  f"val acc {acc:.4f}  {row['img_per_s']:.0f} img/s  {train_time:.0f}s{px}"
                                  f"{'  *best' if improved else ''}")
                    if ema is not None:
                        _save_ema(run_dir, ema)
                    save_checkpoint(run_dir, model, optimizer, {"next_epoch": epoch + 1, "best": best,
                                                                "best_epoch": best_epoch, "history": history,
                                                                "config": cfg.model_dump(mode="json"), "spec": spec})
                    if cfg.early_stopping and stale >= cfg.early_stopping:
                        console.print(f"early stopping: no improvement for {stale} epochs")
                        break
        except KeyboardInterrupt:
            # The epoch in flight is lost, the last finished one is on disk: `--resume` redoes the rest.
            interrupted = True
            signal.signal(signal.SIGINT, old_handler)
            console.print(f"[yellow]interrupted[/]: resume with `pocketvision train {data} --resume {run_dir}`")
        if interrupted:
            logger.close()
            return FitResult(model=model, spec=spec, contract=contract, splits=splits, history=history,
                             run_dir=run_dir, interrupted=True, problems=problems)

    if best_state is not None:
        model.load_state_dict(best_state)
    probs = best_probs
    if probs is None:
        probs, _, _ = evaluate()
    if logger.tb:
        _log_embeddings(logger.tb, model, val_loader, val_samples, splits.classes, contract, device, channels_last)
    logger.close()
    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    return FitResult(model=model, spec=spec, contract=contract, splits=splits, history=history,
                     val_probs=probs, val_labels=y_val, val_paths=[s.path for s in val_samples],
                     best_epoch=best_epoch, seconds=time.perf_counter() - t_start, run_dir=run_dir,
                     problems=problems)


EMA_FILE = "ema.safetensors"


def _make_ema(model: nn.Module, decay: float, resume_dir: Path | None):
    """Exponential moving average of the weights (and BN statistics). The decay ramps up as
    (1+n)/(10+n) so the first epochs are not dominated by the random initialisation."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel

    def update(avg: list[torch.Tensor], cur: list[torch.Tensor], n: torch.Tensor) -> None:
        # Called once per (device, dtype) group: one foreach kernel for every tensor. A per-tensor avg_fn cost 3.0 ms
        # per step for DeepDog alpha=0.5 on 2 cores (7 ms under training load); this costs 1.3 ms.
        if not avg[0].is_floating_point():
            torch._foreach_copy_(avg, cur)  # BN's num_batches_tracked: the model's count
            return
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        torch._foreach_lerp_(avg, cur, 1.0 - d)

    ema = AveragedModel(model, multi_avg_fn=update, use_buffers=True)
    if resume_dir is not None and (resume_dir / EMA_FILE).exists():
        from safetensors.torch import load_file
        state = load_file(str(resume_dir / EMA_FILE))
        ema.n_averaged.fill_(int(state.pop("__n_averaged__")))
        ema.module.load_state_dict(state)
    return ema


def _save_ema(run_dir: Path, ema) -> None:
    from safetensors.torch import save as st_save

    from ..bundle import atomic_write_bytes
    state = {k: v.detach().cpu().contiguous() for k, v in ema.module.state_dict().items()}
    state["__n_averaged__"] = ema.n_averaged.detach().cpu().reshape(1)
    atomic_write_bytes(run_dir / EMA_FILE, st_save(state))


def _cutmix(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator):
    """CutMix (Yun et al. 2019) on the uint8 batch: a box from another image, labels mixed by area.

    Done on raw pixels so a distillation teacher sees exactly the student's mixed input.
    """
    n, h, w, _ = x.shape
    perm = torch.from_numpy(rng.permutation(n))
    lam = rng.beta(1.0, 1.0)
    bh, bw = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
    cy, cx = rng.integers(0, h), rng.integers(0, w)
    y0, y1, x0, x1 = max(cy - bh // 2, 0), min(cy + bh // 2, h), max(cx - bw // 2, 0), min(cx + bw // 2, w)
    x = x.clone()
    x[:, y0:y1, x0:x1] = x[perm, y0:y1, x0:x1]
    return x, y[perm], 1 - (y1 - y0) * (x1 - x0) / (h * w)


def _progressive(cfg: TrainConfig, spec: dict, contract: Contract, epochs: int) -> dict[int, tuple[int, int]]:
    if spec["name"] == "custom":
        raise PocketVisionError("progressive resizing needs a model that takes any input size: use a registry "
                                "architecture (pocketvision info), or train your own module without --progressive.")
    try:
        return progressive_sizes(cfg.progressive, contract.size, epochs, until=cfg.progressive_until)
    except ValueError as e:
        raise PocketVisionError(f"--progressive {cfg.progressive}: {e}.") from None


class Teacher:
    """Knowledge distillation (Hinton et al. 2015): a trained bundle's softened outputs on the *same
    augmented pixels* guide the student; its own contract normalises them, so the two may differ."""

    def __init__(self, path: str, classes: list[str], device: torch.device, temperature: float):
        from ..api import load
        b = load(path)
        if b.labels != classes:
            raise PocketVisionError(f"{path}: teacher labels {b.labels} differ from the data's classes {classes}.")
        self.model = b.model.to(device).eval().to(memory_format=torch.channels_last)
        self.contract, self.device, self.t = b.contract, device, temperature

    @torch.no_grad()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(to_input(x, self.contract, self.device, True)).float() / self.t, dim=1)

    def loss(self, x: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(student_logits.float() / self.t, dim=1)
        return F.kl_div(log_p, self.probs(x), reduction="batchmean") * self.t**2


def _fitted_train(samples, cache, contract: Contract) -> np.ndarray:
    """Training images resized per the contract (no augmentation), from the RAM cache when present."""
    from PIL import Image
    if cache is not None:
        return np.stack([contract.fit(Image.fromarray(a)) for a in cache])
    arrays, _ = decode_all(samples, contract.load)
    return np.stack([a for a in arrays if a is not None])


def _has_pretrained(name: str) -> bool:
    from ..models import model_entry
    return bool(model_entry(name).pretrained)


def _log_embeddings(tb, model, loader, samples, classes, contract, device, channels_last) -> None:
    """TensorBoard projector: pooled val features with labels and thumbnails."""
    if not hasattr(model, "forward_features"):
        return
    feats, ys, idx = run_model(model, loader, contract, device, channels_last, features=True)
    thumbs = []
    for i in idx:
        a = loader.dataset.cache[i]
        thumbs.append(torch.from_numpy(np.ascontiguousarray(a[::max(1, a.shape[0] // 32), ::max(1, a.shape[1] // 32)][:32, :32])))
    label_img = torch.stack(thumbs).permute(0, 3, 1, 2).float() / 255
    tb.add_embedding(torch.from_numpy(feats), metadata=[classes[y] for y in ys], label_img=label_img, tag="val")
