"""Keypoints (landmarks) as a task plug-in: COCO keypoints / CSV annotations in, points in pixels out.

The network (``net.py``: a registry backbone + a heatmap, SimCC or regression head) already
returns decoded points ``(N, K, 3)`` = x, y, score in model-input pixels, so every export hands apps finished
points. Points come back in each original image's pixels (the contract's resize undone, full resolution).

Training (``KeypointRun``, driven by ``training/engine.py``): images are decoded once into RAM, shrunk so the
short side is just above the model's (points scaled with them); each epoch warps them with a fresh random
homography per sample (flips swap left/right points), seeded by ``(seed, epoch, index)``. The best epoch by
validation NME is kept. Images listed in ``exclude`` (``pocketvision check --suspects-out``) stay out of
training and of every later measurement.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ...core.bundle_file import atomic_write_bytes
from ...core.contract import Contract, load_rgb
from ...core.pixels import load_pixels
from ...data import shards
from .annotations import (KeypointSchema, drop_images, is_keypoint_source, load_keypoints, read_annotations,
                               read_exclude)
from ...errors import ImageDecodeError, PocketVisionError
from .metrics import FAILURE_NME, default_normalizer, keypoint_metrics
from .report import ced_png, render_keypoint_table, write_keypoint_report
from ...training.recipes import Recipe
from ..base import (CheckOptionsBase, HeldOut, Int8Recipe, Options, OutputSpec, Task, TaskRun, Validation, load_parent,
                    register_task)

KP_TOLERANCE_PX = 0.05  # float exports: max coordinate difference, in model-input pixels


class KeypointOptions(Options):
    head: Literal["heatmap", "simcc", "regression"] = Field(
        "heatmap", description="heatmap (stride-4 heatmaps, integral decoding), simcc (sub-pixel coordinate "
                               "bins) or regression (direct x, y)")
    head_args: dict[str, Any] = Field(default_factory=dict, description="head arguments, e.g. "
                                      "hidden=128,ratio=2,sigma=1.5 (simcc)")
    exclude: str | None = Field(None, description="text file of images to leave out (one path or file name per "
                                "line), e.g. from `pocketvision check --suspects-out`")
    kp_loss: Literal["auto", "mse", "l1", "kl"] = Field("auto", description="loss (auto: kl for heatmap/simcc, mse "
                                                       "for regression)")
    output_stride: int = Field(16, ge=4, le=32, description="stride of the backbone's last feature map (later "
                               "stride-2 convs become stride 1)")
    flip_pairs: str | None = Field(None, description="override the flip pairs inferred from the names, e.g. "
                                   "'left_eye:right_eye,left_mouth:right_mouth', or 'none'")
    normalize: str | None = Field(None, description="NME normaliser: two point names 'a,b' or 'bbox' (default: the "
                                  "two eye points, else bbox)")


class KeypointEvalOptions(Options):
    exclude: str | set[str] | None = Field(None, description="leave out the images listed in this text file (e.g. "
                                           "suspect labels from `check --suspects-out`); Python: a set of names too")
    flip_tta: bool = Field(False, description="test-time augmentation: average each photo's points with its mirror "
                           "image's (mirrored back, left/right pairs swapped)")


class KeypointCheckOptions(CheckOptionsBase):
    suspects_out: str | None = Field(None, description="write the images with suspect labels, one per line (review "
                                     "them, or pass the file to `train --exclude`)")


class KeypointFilterOptions(Options):
    sprite: str = Field("glasses", description="built-in sprite (glasses, mustache, crown) or an RGBA PNG")
    anchor: str = Field("left_eye,right_eye", description="the two keypoints the sprite's anchors follow")
    sprite_anchors: str | None = Field(None, description="anchor positions on a PNG sprite, X1,Y1,X2,Y2 in its "
                                       "pixels (default: 30%% and 70%% of its width at mid-height)")
    smoothing: float = Field(1.0, gt=0, description="One Euro min cutoff in Hz (lower = steadier, more lag)")
    min_score: float = Field(0.2, ge=0, le=1, description="hide the sprite when an anchor's score is lower")
    draw_points: bool = Field(False, description="also draw every predicted point")


def resolve_normalize(value: str | None) -> list[str] | str | None:
    if value is None:
        return None
    v = value.strip()
    return "bbox" if v == "bbox" else [s.strip() for s in v.split(",")]


def _exclude_set(value: str | set[str] | None) -> set[str]:
    return set(value) if isinstance(value, set | list | tuple) else read_exclude(value)


# -- training data ---------------------------------------------------------------------------------------
def decode_sample(s, contract: Contract, pixels=None) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """-> (RGB array with the short side capped near the model's, points in that array's pixels,
    original (w, h)). ``pixels``: a `pocketvision cache` to read the photo from; its points come from the
    annotations as they are now (scaled by the annotated size), so an edited label is never served stale."""
    from PIL import Image

    from ...training.loader import SOURCE_MARGIN
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
    import torch
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
    import torch
    return (torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch]),
            torch.tensor([b[2] for b in batch]))


def _collate_sources(batch, size: tuple[int, int], augment_mode: str | None = None):
    """Batched items -> (data.batch_augment.Sources, points (N, K, 3), indices): photos padded with the warp's grey,
    each photo's inverse homography (its points were mapped by the same matrix in ``draw``). With ``augment_mode``
    (training on the CPU) the pixels are warped here, in the worker."""
    import torch

    from ...data.batch_augment import Sources, augment, pad_sources, stack_keypoint_draws
    draws = [b[1] for b in batch]
    src = Sources(pad_sources([b[0] for b in batch], fill=114.0), stack_keypoint_draws(draws, size), size, fill=114.0)
    pts = torch.from_numpy(np.stack([d.points for d in draws]).astype(np.float32))
    return (augment(src, augment_mode) if augment_mode else src), pts, torch.tensor([b[2] for b in batch])


def _points_in_model_frame(samples, kept: list[int], contract: Contract) -> np.ndarray:
    """Labelled points of ``samples[kept]`` mapped into model-input pixels (the contract's resize)."""
    from PIL import Image

    from .augment import contract_matrix, transform_points
    out = []
    for i in kept:
        s = samples[i]
        if s.size:
            w, h = s.size
        else:
            with Image.open(s.path) as im:
                w, h = im.size
        out.append(transform_points(s.points, contract_matrix(w, h, contract), (0, 0), None, True))
    return np.stack(out)


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
        from ...models import check_input_size, model_entry
        from .net import build_keypoint_model, keypoint_spec
        from ...training.loader import default_workers, find_pixels, make_loader

        self.task, self.data, self.cfg, self.opts = task, Path(data), cfg, opts
        self.console = console = console or Console(stderr=True)
        ds = load_keypoints(data, val_fraction=cfg.val_fraction, seed=cfg.seed, flip_pairs=opts.flip_pairs,
                            exclude=_exclude_set(opts.exclude))
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

        from ...training.loader import grid_mode, make_loader
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
            from ...training.loader import augmented_on, grid_mode
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
        import torch
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

        import torch
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
        import torch
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


# -- the plug-in ---------------------------------------------------------------------------------------
@register_task
class KeypointsTask(Task):
    name = "keypoints"
    summary = "keypoints/landmarks: COCO keypoints JSON or CSV annotations"
    Options = KeypointOptions
    EvalOptions = KeypointEvalOptions
    CheckOptions = KeypointCheckOptions
    FilterOptions = KeypointFilterOptions
    outputs = OutputSpec(names=("keypoints",), coreml="tensor", web_renderer="keypoints.js", quality="1 - NME")
    compressions = frozenset({"int8", "fp16"})
    default_arch = ("deepdog", {"alpha": 0.5})
    # channels_last changes the convolutions' rounding; "off" keeps the measured keypoint numbers (benchmarks/RESULTS.md)
    engine_defaults = {"channels_last": "off"}
    refuses = {"progressive": "the keypoint heads are built for one input size (their bins and cells are "
                              "fixed), so keypoint training cannot grow the size"}
    detect_order = 10

    def detect(self, data: str | os.PathLike) -> bool:
        return is_keypoint_source(data)

    def shard_records(self, data, val_fraction, seed):
        ks = load_keypoints(data, val_fraction=val_fraction, seed=seed)
        base = ks.source if ks.source.is_dir() else ks.source.parent

        def name(p: Path) -> str:  # images an annotation file names outside its folder keep their file name
            return p.relative_to(base).as_posix() if p.is_relative_to(base) else f"external/{p.name}"
        return {"schema": ks.schema.to_dict()}, {
            split: [(s.path, name(s.path), {"points": s.points.tolist(), "size": list(s.size) if s.size else None})
                    for s in samples] for split, samples in (("train", ks.train), ("val", ks.val))}

    def stored_annotation(self, annotation, stored, original):
        # Points move with the pixels: the shard keeps the photo resized to ``stored``, from the annotated size.
        w0, h0 = annotation["size"] or original
        pts = np.asarray(annotation["points"], np.float32)
        pts[:, 0] *= stored[0] / w0
        pts[:, 1] *= stored[1] / h0
        return {"points": pts.tolist(), "size": list(stored)}

    def recipe(self, ctx):
        # The README's faces recipe, now the default: on faces5 (after `check --suspects-out` / `train --exclude`)
        # the heatmap head reaches 5.73% NME on val in 28 min on 2 CPU cores (benchmarks/RESULTS.md,
        # "Keypoints on clean val"); the engine defaults (8 one-cycle epochs) stop well short of it.
        return Recipe("keypoints-cosine-40", "AdamW 3e-3, cosine, 40 epochs, batch 64, weight decay 1e-4: the "
                      "heatmap head 5.73% NME on the faces5 val faces in 28 min on 2 CPU cores",
                      engine=dict(epochs=40, lr=3e-3, schedule="cosine", batch_size=64, weight_decay=1e-4,
                                  optimizer="adamw"))

    # -- data ------------------------------------------------------------------------------------------
    def _split(self, meta: dict[str, Any], split: str, data=None):
        if data is not None:
            return labelled_keypoints(data, "auto", flip_pairs="none")[1]
        d = meta.get("data", {})
        if not d.get("root") or not Path(d["root"]).exists():
            return []
        if d.get("explicit_splits") and split == "val":
            samples = labelled_keypoints(d["root"], "val", flip_pairs="none")[1]
        else:
            samples = getattr(load_keypoints(d["root"], val_fraction=d.get("val_fraction", 0.1), seed=d.get("seed", 0),
                                             flip_pairs="none"), split)
        # The images training left out (suspect labels) stay out of every measurement too.
        return drop_images(samples, set(d.get("excluded", ())))

    def held_out(self, meta: dict[str, Any], data=None) -> HeldOut:
        contract = Contract.from_dict(meta["contract"])
        samples = self._split(meta, "val", data)
        pixels, kept = load_pixels([s.path for s in samples], contract)
        truth = _points_in_model_frame(samples, kept, contract) if kept else np.zeros((0, len(meta["labels"]), 3))
        return HeldOut(pixels, truth, [samples[i].path for i in kept])

    def training_images(self, meta: dict[str, Any], data=None) -> tuple[list[Path], str | None]:
        d = meta.get("data", {})
        root = d.get("root") if d.get("root") and Path(d["root"]).exists() else data
        if not root:
            return [], None
        samples = load_keypoints(root, val_fraction=d.get("val_fraction", 0.1), seed=d.get("seed", 0),
                                 flip_pairs="none", exclude=set(d.get("excluded", ()))).train
        return [s.path for s in samples], str(root)

    def setup(self, data, cfg, opts, console, resuming: bool, user_model=None) -> KeypointRun:
        if user_model is not None:
            raise PocketVisionError("bring-your-own model is for classification; keypoint models are a registry "
                                    "backbone + head (--arch, --head).")
        return KeypointRun(self, data, cfg, opts, console)

    # -- model -----------------------------------------------------------------------------------------
    def build_model(self, spec: dict[str, Any], contract: Contract):
        from .net import build_keypoint_model
        return build_keypoint_model(spec, contract.size)

    def export_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        return {"keypoints": meta["keypoints"]}

    def int8_recipe(self, onnx_path: Path | None):
        return Int8Recipe(keep_float=output_layers(onnx_path) if onnx_path is not None else [])

    # -- runtime ---------------------------------------------------------------------------------------
    def predict(self, model, sources: Sequence) -> list[dict[str, Any]]:
        from .augment import points_to_source
        pixels, decoded = load_sources(sources, model.contract)
        pts = points_to_source(model.run_pixels(pixels), decoded, model.contract)
        out = []
        for s, dec, p in zip(sources, decoded, pts):
            full = _true_size(s, dec)
            p[:, 0] *= full[0] / dec[0]
            p[:, 1] *= full[1] / dec[1]
            out.append({"keypoints": {n: {"x": round(float(x), 2), "y": round(float(y), 2),
                                          "score": round(float(c), 4)} for n, (x, y, c) in zip(model.labels, p[:, :3])},
                        "image_size": list(full)})
        return out

    def record_line(self, record: dict[str, Any]) -> str:
        return "  ".join(f"{n} ({v['x']:.1f}, {v['y']:.1f})" for n, v in record["keypoints"].items())

    def evaluate(self, model, data, *, split="auto", report_dir=None, title="model", options=None,
                 batch: int = 64) -> dict[str, Any]:
        from .augment import points_to_source
        meta, contract = model.meta, model.contract
        if not meta.get("keypoints"):
            raise PocketVisionError("this model has no keypoint metadata (names, flip pairs).")
        model_schema = KeypointSchema.from_dict(meta["keypoints"])
        schema, samples, used = labelled_keypoints(data, split, flip_pairs="none")
        exclude = _exclude_set(options.exclude if options is not None else None)
        if exclude:
            samples = drop_images(samples, exclude)
        if tuple(schema.names) != tuple(model_schema.names):
            raise PocketVisionError(f"{data}: points {list(schema.names)} differ from the model's "
                                    f"{list(model_schema.names)}.")
        pixels, sizes, kept = [], [], []
        for i, s in enumerate(samples):
            try:
                img = load_rgb(s.path)
            except ImageDecodeError:
                continue
            pixels.append(contract.fit(img))
            sizes.append(img.size)
            kept.append(i)
        if not kept:
            raise PocketVisionError(f"{data}: none of the {len(samples)} images could be read.")
        x = np.stack(pixels)
        run = model.run_pixels
        if options is not None and options.flip_tta:
            run = flip_averaged(model.run_pixels, model_schema.flip_perm, contract.size[1])
        raw = np.concatenate([run(x[i:i + batch]) for i in range(0, len(x), batch)])
        pred = points_to_source(raw, sizes, contract)
        gt = np.stack([samples[i].points for i in kept])
        m = keypoint_metrics(gt, pred, schema.names, meta.get("keypoints", {}).get("normalize"), np.array(sizes))
        m.update(data=str(data), split=used, skipped_unreadable=len(samples) - len(kept), excluded=len(exclude))
        if report_dir is not None:
            m["report"] = str(write_keypoint_report(report_dir, m, gt, pred, [samples[i].path for i in kept],
                                                    schema.names, model_schema.skeleton, title=f"Evaluation: {title}"))
        return m

    def render_metrics(self, metrics: dict[str, Any], console) -> None:
        render_keypoint_table(metrics, console)

    def brief(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in metrics.items() if k not in ("per_image_nme", "image_index")}

    def quality(self, outputs: np.ndarray, truth, reference, meta) -> float:
        """1 - NME against labels in model-input pixels."""
        h, w = Contract.from_dict(meta["contract"]).size
        return 1.0 - keypoint_metrics(truth, outputs, list(meta["labels"]), meta.get("keypoints", {}).get("normalize"),
                                      np.tile([w, h], (len(truth), 1)))["nme"]

    def budget_text(self, precision: str, max_drop: float) -> str:
        return f"{precision}: NME rise <= {max_drop} points"

    def compare(self, ref, cand, truth, meta, tolerance=None) -> dict[str, Any]:
        """Keypoint parity: max/mean coordinate difference in model-input pixels and the NME change."""
        tolerance = KP_TOLERANCE_PX if tolerance is None else tolerance
        d = np.linalg.norm(ref[..., :2].astype(np.float64) - cand[..., :2].astype(np.float64), axis=-1)
        out: dict[str, Any] = {"n": int(len(ref)), "max_coord_diff_px": float(d.max()) if d.size else 0.0,
                               "mean_coord_diff_px": float(d.mean()) if d.size else 0.0,
                               "max_score_diff": float(np.abs(ref[..., 2] - cand[..., 2]).max()) if d.size else 0.0,
                               "tolerance_px": tolerance}
        if truth is not None and len(ref):
            rq, cq = self.quality(ref, truth, None, meta), self.quality(cand, truth, None, meta)
            out.update(reference_nme=1 - rq, candidate_nme=1 - cq, nme_change=rq - cq, reference_quality=rq,
                       candidate_quality=cq, accuracy_change=cq - rq)
        out["passed"] = bool(out["n"] > 0 and out["max_coord_diff_px"] <= tolerance)
        return out

    def parity_line(self, v: dict[str, Any]) -> str:
        extra = f", NME {v['reference_nme']:.4f} -> {v['candidate_nme']:.4f}" if "candidate_nme" in v else ""
        crit = f" ({v['criterion']})" if v.get("criterion") else f" (tol {v['tolerance_px']} px)"
        return (f"{v['n']} real images, max coordinate difference {v['max_coord_diff_px']:.2e} px, "
                f"mean {v['mean_coord_diff_px']:.2e} px{crit}{extra}")

    # -- other verbs -----------------------------------------------------------------------------------
    def label_problem(self, mode: str, labels: list[str], names: list[str]) -> str | None:
        return None if mode == "keypoints" else f"a keypoints model cannot suggest {mode}."

    def label_suggestion(self, record: dict[str, Any], names: list[str]) -> dict[str, Any]:
        kp = record["keypoints"]
        pts = [[kp[n]["x"], kp[n]["y"], kp[n]["score"]] if n in kp else None for n in names]
        scores = [p[2] for p in pts if p]
        return {"points": pts, "uncertainty": 1.0 - float(np.mean(scores)) if scores else 1.0}

    def check(self, data, options: KeypointCheckOptions):
        from .check import check_keypoints, render_keypoint_check, write_keypoint_preview
        rep = check_keypoints(data, seed=options.seed)
        if options.suspects_out:
            lines = [x["image"] for s in rep["splits"].values() for x in s["suspect_labels"]]
            atomic_write_bytes(options.suspects_out, ("\n".join(lines) + "\n").encode())
            rep["suspects_out"] = str(options.suspects_out)
        if options.preview:
            write_keypoint_preview(load_keypoints(data, seed=options.seed), options.preview, size=options.size,
                                   n=options.preview_n, seed=options.seed)
        return rep, lambda console: render_keypoint_check(rep, console)

    def filter_video(self, model, video, out, options: KeypointFilterOptions) -> dict[str, Any]:
        from .sprite_filter import run_filter
        return run_filter(model, video, out, **options.model_dump())

    def filter_line(self, stats: dict[str, Any]) -> str:
        return f"sprite drawn on {stats['sprite_shown']} of {stats['frames']} frames"


# -- readers for predict / evaluate (numpy + Pillow) --------------------------------------------------------
def load_sources(sources, contract: Contract) -> tuple[np.ndarray, list[tuple[int, int]]]:
    pixels, sizes = [], []
    for s in sources:
        img = load_rgb(s, min_size=contract.decode_hint())
        sizes.append(img.size)  # after a JPEG draft decode: points map into *this* frame, rescaled below
        pixels.append(contract.fit(img))
    return np.stack(pixels), sizes


def _true_size(source, decoded: tuple[int, int]) -> tuple[int, int]:
    """The upright full-resolution size (a JPEG may have been decoded at 1/2..1/8 scale)."""
    import io

    from PIL import Image
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    with Image.open(fp) as im:
        w, h = im.size
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF rotated by 90 degrees
            w, h = h, w
    return w, h


def flip_averaged(run, perm: np.ndarray, width: int):
    """``run`` (uint8 NHWC -> (N, K, 3) points in model pixels) averaged with its mirror image's answer, mirrored
    back (x -> width - x in continuous pixel coordinates) with the left/right pairs swapped back."""
    def both(pixels: np.ndarray) -> np.ndarray:
        a = np.asarray(run(pixels), np.float64)
        b = np.asarray(run(np.ascontiguousarray(pixels[:, :, ::-1])), np.float64)[:, perm]
        b[..., 0] = width - b[..., 0]
        return ((a + b) / 2).astype(np.float32)
    return both


def labelled_keypoints(data: str | Path, split: str = "auto", flip_pairs=None):
    """A COCO/CSV file (all of it) or a folder with train/val files (``auto``: val) -> (schema, samples, split)."""
    p = Path(data)
    if shards.is_shard_set(p):
        ks = load_keypoints(p, flip_pairs=flip_pairs)
        split = "val" if split == "auto" else split
        if split not in ("train", "val", "all"):
            raise PocketVisionError(f"{p}: a keypoint shard set has the splits train, val and all, not {split!r}.")
        return ks.schema, ks.train + ks.val if split == "all" else getattr(ks, split), split
    if p.is_dir():
        if split == "auto":
            split = "val" if any((p / f"val{s}").exists() for s in (".json", ".csv")) else "train"
        for suf in (".json", ".csv"):
            f = p / f"{split}{suf}"
            if f.exists():
                schema, samples, _ = read_annotations(f, flip_pairs)
                return schema, samples, split
        raise PocketVisionError(f"{p}: no {split}.json or {split}.csv inside.")
    if not p.exists():
        raise PocketVisionError(f"{p}: no such file or folder.")
    schema, samples, _ = read_annotations(p, flip_pairs)
    return schema, samples, "all"


def output_layers(fp32: Path, max_weights: int = 65536) -> list[str]:
    """Small dense layers and decoding MatMuls after the last convolution: the ones that *are* the
    coordinates of a keypoint model. One uint8 scale over x, y (pixels) and a score would cost pixels of
    accuracy for a few KB saved, so they stay float."""
    import onnx
    from onnx import numpy_helper
    g = onnx.load(str(fp32), load_external_data=False).graph
    sizes = {i.name: int(np.prod(numpy_helper.to_array(i).shape)) for i in g.initializer}
    last_conv = max((k for k, n in enumerate(g.node) if n.op_type == "Conv"), default=-1)
    return [n.name for n in g.node[last_conv + 1:]
            if n.op_type == "MatMul" or (n.op_type == "Gemm" and sizes.get(n.input[1], 0) <= max_weights)]
