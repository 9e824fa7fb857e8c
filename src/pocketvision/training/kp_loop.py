"""Keypoint training: the classification loop's parts (optimizer, schedules, checkpoints, CSV/TensorBoard
logging, progress, Ctrl-C = resumable) around a keypoint data set, augmenter, head and loss.

Images are decoded once into RAM, shrunk so the short side is just above the model's (points scaled
with them); each epoch warps them with a fresh random homography per sample, seeded by
``(seed, epoch, index)``. The best epoch by validation NME is kept.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..contract import Contract, load_rgb
from ..data.keypoints import KeypointSet, KpSample, load_keypoints, read_exclude
from ..data.kp_augment import KeypointAugmenter, contract_matrix, points_to_source, transform_points
from ..errors import ImageDecodeError, PocketVisionError
from ..evaluate.keypoint_metrics import keypoint_metrics
from ..tasks.keypoints import build_keypoint_model, keypoint_spec
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .loader import SOURCE_MARGIN, default_workers, make_loader, to_input
from .loop import RunResult, _Logger, _make_optimizer, pick_device
from .schedules import make_schedule

DEFAULT_ARCH, DEFAULT_ARCH_ARGS = "deepdog", {"alpha": 0.5}


@dataclass(kw_only=True)
class KpFitResult(RunResult):
    data: KeypointSet
    val_pred: np.ndarray | None = None  # (N, K, 3) in source-image pixels
    val_gt: np.ndarray | None = None
    val_sizes: np.ndarray | None = None


def decode_sample(s: KpSample, contract: Contract) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """-> (RGB array with the short side capped near the model's, points in that array's pixels,
    original (w, h))."""
    side = math.ceil(max(contract.size) * SOURCE_MARGIN)
    img = load_rgb(s.path, min_size=(side, side))
    w0, h0 = s.size or img.size
    scale = min(1.0, side / min(img.size))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BILINEAR)
    pts = s.points.copy()
    pts[:, 0] *= img.width / w0
    pts[:, 1] *= img.height / h0
    return np.asarray(img, np.uint8), pts, (w0, h0)


class KeypointDataset(torch.utils.data.Dataset):
    """-> (uint8 HWC at the contract size, points (K, 3) in model-input pixels, index)."""

    def __init__(self, images: list[np.ndarray], points: list[np.ndarray], contract: Contract,
                 augment: KeypointAugmenter | None, seed: int):
        self.images, self.points, self.contract, self.augment, self.seed = images, points, contract, augment, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        img = Image.fromarray(self.images[i])
        if self.augment is not None:
            x, p = self.augment(img, self.points[i], np.random.default_rng([self.seed, epoch, i]))
        else:
            m = contract_matrix(img.width, img.height, self.contract)
            x, p = self.contract.fit(img), transform_points(self.points[i], m, (0, 0), None, keep_outside=True)
        return torch.from_numpy(np.array(x)), torch.from_numpy(p.astype(np.float32)), i


def _collate(batch):
    return (torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch]),
            torch.tensor([b[2] for b in batch]))


def _loader(ds, batch_size: int, shuffle: bool, workers: int, seed: int, drop_last: bool = False):
    return make_loader(ds, batch_size, shuffle, workers, seed, drop_last, collate_fn=_collate)


def resolve_normalize(cfg_value: str | None) -> list[str] | str | None:
    if cfg_value is None:
        return None
    v = cfg_value.strip()
    return "bbox" if v == "bbox" else [s.strip() for s in v.split(",")]


def fit_keypoints(data: str | Path, cfg: TrainConfig, resume: Path | None = None, console=None) -> KpFitResult:
    from concurrent.futures import ThreadPoolExecutor

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from ..models import check_input_size, model_entry

    console = console or Console(stderr=True)
    # Options of the classification loop that this loop does not implement: refuse them rather than ignore them.
    unsupported = [f"--{k.replace('_', '-')}" for k, on in (("progressive", cfg.progressive), ("mixup", cfg.mixup),
                                                            ("distill", cfg.distill)) if on]
    if unsupported:
        raise PocketVisionError(f"{', '.join(unsupported)}: classification only; keypoint training does not use "
                                "it. Leave it out.")
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    ds = load_keypoints(data, val_fraction=cfg.val_fraction, seed=cfg.seed, flip_pairs=cfg.flip_pairs,
                        exclude=read_exclude(cfg.exclude))
    schema = ds.schema
    k = len(schema.names)
    normalize = resolve_normalize(cfg.normalize)
    if normalize not in (None, "bbox"):
        for n in normalize:
            schema.index(n, "normalize point")
    arch = cfg.arch or DEFAULT_ARCH
    arch_args = cfg.arch_args if (cfg.arch or cfg.arch_args) else DEFAULT_ARCH_ARGS
    entry = model_entry(arch)
    base = Contract.from_dict(entry.default_contract)
    if cfg.size:
        size = (cfg.size, cfg.size)
    else:  # the data's typical size, rounded to the architecture's multiple (faces5: 80x80 crops)
        sides = [max(s.size) for s in ds.train if s.size] or [base.size[0]]
        size = (int(np.median(sides)),) * 2
        mult = max(entry.size_multiple, 16)
        size = (max(entry.min_size, round(size[0] / mult) * mult),) * 2
    check_input_size(arch, size, {**arch_args, "num_classes": 0})
    head_args: dict[str, Any] = dict(cfg.head_args)
    spec = keypoint_spec(arch, arch_args, k, cfg.head, cfg.output_stride, **head_args)
    contract = Contract.from_dict({**base.to_dict(), "size": list(size), "resize": "squash"})
    if cfg.init_from:
        from ..api import load
        parent = load(cfg.init_from)
        if parent.task != "keypoints" or parent.meta["arch"] != spec:
            raise PocketVisionError(f"{cfg.init_from}: its model {parent.meta['arch']} differs from the requested "
                                    f"{spec}; train with the same --arch, --arch-args and --head.")
        model, contract = parent.model, parent.contract
    else:
        model = build_keypoint_model(spec, size, pretrained=cfg.pretrained and entry.pretrained)
    device = pick_device(cfg.device)
    model = model.to(device)
    run_dir = Path(resume or cfg.run_dir or Path("runs") / time.strftime("keypoints-%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    workers = default_workers() if cfg.workers is None else cfg.workers

    console.print(f"[bold]data[/] {ds.source}: {k} points {list(schema.names)}, flip pairs "
                  f"{[(schema.names[a], schema.names[b]) for a, b in schema.flip_pairs]}, train {len(ds.train)}, "
                  f"val {len(ds.val)}{'' if ds.explicit else f' (random split, seed {cfg.seed})'}")
    for note in ds.notes:
        console.print(f"[yellow]note[/] {note}")
    t0 = time.perf_counter()
    problems: list[str] = []

    def decode_split(samples):
        def one(s):
            try:
                return decode_sample(s, contract)
            except ImageDecodeError as e:
                problems.append(str(e))
                return None
        with ThreadPoolExecutor() as ex:
            res = list(ex.map(one, samples))
        keep = [i for i, r in enumerate(res) if r is not None]
        return [samples[i] for i in keep], [res[i] for i in keep]
    train_s, train_d = decode_split(ds.train)
    val_s, val_d = decode_split(ds.val)
    for msg in problems:
        console.print(f"[yellow]skipped unreadable image[/] {msg}")
    if not train_s or not val_s:
        raise PocketVisionError(f"{data}: no readable images in the {'val' if not val_s else 'train'} split.")
    console.print(f"decoded {len(train_s) + len(val_s)} images in {time.perf_counter() - t0:.1f}s "
                  f"(RAM cache, {workers} workers)")
    augmenter = KeypointAugmenter(cfg.augment, contract, schema.flip_perm)
    train_ds = KeypointDataset([d[0] for d in train_d], [d[1] for d in train_d], contract, augmenter, cfg.seed)
    val_ds = KeypointDataset([d[0] for d in val_d], [d[1] for d in val_d], contract, None, cfg.seed)
    val_sizes = [d[2] for d in val_d]
    val_gt = np.stack([s.points for s in val_s])
    val_loader = _loader(val_ds, max(cfg.batch_size, 128), False, 0, cfg.seed)
    logger = _Logger(run_dir, cfg.tensorboard)
    loss_kind = cfg.kp_loss if cfg.kp_loss != "auto" else ("mse" if cfg.head == "regression" else "kl")

    @torch.no_grad()
    def predict_val(net) -> np.ndarray:
        net.eval()
        outs = [net(to_input(x, contract, device, False)).float().cpu().numpy() for x, _, _ in val_loader]
        return np.concatenate(outs)

    def score(net) -> tuple[dict[str, Any], np.ndarray]:
        pred = points_to_source(predict_val(net), val_sizes, contract)
        return keypoint_metrics(val_gt, pred, schema.names, normalize, np.array(val_sizes)), pred

    epochs = cfg.epochs
    start_epoch, best, best_epoch, best_state, history = 1, None, 0, None, []
    opt_state: dict = {}
    if resume is not None:
        sd, opt_state, meta = load_checkpoint(run_dir)
        model.load_state_dict(sd)
        start_epoch, best_epoch = int(meta["next_epoch"]), int(meta.get("best_epoch", 0))
        best, history = meta.get("best"), meta.get("history", [])
        if (run_dir / "best.safetensors").exists():
            from safetensors.torch import load_file
            best_state = load_file(str(run_dir / "best.safetensors"))
        console.print(f"[bold]resuming[/] {run_dir} at epoch {start_epoch}")
    interrupted = False
    if epochs and start_epoch <= epochs:
        train_loader = _loader(train_ds, cfg.batch_size, True, workers, cfg.seed, drop_last=len(train_ds) > cfg.batch_size)
        steps = max(1, len(train_loader))
        peak = cfg.lr or (1e-3 if cfg.optimizer != "sgd" else 0.05)
        pretrained = cfg.pretrained and entry.pretrained
        groups = ([{"params": list(model.backbone_parameters()), "lr": peak * cfg.backbone_lr_mult},
                   {"params": list(model.head_parameters()), "lr": peak}] if pretrained
                  else [{"params": list(model.parameters()), "lr": peak}])
        for g in groups:
            g["initial_lr"] = g["lr"]
        optimizer = _make_optimizer(cfg, groups)
        if opt_state:
            optimizer.load_state_dict(opt_state)
        sched = make_schedule(cfg.schedule, epochs * steps, steps, cfg.clr_cycle_epochs)
        step = (start_epoch - 1) * steps
        progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[of]}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
                            disable=not cfg.progress, transient=True)
        old_handler = signal.getsignal(signal.SIGINT)
        try:
            with progress:
                for epoch in range(start_epoch, epochs + 1):
                    model.train()
                    train_ds.set_epoch(epoch)
                    task = progress.add_task("train", total=steps, epoch=epoch, of=epochs, info="")
                    t_ep, seen, loss_sum = time.perf_counter(), 0, 0.0
                    for x, pts, _ in train_loader:
                        f = sched(step)
                        for g in optimizer.param_groups:
                            g["lr"] = g["initial_lr"] * f
                        raw = model.forward_raw(to_input(x, contract, device, False))
                        loss = model.head.loss(raw, pts.to(device), loss_kind)
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        step += 1
                        seen += len(x)
                        loss_sum += float(loss.detach()) * len(x)
                        progress.update(task, advance=1, info=f"loss {loss_sum / seen:.4f}  "
                                        f"{seen / (time.perf_counter() - t_ep):.0f} img/s")
                    train_time = time.perf_counter() - t_ep
                    progress.remove_task(task)
                    m, _ = score(model)
                    row = {"epoch": epoch, "train_loss": loss_sum / max(1, seen), "val_nme": m["nme"],
                           "val_pck@0.1": m["pck@0.1"], "val_mean_px": m["mean_error_px"],
                           "lr": optimizer.param_groups[-1]["lr"], "img_per_s": seen / train_time,
                           "seconds": time.perf_counter() - t_start}
                    history.append(row)
                    logger.epoch(row)
                    improved = best is None or m["nme"] < best
                    if improved:
                        best, best_epoch = m["nme"], epoch
                        best_state = {kk: v.detach().cpu().clone() for kk, v in model.state_dict().items()}
                        from safetensors.torch import save as st_save

                        from ..bundle import atomic_write_bytes
                        atomic_write_bytes(run_dir / "best.safetensors",
                                           st_save({kk: v.contiguous() for kk, v in best_state.items()}))
                    console.print(f"epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f}  val NME "
                                  f"{m['nme']:.4f}  PCK@0.1 {m['pck@0.1']:.3f}  {m['mean_error_px']:.2f} px  "
                                  f"{row['img_per_s']:.0f} img/s  {train_time:.0f}s{'  *best' if improved else ''}")
                    save_checkpoint(run_dir, model, optimizer, {"next_epoch": epoch + 1, "best": best,
                                                                "best_epoch": best_epoch, "history": history,
                                                                "config": cfg.model_dump(mode="json"), "spec": spec})
        except KeyboardInterrupt:
            interrupted = True
            signal.signal(signal.SIGINT, old_handler)
            console.print(f"[yellow]interrupted[/]: resume with `pocketvision train {data} --resume {run_dir}`")
    logger.close()
    if interrupted:
        return KpFitResult(model=model, spec=spec, contract=contract, data=ds, history=history, run_dir=run_dir,
                           interrupted=True, problems=problems)
    if best_state is not None:
        model.load_state_dict(best_state)
    model = model.cpu().eval()
    device = torch.device("cpu")
    metrics, pred = score(model)
    return KpFitResult(model=model, spec=spec, contract=contract, data=ds, history=history, val_pred=pred,
                       val_gt=val_gt, val_sizes=np.array(val_sizes), val_paths=[s.path for s in val_s],
                       best_epoch=best_epoch, seconds=time.perf_counter() - t_start, run_dir=run_dir,
                       problems=problems)
