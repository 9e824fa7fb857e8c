"""The one training loop, for every task: readable top to bottom.

    run = task.setup(...)                      # the task: data, model, per-step maths (tasks/base.py TaskRun)
    result = Engine(run, cfg, ...).fit()       # this module: everything around the steps

The engine owns device placement, channels_last, AMP, the optimiser and its parameter groups, the LR
schedule, EMA of the weights, frozen-backbone epochs and frozen BatchNorm, resume from a checkpoint,
best-epoch weights, early stopping, the progress bar, CSV + TensorBoard logging and Ctrl-C (the epoch in
flight is lost, the last finished one is on disk). A task supplies ``batches``/``forward``/``loss``/
``validate`` and optional hooks (``prologue``: the classifier's linear probe and cached top fine-tune).

Interrupting at a known point (scripts, tests): ``POCKETVISION_INTERRUPT_AFTER_EPOCH=N`` sends this process
a SIGINT right after epoch N's checkpoint is written, exactly what Ctrl-C at that moment does.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.bundle_file import atomic_write_bytes
from ..core.contract import Contract
from ..errors import PocketVisionError
from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .loader import to_input
from .schedules import lr_factor, progressive_sizes

EMA_FILE = "ema.safetensors"
BEST_FILE = "best.safetensors"
INTERRUPT_ENV = "POCKETVISION_INTERRUPT_AFTER_EPOCH"
# With several processes: only this rank is interrupted, with this signal (SIGKILL: a process that dies).
INTERRUPT_RANK_ENV, INTERRUPT_SIGNAL_ENV = "POCKETVISION_INTERRUPT_RANK", "POCKETVISION_INTERRUPT_SIGNAL"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PocketVisionError(f"device={name!r} but CUDA is not available here. Use --device cpu.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise PocketVisionError(f"device={name!r} is not a torch device (auto, cpu, cuda, cuda:N).") from None


def batch_augment_wanted(cfg, augment_enabled: bool, unbatched: str | None = None) -> bool:
    """``--batch-augment``: on, off, or auto = on when training on CUDA (where per-image workers cannot keep up).
    ``unbatched`` names an augmentation the batched path does not have: auto then stays per-image, and an explicit
    ``on`` is refused rather than training without it."""
    if unbatched and augment_enabled and cfg.batch_augment == "on":
        raise PocketVisionError(f"--batch-augment on: {unbatched} runs in the per-image workers only; use "
                                "--batch-augment off (or auto).")
    return augment_enabled and not unbatched and (cfg.batch_augment == "on" or (
        cfg.batch_augment == "auto" and pick_device(cfg.device).type == "cuda"))


def make_optimizer(cfg, groups: list[dict]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(groups, alpha=0.9, momentum=0.9, eps=1e-3, weight_decay=cfg.weight_decay)


def set_bn_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _timed(batches, waited: list[float]):
    """``batches``, adding the time spent waiting for each one to ``waited[0]``: the model's idle share, the
    number that says whether the input pipeline (not the model) limits training."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        waited[0] += time.perf_counter() - t0
        yield batch


def progressive_plan(cfg, contract: Contract, takes_any_size: bool) -> dict[int, tuple[int, int]] | None:
    """epoch -> training input size for ``--progressive`` (checked before any image is decoded)."""
    if not cfg.progressive:
        return None
    if not takes_any_size:
        raise PocketVisionError("progressive resizing needs a model that takes any input size: use a registry "
                                "architecture (pocketvision info), or train your own module without --progressive.")
    try:
        return progressive_sizes(cfg.progressive, contract.size, cfg.epochs, until=cfg.progressive_until)
    except ValueError as e:
        raise PocketVisionError(f"--progressive {cfg.progressive}: {e}.") from None


