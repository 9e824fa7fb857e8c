"""The keypoint model's training run (torch): decoding and augmenting the annotated photos, the heatmap, SimCC or
regression loss, validation by NME, and what training writes into the bundle. KeypointsTask.setup imports it, so
the runtime half of the task never loads torch.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...core.contract import Contract, load_rgb
from ...errors import ImageDecodeError, PocketVisionError
from ...models import check_input_size, model_entry
from ...training.loader import SOURCE_MARGIN, augmented_on, default_workers, find_pixels, grid_mode, make_loader
from ..base import TaskRun, Validation, load_parent
from .annotations import load_keypoints
from .metrics import FAILURE_NME, default_normalizer, keypoint_metrics
from .net import build_keypoint_model, keypoint_spec
from .options import exclude_set, resolve_normalize
from .report import ced_png, write_keypoint_report

if TYPE_CHECKING:  # pragma: no cover
    from . import KeypointsTask
    from .options import KeypointOptions


# -- training data ---------------------------------------------------------------------------------------
def decode_sample(s, contract: Contract, pixels=None) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """-> (RGB array with the short side capped near the model's, points in that array's pixels,
    original (w, h)). ``pixels``: a `pocketvision cache` to read the photo from; its points come from the
    annotations as they are now (scaled by the annotated size), so an edited label is never served stale."""
    from PIL import Image

    side = math.ceil(max(contract.size) * SOURCE_MARGIN)
    a = pixels.source_pixels(s.path, side) if pixels is not None and s.size else None
    if a is not None:
        pts = s.points.copy()
        pts[:, 0] *= a.shape[1] / s.size[0]
        pts[:, 1] *= a.shape[0] / s.size[1]
        return a, pts, s.size
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


def _dataset(images, points, contract, augment, seed, batched: bool = False):
    """-> a torch Dataset of (uint8 HWC at the contract size, points (K, 3) in model-input pixels, index);
    ``batched``: (the decoded photo as it is, its ``KeypointDraw``, index) for ``_collate_sources``."""
    from PIL import Image

    from .augment import contract_matrix, transform_points

    class KeypointDataset(torch.utils.data.Dataset):
        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, key):
            epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
            if batched:  # the pixels travel as they are; the device warps them by the draw's homography
                h, w = images[i].shape[:2]
                return images[i], augment.draw(w, h, points[i], np.random.default_rng([seed, epoch, i])), i
            img = Image.fromarray(images[i])
            if augment is not None:
                x, p = augment(img, points[i], np.random.default_rng([seed, epoch, i]))
            else:
                m = contract_matrix(img.width, img.height, contract)
                x, p = contract.fit(img), transform_points(points[i], m, (0, 0), None, keep_outside=True)
            return torch.from_numpy(np.array(x)), torch.from_numpy(p.astype(np.float32)), i
    return KeypointDataset()


def _collate(batch):
    return (torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch]),
            torch.tensor([b[2] for b in batch]))


def _collate_sources(batch, size: tuple[int, int], augment_mode: str | None = None):
    """Batched items -> (data.batch_augment.Sources, points (N, K, 3), indices): photos padded with the warp's grey,
    each photo's inverse homography (its points were mapped by the same matrix in ``draw``). With ``augment_mode``
    (training on the CPU) the pixels are warped here, in the worker."""

    from ...data.batch_augment import Sources, augment, pad_sources, stack_keypoint_draws
    draws = [b[1] for b in batch]
    src = Sources(pad_sources([b[0] for b in batch], fill=114.0), stack_keypoint_draws(draws, size), size, fill=114.0)
    pts = torch.from_numpy(np.stack([d.points for d in draws]).astype(np.float32))
    return (augment(src, augment_mode) if augment_mode else src), pts, torch.tensor([b[2] for b in batch])


# -- the training run ------------------------------------------------------------------------------------
def _typical_size(ds, entry, base: Contract) -> tuple[int, int]:
    """The data's typical side, rounded to the architecture's multiple (faces5: 80x80 crops)."""
    sides = [max(s.size) for s in ds.train if s.size] or [base.size[0]]
    mult = max(entry.size_multiple, 16)
    return (max(entry.min_size, round(int(np.median(sides)) / mult) * mult),) * 2


def _decode_split(samples: list, contract: Contract, problems: list[str], pixels=None) -> tuple[list, list]:
    """Decode a split on threads -> (the readable samples, their decoded arrays); the others go to ``problems``."""
    from concurrent.futures import ThreadPoolExecutor

    def one(s):
        try:
            return decode_sample(s, contract, pixels)
        except ImageDecodeError as e:
            problems.append(str(e))
            return None
    with ThreadPoolExecutor() as ex:
        res = list(ex.map(one, samples))
    keep = [i for i, r in enumerate(res) if r is not None]
    return [samples[i] for i in keep], [res[i] for i in keep]


class KeypointRun(TaskRun):
    def __init__(self, task: KeypointsTask, data, cfg, opts: KeypointOptions, console):
        from rich.console import Console

        from .augment import KeypointAugmenter

        self.task, self.data, self.cfg, self.opts = task, Path(data), cfg, opts
        self.console = console = console or Console(stderr=True)
        ds = load_keypoints(data, val_fraction=cfg.val_fraction, seed=cfg.seed, flip_pairs=opts.flip_pairs,
                            exclude=exclude_set(opts.exclude))
        self.ds, schema = ds, ds.schema
        k = len(schema.names)
        self.normalize = resolve_normalize(opts.normalize)
        if self.normalize not in (None, "bbox"):
            for n in self.normalize:
                schema.index(n, "normalize point")
        arch = cfg.arch or task.default_arch[0]
        arch_args = cfg.arch_args if (cfg.arch or cfg.arch_args) else task.default_arch[1]
        entry = model_entry(arch)
        base = Contract.from_dict(entry.default_contract)
        size = (cfg.size, cfg.size) if cfg.size else _typical_size(ds, entry, base)
        check_input_size(arch, size, {**arch_args, "num_classes": 0})
        spec = keypoint_spec(arch, arch_args, k, opts.head, opts.output_stride, **dict(opts.head_args))
        contract = Contract.from_dict({**base.to_dict(), "size": list(size), "resize": "squash"})
        if cfg.init_from:
            meta, model = load_parent(cfg.init_from)
            if meta["task"] != task.name or meta["arch"] != spec:
                raise PocketVisionError(f"{cfg.init_from}: its model {meta['arch']} differs from the requested "
                                        f"{spec}; train with the same --arch, --arch-args and --head.")
            contract = Contract.from_dict(meta["contract"])
        else:
            model = build_keypoint_model(spec, size, pretrained=cfg.pretrained and entry.pretrained)
        self.model, self.spec, self.contract = model, spec, contract
        self.pretrained = cfg.pretrained and bool(entry.pretrained)
        self.default_lr = 1e-3 if cfg.optimizer != "sgd" else 0.05
        self.workers = workers = default_workers() if cfg.workers is None else cfg.workers

        console.print(f"[bold]data[/] {ds.source}: {k} points {list(schema.names)}, flip pairs "
                      f"{[(schema.names[a], schema.names[b]) for a, b in schema.flip_pairs]}, train {len(ds.train)}, "
                      f"val {len(ds.val)}{'' if ds.explicit else f' (random split, seed {cfg.seed})'}")
        for note in ds.notes:
            console.print(f"[yellow]note[/] {note}")
        t0 = time.perf_counter()
        problems: list[str] = []

        pixels = find_pixels(ds.source, contract, cfg.cache_dir, console)

        train_s, train_d = _decode_split(ds.train, contract, problems, pixels)
        val_s, val_d = _decode_split(ds.val, contract, problems)
        for msg in problems:
            console.print(f"[yellow]skipped unreadable image[/] {msg}")
        if not train_s or not val_s:
            raise PocketVisionError(f"{data}: no readable images in the {'val' if not val_s else 'train'} split.")
        console.print(f"decoded {len(train_s) + len(val_s)} images in {time.perf_counter() - t0:.1f}s "
                      f"(RAM cache, {workers} workers)")
        self.problems = problems
        augment = dict(cfg.augment or {})
        if augment.get("enabled", True) and augment.get("rotate") == "auto":
            from .augment import rotation_for
            augment["rotate"] = rotation_for(np.stack([s.points for s in train_s]))
            console.print(f"augment: rotation +-{augment['rotate']:.0f} degrees (1.5x the 99th percentile of the "
                          "training labels' roll; --augment rotate=N to choose)")
        self.augment = augment
        augmenter = KeypointAugmenter(augment, contract, schema.flip_perm)
        from ...training.engine import batch_augment_wanted
        self.batched = batch_augment_wanted(cfg, augmenter.cfg.enabled)  # data/batch_augment.py
        self.train_ds = _dataset([d[0] for d in train_d], [d[1] for d in train_d], contract, augmenter, cfg.seed,
                                 batched=self.batched)
        val_ds = _dataset([d[0] for d in val_d], [d[1] for d in val_d], contract, None, cfg.seed)
        self.val_s, self.val_sizes = val_s, [d[2] for d in val_d]
        self.val_gt = np.stack([s.points for s in val_s])
        self.val_loader = make_loader(val_ds, max(cfg.batch_size, 128), False, 0, cfg.seed, collate_fn=_collate)
        self.loss_kind = opts.kp_loss if opts.kp_loss != "auto" else ("mse" if opts.head == "regression" else "kl")
        self._train_loader = None

    def _loader(self):
        import functools

        if self._train_loader is None:
            fn = _collate
            if self.batched:  # on the GPU: warped in `batches`; on a CPU: in the workers' collate
                on_gpu = self.engine.device.type != "cpu"
                fn = functools.partial(_collate_sources, size=tuple(self.contract.size),
                                       augment_mode=None if on_gpu else grid_mode(self.contract))
            self._train_loader = make_loader(self.train_ds, self.cfg.batch_size, True, self.workers, self.cfg.seed,
                                             drop_last=len(self.train_ds) > self.cfg.batch_size, collate_fn=fn,
                                             shard=self.shard)
        return self._train_loader

    def prologue(self, engine, resuming: bool) -> None:
        self.engine = engine

    def steps_per_epoch(self) -> int:
        return len(self._loader())

    def batches(self, epoch: int):
        self.train_ds.set_epoch(epoch)
        if self.batched and self.engine.device.type != "cpu":
            return augmented_on(self.engine.device, self._loader(), grid_mode(self.contract))
        return self._loader()

    def forward(self, net, batch):
        return net(self.engine.to_input(batch[0]), raw=True)  # through net's __call__: DDP's hooks see it

    def loss(self, outputs, batch):
        return self.model.head.loss(outputs, batch[1].to(self.engine.device), self.loss_kind)

    def preview(self, batch):
        # The augmented faces with their points drawn, one colour per point: a flip that forgot to swap a left/right
        # pair shows as two colours trading places (the dog-filter bug), a warp that missed the points as points off
        # their features.
        from PIL import Image

        from .check import draw
        if not isinstance(batch[0], torch.Tensor):
            return None
        pts = batch[1][:32].cpu().numpy()
        r = max(1.0, max(self.contract.size) / 64)
        return torch.from_numpy(np.stack([np.asarray(draw(Image.fromarray(x), p, self.ds.schema.skeleton, r))
                                          for x, p in zip(batch[0][:32].cpu().numpy(), pts)]))

    def on_end(self, engine) -> None:
        if engine.logger.tb:
            self._log_val(engine.logger.tb)

    def _log_val(self, tb) -> None:
        """TensorBoard for the kept weights: the CED curve and per-point NME (what PR curves and the confusion matrix
        are to a classifier), and a projector of the val faces' pooled backbone features with thumbnails, labelled
        by their NME band, so the failing faces can be found as a cluster."""
        import io

        from PIL import Image

        m, _ = self._score(self.model)
        tb.add_image("val/ced", np.asarray(Image.open(io.BytesIO(ced_png(m))).convert("RGB")), dataformats="HWC")
        for name, v in m["per_point"].items():
            if v["nme"] is not None:
                tb.add_scalar(f"val_point_nme/{name}", v["nme"])
        band = ["unlabelled"] * len(self.val_gt)
        for i, e in zip(m["image_index"], m["per_image_nme"]):
            band[i] = "NME < 5%" if e < 0.05 else "NME 5-10%" if e <= FAILURE_NME else "failure (NME > 10%)"
        feats, thumbs = [], []
        self.model.eval()
        with torch.no_grad():
            for x, _, _ in self.val_loader:
                feats.append(self.model.features(self.engine.to_input(x)).float().mean((2, 3)).cpu())
                step = max(1, x.shape[1] // 32)
                thumbs.append(x[:, ::step, ::step][:, :32, :32].permute(0, 3, 1, 2).float() / 255)
        tb.add_embedding(torch.cat(feats), metadata=band, label_img=torch.cat(thumbs), tag="val")

    def _predict_val(self, net) -> np.ndarray:
        net.eval()
        with torch.no_grad():
            outs = [net(self.engine.to_input(x)).float().cpu().numpy() for x, _, _ in self.val_loader]
        return np.concatenate(outs)

    def _score(self, net) -> tuple[dict[str, Any], np.ndarray]:
        from .augment import points_to_source
        pred = points_to_source(self._predict_val(net), self.val_sizes, self.contract)
        return keypoint_metrics(self.val_gt, pred, self.ds.schema.names, self.normalize, np.array(self.val_sizes)), pred

    def validate(self, net) -> Validation:
        m, pred = self._score(net)
        return Validation((-m["nme"],), {"val_nme": m["nme"], "val_pck@0.1": m["pck@0.1"],
                                         "val_mean_px": m["mean_error_px"]},
                          f"val NME {m['nme']:.4f}  PCK@0.1 {m['pck@0.1']:.3f}  {m['mean_error_px']:.2f} px", pred)

    def finish(self, best: Validation | None, run_dir: Path | None) -> dict[str, Any]:
        schema, ds = self.ds.schema, self.ds
        # the kept weights are back on the CPU: the final numbers are the bundle's own
        _, pred = self._score(self.model)
        normalize = self.normalize or default_normalizer(schema.names)
        metrics = keypoint_metrics(self.val_gt, pred, schema.names, normalize, np.array(self.val_sizes))
        out: dict[str, Any] = {
            "labels": list(schema.names), "metrics": metrics,
            "keypoints": {**schema.to_dict(), "normalize": normalize},
            "data": {"root": str(Path(self.data).resolve()), "fingerprint": ds.fingerprint(),
                     "explicit_splits": ds.explicit, "counts": {"train": len(ds.train), "val": len(ds.val)},
                     "excluded": ds.excluded, "val_fraction": self.cfg.val_fraction, "seed": self.cfg.seed,
                     "skipped": self.problems},
            "augment": self.augment}  # as trained: "auto" fields resolved from the data
        if run_dir is not None:
            out["report"] = str(write_keypoint_report(
                run_dir / "report", metrics, self.val_gt, pred, [s.path for s in self.val_s], schema.names,
                schema.skeleton, title=f"Training: {self.spec['name']} + {self.spec['head']['type']}"))
        return out