class Logger:
    """CSV always; TensorBoard when available and asked for. ``write=False``: nothing (the other processes of a
    distributed run; rank 0 logs)."""

    def __init__(self, run_dir: Path, tensorboard: bool, write: bool = True):
        self.csv_path = run_dir / "log.csv"
        self.write = write
        self.tb = None
        if tensorboard and write:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard not installed: CSV only
                self.tb = None

    def epoch(self, row: dict[str, Any]) -> None:
        if not self.write:
            return
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


def grid(x: torch.Tensor, cols: int = 8) -> np.ndarray:
    """uint8 NHWC batch -> one HWC image grid (TensorBoard 'augmented inputs')."""
    n, h, w, c = x.shape
    rows = math.ceil(n / cols)
    out = np.zeros((rows * h, cols * w, c), np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        out[r * h:(r + 1) * h, k * w:(k + 1) * w] = x[i].numpy()
    return out


def make_ema(model: nn.Module, decay: float, resume_dir: Path | None):
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


def save_ema(run_dir: Path, ema) -> None:
    from safetensors.torch import save as st_save
    state = {k: v.detach().cpu().contiguous() for k, v in ema.module.state_dict().items()}
    state["__n_averaged__"] = ema.n_averaged.detach().cpu().reshape(1)
    atomic_write_bytes(run_dir / EMA_FILE, st_save(state))


class Compiled:
    """``--compile``: the training module through ``torch.compile``. Compilation happens in the first step (forward
    and backward); if it fails there (no C++ compiler, an op the compiler cannot take) the run says so in one line
    and goes on uncompiled. A failure in a later step is a real error and is raised."""

    def __init__(self, console):
        self.console, self.ok, self.module, self.compiled = console, True, None, None

    def step(self, module: nn.Module, forward_backward):
        if not self.ok:
            return forward_backward(module)
        if self.module is module:
            return forward_backward(self.compiled)
        # the first step, or a new DDP wrapper after the backbone thawed: compiled now
        self.module, self.compiled = module, torch.compile(module)
        try:
            return forward_backward(self.compiled)
        except Exception as e:  # noqa: BLE001 - any compiler failure; the eager step below re-raises a real error
            what = (str(e).strip().splitlines() or [""])[0][:160]
            self.console.print(f"[yellow]--compile: torch.compile failed ({type(e).__name__}: {what}); training "
                               "without it[/]")
            self.ok = False
            return forward_backward(module)


@dataclass
class _Stepping:
    """What changes at every optimiser step: the optimiser, its schedule (a task's torch scheduler ``own``, else a
    factor of each group's initial LR per step), the EMA, the compiled step and the global step count."""

    optimizer: Any
    own: Any
    sched_fn: Callable[[int], float] | None
    ema: Any
    compiled: Compiled | None
    step: int = 0

    def set_lr(self) -> float:
        """The LR for the coming step (set on every group from the schedule) -> the last group's."""
        if not self.own:
            f = self.sched_fn(self.step)
            for g in self.optimizer.param_groups:
                g["lr"] = g["initial_lr"] * f
        return self.optimizer.param_groups[-1]["lr"]


@dataclass
class EngineResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best: Any = None  # the best epoch's Validation
    best_epoch: int = 0
    seconds: float = 0.0
    run_dir: Path | None = None
    interrupted: bool = False


class Engine:
    """Drives one ``TaskRun`` (see the module docstring)."""

    def __init__(self, run, cfg, resume: Path | None = None, console=None, config_dump: dict | None = None,
                 name: str = "train"):
        from rich.console import Console
        self.run, self.cfg, self.resume = run, cfg, resume
        self.console = console or Console(stderr=True)
        self.config_dump = config_dump or cfg.model_dump(mode="json")
        self.t_start = time.perf_counter()
        self.dist = dist = distributed.from_env()  # train_model checked --devices against it
        self.device = distributed.setup(dist, cfg.device) if dist.active else pick_device(cfg.device)
        run.shard = (dist.rank, dist.world)
        cuda = self.device.type == "cuda"
        # auto = on for our registry models on CPU too: PyTorch's CPU (oneDNN) convolutions also run faster in NHWC
        # (2 cores, DeepDog alpha=0.5 @160 model step: 180 img/s against 134 in NCHW). A user's own module stays NCHW
        # unless asked: a `.view()` after its convs would fail on channels_last strides.
        self.channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and (cuda or run.channels_last_ok))
        self.amp_dtype = None
        if cfg.amp == "on" or (cfg.amp == "auto" and cuda):
            self.amp_dtype = torch.bfloat16 if (not cuda or torch.cuda.is_bf16_supported()) else torch.float16
        run.model = run.model.to(self.device)
        if self.channels_last:
            run.model = run.model.to(memory_format=torch.channels_last)
        self.run_dir = distributed.run_dir_for(resume or cfg.run_dir, name, dist)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logger = Logger(self.run_dir, cfg.tensorboard, write=dist.main)
        self.history: list[dict[str, Any]] = []
        self.best_score: tuple | None = None
        self.best, self.best_epoch, self.best_state = None, 0, None
        self.stale = 0

    # -- helpers for task hooks ---------------------------------------------------------------------
    def to_input(self, x: torch.Tensor, contract: Contract | None = None) -> torch.Tensor:
        """uint8 NHWC batch -> normalised float NCHW on the device, in the engine's memory format."""
        return to_input(x, contract or self.run.contract, self.device, self.channels_last)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def record(self, epoch: int, phase: str, v, *, train_loss: float = float("nan"), lr: float = 0.0,
               img_per_s: float = 0.0, train_time: float | None = None, scored: nn.Module | None = None,
               label: str | None = None, data_wait: float = float("nan")) -> bool:
        """One finished epoch (or a task's epoch 0: its linear probe): history, log, console, best weights.
        ``data_wait``: the share of the epoch's training time spent waiting for the next batch. Rank 0 only."""
        if not self.dist.main:
            return False
        row = {"epoch": epoch, "phase": phase, "train_loss": train_loss, **v.row, "lr": lr, "img_per_s": img_per_s,
               "data_wait": data_wait, "seconds": time.perf_counter() - self.t_start}
        self.history.append(row)
        self.logger.epoch(row)
        improved = self.best_score is None or v.score > self.best_score
        if improved:
            self.best_score, self.best, self.best_epoch, self.stale = v.score, v, epoch, 0
            self.best_state = {k: t.detach().cpu().clone() for k, t in (scored or self.run.model).state_dict().items()}
            if epoch > 0:
                from safetensors.torch import save as st_save
                atomic_write_bytes(self.run_dir / BEST_FILE,
                                   st_save({k: t.contiguous() for k, t in self.best_state.items()}))
        else:
            self.stale += 1
        what = label or f"epoch {epoch}/{self.epochs}"
        took = f"  {train_time:.0f}s" if train_time is not None else f"  ({row['seconds']:.0f}s)"
        speed = f"  {img_per_s:.0f} img/s" if train_time is not None else ""
        speed += f" (data wait {data_wait:.0%})" if not math.isnan(data_wait) else ""
        loss = f"  train loss {train_loss:.4f}" if not math.isnan(train_loss) else ""
        self.console.print(f"{what}{loss}  {v.text}{speed}{took}{self.run.epoch_note(epoch) if epoch else ''}"
                           f"{'  *best' if improved else ''}{self._time_left(epoch)}")
        return improved

    def _time_left(self, epoch: int) -> str:
        """'  about 3m10s left': the epochs to go at this run's mean epoch so far (validation included)."""
        rows = [r for r in self.history if r["epoch"] >= 1]
        if epoch < 1 or epoch >= self.epochs or not rows:
            return ""
        start = max((r["seconds"] for r in self.history if r["epoch"] < 1), default=0.0)  # after a linear probe
        left = int(max(rows[-1]["seconds"] - start, 0.0) / len(rows) * (self.epochs - epoch))
        return f"  about {left // 60}m{left % 60:02d}s left"

    # -- the loop -----------------------------------------------------------------------------------
    def fit(self) -> EngineResult:
        run, cfg = self.run, self.cfg
        self.epochs = epochs = run.epochs(cfg)
        start_epoch, opt_state = self._resumed()
        run.prologue(self, resuming=self.resume is not None)
        interrupted = bool(epochs and start_epoch <= epochs) and self._train(start_epoch, opt_state)
        return self._result(interrupted)

    def _resumed(self) -> tuple[int, dict]:
        """-> (the first epoch to train, the optimiser's state): 1 and nothing, or what the run's checkpoint holds."""
        if self.resume is None:
            return 1, {}
        sd, opt_state, meta = load_checkpoint(self.run_dir)
        self.run.model.load_state_dict(sd)
        self.best_score = tuple(meta["best"]) if meta.get("best") is not None else None
        self.best_epoch = int(meta.get("best_epoch", 0))
        self.history = meta.get("history", [])
        if (self.run_dir / BEST_FILE).exists():
            from safetensors.torch import load_file
            self.best_state = load_file(str(self.run_dir / BEST_FILE))
        self.console.print(f"[bold]resuming[/] {self.run_dir} at epoch {int(meta['next_epoch'])}")
        return int(meta["next_epoch"]), opt_state

    def _optimizer(self, steps_per_epoch: int, start_epoch: int, opt_state: dict) -> _Stepping:
        """The optimiser, the LR schedule (the task's own torch scheduler or a factor per step) and the EMA, at the
        step a resumed run left off."""
        run, cfg, dist = self.run, self.cfg, self.dist
        factor, said = lr_factor(cfg)
        peak = (cfg.lr or run.default_lr) * factor
        if said and dist.main and start_epoch == 1:
            self.console.print(said)
        groups = run.param_groups(peak, cfg.backbone_lr_mult)
        for g in groups:
            g["initial_lr"] = g["lr"]
        optimizer = make_optimizer(cfg, groups)
        if opt_state:
            optimizer.load_state_dict(opt_state)
        total = self.epochs * steps_per_epoch
        own = run.scheduler(optimizer, total)  # a task's own torch LR scheduler, or None
        sched_fn = None if own else run.schedule(cfg.schedule, total, steps_per_epoch, cfg.clr_cycle_epochs)
        ema = make_ema(run.model, cfg.ema, self.run_dir if self.resume is not None else None) if dist.main else None
        s = _Stepping(optimizer, own, sched_fn, ema, Compiled(self.console) if cfg.compile else None,
                      step=(start_epoch - 1) * steps_per_epoch)
        if own:
            for _ in range(s.step):
                own.step()
        return s

    def _train(self, start_epoch: int, opt_state: dict) -> bool:
        """Epochs ``start_epoch``.. with a checkpoint after each -> whether Ctrl-C (or the test hook) stopped it."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        run, cfg, console, dist = self.run, self.cfg, self.console, self.dist
        net = run.trainable
        steps_per_epoch = max(1, run.steps_per_epoch())
        s = self._optimizer(steps_per_epoch, start_epoch, opt_state)
        scored = s.ema.module if s.ema is not None else run.model  # what is evaluated and kept
        interrupt_at = int(os.environ.get(INTERRUPT_ENV, "0") or 0)
        interrupt_rank = os.environ.get(INTERRUPT_RANK_ENV, "")
        interrupt_sig = getattr(signal, os.environ.get(INTERRUPT_SIGNAL_ENV, "SIGINT"))
        old_handler = signal.getsignal(signal.SIGINT)
        armed = interrupt_at and interrupt_sig == signal.SIGINT and old_handler == signal.SIG_IGN
        if armed:  # started in the background, SIGINT arrives ignored; the hook stands for Ctrl-C at a terminal
            signal.signal(signal.SIGINT, signal.default_int_handler)
        progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[of]}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
                            disable=not cfg.progress or not dist.main, transient=True)
        self._ddp, self._ddp_frozen = None, None  # DistributedDataParallel wraps what is trainable in this phase
        try:
            with progress:
                for epoch in range(start_epoch, self.epochs + 1):
                    frozen = self._phase(net, epoch)
                    bar = progress.add_task("train", total=steps_per_epoch, epoch=epoch, of=self.epochs, info="")
                    t_ep, seen, loss_sum, lr, waited = self._epoch(net, epoch, start_epoch, s, progress, bar)
                    train_time = time.perf_counter() - t_ep
                    progress.remove_task(bar)
                    if dist.main:  # one process validates, logs and writes; the others wait in `agree`
                        self._end_epoch(epoch, frozen, scored, s, loss_sum / max(1, seen), lr,
                                        seen * dist.world / train_time, train_time, waited / train_time)
                    stop = distributed.agree(bool(cfg.early_stopping and self.stale >= cfg.early_stopping), dist)
                    if epoch == interrupt_at and interrupt_rank in ("", str(dist.rank)):
                        os.kill(os.getpid(), interrupt_sig)
                    if stop:
                        console.print(f"early stopping: no improvement for {self.stale} epochs")
                        break
            distributed.check_in_sync(net, dist)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, old_handler)
            console.print(f"[yellow]interrupted[/]: resume with `pocketvision train {run.data} --resume "
                          f"{self.run_dir}`")
            return True
        finally:
            run.close()
            if armed:
                signal.signal(signal.SIGINT, old_handler)
        return False

    def _phase(self, net: nn.Module, epoch: int) -> bool:
        """Freeze or thaw the backbone for ``epoch`` (``--freeze-epochs``), BN statistics, DDP -> frozen."""
        backbone = list(net.backbone_parameters()) if hasattr(net, "backbone_parameters") else []
        frozen = epoch <= self.cfg.freeze_epochs and bool(backbone)
        for p in backbone:
            p.requires_grad_(not frozen)
        net.train()
        if (self.cfg.freeze_bn if self.cfg.freeze_bn is not None else self.run.pretrained) or frozen:
            set_bn_eval(net)
        if self.dist.active and self._ddp_frozen is not frozen:
            # DDP reduces the gradients of the parameters that require them when it is built: a new wrapper when
            # the frozen backbone thaws.
            self._ddp, self._ddp_frozen = distributed.wrap(net, self.device), frozen
        return frozen

    def _epoch(self, net: nn.Module, epoch: int, start_epoch: int, s: _Stepping, progress, bar
               ) -> tuple[float, int, float, float, float]:
        """One pass over the task's batches -> (start time, images seen, summed loss, the last LR, seconds waiting
        for data)."""
        run, dist = self.run, self.dist
        stepper = self._ddp if self._ddp is not None else net
        t_ep, seen, loss_sum, lr = time.perf_counter(), 0, 0.0, s.optimizer.param_groups[-1]["lr"]
        waited = [0.0]
        for bi, batch in enumerate(_timed(run.batches(epoch), waited)):
            if batch is None:
                continue
            if epoch == start_epoch and bi == 0 and self.logger.tb:
                shown = run.preview(batch)
                if shown is not None:
                    self.logger.tb.add_image("inputs/augmented", grid(shown[:32]), epoch, dataformats="HWC")
            lr = s.set_lr()
            loss = self._step(stepper, batch, s)
            n = run.batch_size(batch)
            seen += n
            loss_sum += float(loss.detach()) * n
            if s.step % 10 == 0:
                self.logger.scalar("lr", lr, s.step)
            elapsed = time.perf_counter() - t_ep
            rate = seen * dist.world / elapsed  # all processes together
            progress.update(bar, advance=1, info=f"loss {loss_sum / seen:.4f}  lr {lr:.2e}  {rate:.0f} img/s  "
                            f"data wait {waited[0] / elapsed:.0%}")
        return t_ep, seen, loss_sum, lr, waited[0]

    def _step(self, stepper: nn.Module, batch: Any, s: _Stepping) -> torch.Tensor:
        """One optimiser step on ``batch`` (compiled when asked), the LR scheduler and the EMA after it."""
        run = self.run

        def forward_backward(module):
            with self.autocast():
                outputs = run.forward(module, batch)
            loss = run.loss(outputs, batch)
            s.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            return loss
        loss = s.compiled.step(stepper, forward_backward) if s.compiled else forward_backward(stepper)
        s.optimizer.step()
        if s.own:
            s.own.step()
        if s.ema is not None:
            s.ema.update_parameters(run.model)
        s.step += 1
        return loss

    def _end_epoch(self, epoch: int, frozen: bool, scored: nn.Module, s: _Stepping, train_loss: float, lr: float,
                   img_per_s: float, train_time: float, data_wait: float) -> None:
        """Validate, record (best weights, logs) and checkpoint after an epoch."""
        run = self.run
        v = run.validate(scored)
        self.record(epoch, "frozen" if frozen else run.phase(epoch), v, train_loss=train_loss,
                    lr=lr, img_per_s=img_per_s, train_time=train_time,
                    scored=scored, data_wait=data_wait)
        if s.ema is not None:
            save_ema(self.run_dir, s.ema)
        save_checkpoint(self.run_dir, run.model, s.optimizer,
                        {"next_epoch": epoch + 1, "best": self.best_score, "best_epoch": self.best_epoch,
                         "history": self.history, "config": self.config_dump, "spec": run.spec})

    def _result(self, interrupted: bool) -> EngineResult:
        """What ``fit`` hands back; rank 0 keeps the best weights, on the CPU."""
        run = self.run
        if interrupted:
            self.logger.close()
            return EngineResult(history=self.history, run_dir=self.run_dir, interrupted=True)
        distributed.teardown()
        if not self.dist.main:  # rank 0 keeps the best weights and writes the bundle
            self.logger.close()
            return EngineResult(run_dir=self.run_dir, seconds=time.perf_counter() - self.t_start)
        if self.best_state is not None:
            run.model.load_state_dict(self.best_state)
        run.on_end(self)
        self.logger.close()
        run.model = run.model.cpu().to(memory_format=torch.contiguous_format).eval()
        return EngineResult(history=self.history, best=self.best, best_epoch=self.best_epoch,
                            seconds=time.perf_counter() - self.t_start, run_dir=self.run_dir)

    # -- LR range test (Smith 2015), any task --------------------------------------------------------
    def lr_range_test(self, start: float = 1e-6, end: float = 1.0, steps: int = 100) -> tuple[list[float], list[float]]:
        """Raise the LR exponentially for ``steps`` steps and record the smoothed loss; stops early when the
        loss explodes. -> (lrs, losses)."""
        run, cfg = self.run, self.cfg
        self.epochs = run.epochs(cfg)
        run.prologue(self, resuming=False)
        net = run.trainable
        net.train()
        optimizer = make_optimizer(cfg, [{"params": [p for p in net.parameters() if p.requires_grad], "lr": start}])
        mult = (end / start) ** (1 / max(1, steps - 1))
        lrs, losses, smooth, best = [], [], 0.0, math.inf
        step, epoch = 0, 0
        try:
            while step < steps:
                for batch in run.batches(epoch + 1):
                    if batch is None:
                        continue
                    lr = start * mult**step
                    for g in optimizer.param_groups:
                        g["lr"] = lr
                    with self.autocast():
                        outputs = run.forward(net, batch)
                    loss = run.loss(outputs, batch)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    smooth = 0.9 * smooth + 0.1 * float(loss) if step else float(loss)
                    debiased = smooth / (1 - 0.9 ** (step + 1))
                    lrs.append(lr)
                    losses.append(debiased)
                    best = min(best, debiased)
                    step += 1
                    if step >= steps or debiased > 4 * best or not math.isfinite(debiased):
                        step = steps
                        break
                epoch += 1
        finally:
            run.close()
            self.logger.close()
        return lrs, losses
