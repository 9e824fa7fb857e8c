"""The classifier's training run (torch): the linear probe, the cached top fine-tune or full fine-tuning, learning
without forgetting, distillation from a teacher, and what training writes into the bundle. ClassifyTask.setup
imports it, so the runtime half of the task never loads torch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...core.contract import Contract
from ...core.pixels import batched
from ...data.folder import scan
from ...errors import ImageDecodeError, PocketVisionError
from ...evaluate import classification_metrics, write_report
from ...evaluate.calibration import fit_temperature, log_probs, reliability, scale
from ...evaluate.report import reliability_png
from ...evaluate.shift import shifted_copy
from ...models import build_model, check_input_size, model_entry
from ...models.familiarity import CENTRES, fit_familiarity, val_record
from ...models.imagenet_head import anchor_classes
from ...training.loader import (ImageDataset, augmented_on, collate, collate_sources, decode_all, decode_source,
                                default_workers, estimate_cache_mb, find_pixels, grid_mode, make_loader, to_input)
from ..base import TaskRun, Validation, load_parent
from .options import ClassifyOptions
from .top_tune import TopNet, TopTune, supports_top_tune, trunk_activations

if TYPE_CHECKING:  # pragma: no cover
    from . import ClassifyTask

LWF_T = 2.0  # the distillation temperature of learning without forgetting (Li & Hoiem 2016)


# -- helpers ------------------------------------------------------------------------------------------
def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def val_score(probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    acc = float((probs.argmax(1) == y).mean())
    loss = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1)).mean())
    return acc, loss


def class_weights(counts: list[int], mode):
    """'auto': inverse frequency normalised to mean 1 (the Not Hotdog data was 49:1)."""
    if mode == "none":
        return None
    if isinstance(mode, list):
        return torch.tensor(mode, dtype=torch.float32)
    c = np.maximum(np.asarray(counts, dtype=np.float64), 1)
    w = c.sum() / (len(c) * c)
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def final_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError("model has no nn.Linear classifier")
    return linears[-1]


def fit_probe(train_f: np.ndarray, train_y: np.ndarray, num_classes: int, balanced: bool, C: float = 0.5):
    """Logistic regression on frozen pooled features -> (W, b) for the model's own classifier.

    Standardisation is folded back into W and b so the head takes raw features, as in the graph.
    """
    from sklearn.linear_model import LogisticRegression

    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6
    clf = LogisticRegression(C=C, max_iter=2000, class_weight="balanced" if balanced else None)
    clf.fit((train_f - mu) / sd, train_y)
    coef, icpt = clf.coef_, clf.intercept_
    if num_classes == 2 and coef.shape[0] == 1:  # sklearn's binary form: one logit -> split +-z/2
        coef = np.concatenate([-coef / 2, coef / 2])
        icpt = np.array([-icpt[0] / 2, icpt[0] / 2])
    full_w = np.zeros((num_classes, train_f.shape[1]))
    full_b = np.full(num_classes, -1e4)  # a class absent from training can never win
    full_w[clf.classes_], full_b[clf.classes_] = coef / sd, icpt - (coef / sd) @ mu
    return torch.tensor(full_w, dtype=torch.float32), torch.tensor(full_b, dtype=torch.float32)


def set_head(model: nn.Module, W, b) -> None:
    head = final_linear(model)
    with torch.no_grad():
        head.weight.copy_(W.to(head.weight.device))
        head.bias.copy_(b.to(head.bias.device))


def cutmix(x, y, rng: np.random.Generator):
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


class Teacher:
    """Knowledge distillation (Hinton et al. 2015): a trained bundle's softened outputs on the *same
    augmented pixels* guide the student; its own contract normalises them, so the two may differ."""

    def __init__(self, path: str, classes: list[str], engine, temperature: float):
        meta, model = load_parent(path)
        if meta["task"] != "classify" or list(meta["labels"]) != list(classes):
            raise PocketVisionError(f"{path}: teacher labels {meta['labels']} differ from the data's classes {classes}.")
        self.model = model.to(engine.device).eval().to(memory_format=torch.channels_last)
        self.contract, self.engine, self.t = Contract.from_dict(meta["contract"]), engine, temperature

    def probs(self, x):

        with torch.no_grad():
            return torch.softmax(self.model(to_input(x, self.contract, self.engine.device, True)).float() / self.t, 1)

    def loss(self, x, student_logits):
        log_p = F.log_softmax(student_logits.float() / self.t, dim=1)
        return F.kl_div(log_p, self.probs(x), reduction="batchmean") * self.t**2


# -- the training run ------------------------------------------------------------------------------------
def _model(task: ClassifyTask, cfg, opts: ClassifyOptions, num_classes: int, user_model):
    """The network to train, its arch spec and contract, and whether it starts from ImageNet weights: the user's
    own model, a bundle's (``--init-from``), or the registry's (with the ImageNet head kept for now)."""

    if user_model is not None:  # bring your own model: contract from the config, weights from the user
        size = cfg.size or 224
        model, spec = user_model, {"name": "custom", "class": type(user_model).__qualname__,
                                   "args": {"num_classes": num_classes}}
        contract = Contract(size=(size, size), resize="squash")
        pretrained = False
    else:
        arch = cfg.arch or task.default_arch[0]
        entry = model_entry(arch)
        spec = {"name": arch, "args": {**cfg.arch_args, "num_classes": num_classes}}
        base = Contract.from_dict(entry.default_contract)
        size = (cfg.size, cfg.size) if cfg.size else base.size
        check_input_size(arch, size, spec["args"])
        pretrained = cfg.pretrained and bool(entry.pretrained)
        if cfg.init_from:  # start from a bundle's weights and keep its preprocessing contract (and head)
            meta, model = load_parent(cfg.init_from)
            theirs = dict(meta["arch"].get("args", {}))
            mapped = theirs.pop("imagenet_classes", None)
            if theirs != spec["args"] or meta["arch"].get("name") != spec["name"]:
                raise PocketVisionError(f"{cfg.init_from}: its architecture {meta['arch']} differs from the "
                                        f"requested {spec}; train with the same --arch and --arch-args.")
            if mapped is not None:
                spec["args"]["imagenet_classes"] = mapped
            contract = Contract.from_dict(meta["contract"])
        else:
            # The ImageNet head stays on until the training photos say whether the classes anchor to it.
            keep = (pretrained and opts.imagenet_head != "off" and "imagenet_classes" in entry.default_args
                    and "imagenet_classes" not in cfg.arch_args)
            model = build_model({**spec, "args": {**spec["args"], "num_classes": 1000}} if keep else spec,
                                pretrained=pretrained)
            contract = Contract.from_dict({**base.to_dict(), "size": list(size)})
        if opts.imagenet_head == "on" and "imagenet_classes" not in entry.default_args:
            raise PocketVisionError(f"--imagenet-head on: {arch} has no ImageNet head to keep; use a pretrained "
                                    f"efficientnet_lite* architecture, or --imagenet-head auto.")
    return model, spec, contract, pretrained


class ClassifyRun(TaskRun):
    def __init__(self, task: ClassifyTask, data, cfg, opts: ClassifyOptions, console, resuming: bool, user_model):
        from rich.console import Console

        from ...data.augment import AugmentConfig, Augmenter
        from ...training.engine import batch_augment_wanted, pick_device, progressive_plan

        self.task, self.data, self.cfg, self.opts = task, Path(data), cfg, opts
        self.console = console = console or Console(stderr=True)
        self.t_start = time.perf_counter()
        splits = scan(data, val_fraction=cfg.val_fraction, seed=cfg.seed)
        self.splits, classes = splits, splits.classes
        num_classes = len(classes)
        model, spec, contract, pretrained = _model(task, cfg, opts, num_classes, user_model)
        self.model, self.spec, self.contract, self.pretrained = model, spec, contract, pretrained
        self.channels_last_ok = spec["name"] != "custom"
        # A resumed run takes the same path: its checkpoint holds the top blocks and head trained so far (the trunk
        # is frozen, so its cached activations come out the same).
        self.top = (pretrained and opts.finetune == "top" and supports_top_tune(model, opts.top_blocks)
                    and pick_device(cfg.device).type == "cpu")
        self._refuse_clashes(cfg, opts)
        # checked before any image is decoded; epoch -> training input size
        self.sizes = progressive_plan(cfg, contract, spec["name"] != "custom") if not opts.linear_probe else None
        self.workers = default_workers() if cfg.workers is None else cfg.workers

        # -- data: decode once into RAM when it fits, else decode lazily in the workers ---------------
        self.augmenter = augmenter = Augmenter(AugmentConfig(**cfg.augment), contract)
        if self.top and opts.top_views > 2 and not augmenter.cfg.enabled:
            raise PocketVisionError(f"--top-views {opts.top_views}: views beyond the photo and its mirror are "
                                    "augmented crops, and augmentation is off; drop --top-views or turn it on.")
        train_samples, val_samples, train_cache, val_cache, problems, use_cache = self._decode(splits, contract)
        counts = [sum(1 for s in train_samples if s.label == c) for c in range(num_classes)]
        missing = [classes[c] for c, n in enumerate(counts) if n == 0]
        if missing:
            raise PocketVisionError(f"{data}: class(es) {missing} have no readable training images.")
        weights = class_weights(counts, opts.class_weights)
        if weights is not None and len(weights) != num_classes:
            raise PocketVisionError(f"class_weights has {len(weights)} values but the data has {num_classes} classes "
                                    f"{classes}.")
        self.weights = weights
        self.problems = problems
        self.train_samples, self.val_samples, self.train_cache, self.use_cache = (train_samples, val_samples,
                                                                                 train_cache, use_cache)
        # whole batches augmented on the training device (data/batch_augment.py): auto = on CUDA
        self.batched = batch_augment_wanted(
            cfg, augmenter.cfg.enabled, "--augment policy=trivial" if augmenter.cfg.policy != "none" else None)
        self.train_ds = ImageDataset(train_samples, contract, augmenter, cfg.seed, train_cache, sizes=self.sizes,
                                     pixels=self.pixels, batched=self.batched)
        self.plain_train_ds = ImageDataset(train_samples, contract, None, cfg.seed, train_cache)
        self.val_ds = ImageDataset(val_samples, contract, None, cfg.seed, val_cache, fitted=True)
        self.val_cache = val_cache
        self.eval_bs = max(cfg.batch_size, 64)
        self.val_loader = make_loader(self.val_ds, self.eval_bs, False, 0, cfg.seed)
        self.y_val = np.array([s.label for s in val_samples])
        self.label_smoothing = (opts.label_smoothing if opts.label_smoothing is not None
                                else (0.0 if pretrained else 0.1))
        self.default_lr = 3e-5 if self.top else (1e-4 if pretrained else 3e-3)
        self.mix_rng = np.random.default_rng([cfg.seed, 7])
        self.teacher = None
        self._train_loader = None
        self._top = None
        self.anchor = self.baseline = None  # baseline: what epoch 0 is when no probe is fitted
        self._fitted = self._photo_acts = self._imagenet_logits = None
        self._decide_head(user_model is not None)
        lwf = opts.lwf if opts.lwf is not None else (1.0 if self._imagenet_logits is not None else 0.0)
        if opts.lwf and self._imagenet_logits is None:
            raise PocketVisionError("--lwf: only with the ImageNet head, which these classes do not anchor to (see "
                                    "the 'head:' line); leave it out.")
        self.lwf = lwf if self.epochs(cfg) else 0.0
        if not self.lwf:
            self._imagenet_logits = None

    def _refuse_clashes(self, cfg, opts: ClassifyOptions) -> None:
        """Options that the chosen way of fine-tuning cannot honour, refused in one line before any image is read."""
        if self.top:  # the last blocks train on cached activations of a few fixed views of each photo
            clash = [f for f, on in (("--progressive", cfg.progressive), ("--ema", cfg.ema), ("--mixup", opts.mixup),
                                     ("--distill", opts.distill), ("--amp on", cfg.amp == "on")) if on]
            if clash:
                raise PocketVisionError(f"{', '.join(clash)}: not with --finetune top, which trains the last blocks "
                                        "on cached activations of a few fixed views; use --finetune full.")
        if opts.lwf and not self.top:
            raise PocketVisionError("--lwf: only with --finetune top on a CPU, which distils the pretrained outputs "
                                    "cached for each photo into every view of it; leave it out.")
        # by value, not by "was it set": a resumed run's options come back from its checkpoint, every field set
        if opts.top_views != ClassifyOptions.model_fields["top_views"].default and (not self.top or opts.linear_probe):
            raise PocketVisionError("--top-views: only with --finetune top on a CPU (a pretrained architecture, not "
                                    "--linear-probe); other runs augment every epoch afresh.")

    def _decode(self, splits, contract: Contract):
        """The photos of both splits, decoded once into RAM when they fit (else lazily in the workers); unreadable
        ones skipped and said -> (train, val, train pixels or None, val pixels, problems, whether cached)."""
        cfg, console, classes, data, workers = self.cfg, self.console, splits.classes, self.data, self.workers
        problems: list[str] = []
        train_samples, val_samples = list(splits.train), list(splits.val)
        use_cache = estimate_cache_mb(len(train_samples), contract, True) <= cfg.cache_mb
        console.print(f"[bold]data[/] {splits.root}: {len(classes)} classes {classes}, "
                      f"train {len(train_samples)}, val {len(val_samples)} "
                      f"({'folders' if splits.explicit else f'stratified split, seed {cfg.seed}'})")
        t0 = time.perf_counter()
        self.pixels = pixels = find_pixels(splits.root, contract, cfg.cache_dir, console)
        val_cache, p = decode_all(val_samples, contract.load)
        problems += p
        train_cache = None
        if use_cache:
            train_cache, p = decode_all(train_samples, lambda path: decode_source(path, contract, pixels))
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
                      f"({'RAM cache' if use_cache else 'lazy decode'}{', from the pixel cache' if pixels else ''}, "
                      f"{workers} workers)")
        return train_samples, val_samples, train_cache, val_cache, problems, use_cache

    def _decide_head(self, user_model: bool) -> None:
        """Keep the ImageNet head when the classes anchor to ImageNet categories (``models/imagenet_head.py``), else
        put a new head in its place. Decided from the pretrained network's top-1 on every training photo; a resumed
        run decides the same way from the same photos, so its checkpoint fits."""

        opts, classes = self.opts, self.splits.classes
        candidate = (not user_model and self.pretrained and opts.imagenet_head != "off"
                     and getattr(self.model, "num_classes", None) == 1000
                     and "imagenet_classes" not in self.spec["args"]
                     and isinstance(getattr(self.model, "classifier", None), torch.nn.Linear))
        if opts.imagenet_head == "on" and not candidate and "imagenet_classes" not in self.spec["args"]:
            raise PocketVisionError("--imagenet-head on: needs a pretrained efficientnet_lite* network (not --scratch, "
                                    "not a model of your own); use --imagenet-head auto.")
        if not candidate:
            if self.cfg.init_from:  # warm start: the parent's weights are the baseline a probe would overwrite
                self.baseline = "parent bundle"
            if "imagenet_classes" in self.spec["args"] and hasattr(self.model.classifier, "both"):
                # A parent bundle's mapped head, kept as it is; the parent's own ImageNet outputs are what to keep.
                self.console.print("head: the parent bundle's ImageNet head")
                if self.top:
                    self._imagenet_logits = self._photo_logits(imagenet=True)[0]
            return
        t0 = time.perf_counter()
        logits, y = self._photo_logits()
        anchor = anchor_classes(logits.argmax(1).numpy(), y, len(classes))
        if anchor.usable:
            self.model.map_classifier(anchor.spec())
            self.spec["args"]["imagenet_classes"] = anchor.spec()
            self.anchor, self._imagenet_logits, self.baseline = anchor, logits, "ImageNet head"
            self.console.print(f"head: the ImageNet head, kept ({anchor.describe(classes)}; "
                               f"{time.perf_counter() - t0:.1f}s)")
            return
        if opts.imagenet_head == "on":
            loose = [f"{c} ({why})" for c, k, why in zip(classes, anchor.classes, anchor.reasons) if k is None]
            raise PocketVisionError(f"--imagenet-head on: {'; '.join(loose)}: more than one class does not anchor to "
                                    "ImageNet categories; use --imagenet-head auto (a new head).")
        self.model.reset_classifier(len(classes))
        loose = [c for c, k in zip(classes, anchor.classes) if k is None]
        self.console.print(f"head: a new one ({', '.join(loose)} do not anchor to ImageNet categories)")

    def _photo_logits(self, imagenet: bool = False):
        """-> (the network's outputs on the training photos as the contract fits them, their labels). On the top
        path: every photo, and the trunk's output of each is kept (the first view the top fine-tune caches);
        ``imagenet``: a kept head's 1000 ImageNet logits. Elsewhere: a sample of at most 300 photos a class (the
        photos may not fit in memory)."""
        if self.top:
            self._fitted = fitted = self._fitted_train()
            k = len(self.model.features) - self.opts.top_blocks
            self._photo_acts = acts = trunk_activations(self.model.features[:k], fitted, self.contract)
            net = TopNet(self.model, k).eval()
            with torch.no_grad():
                out = torch.cat([net(acts[i:i + 256].float(), imagenet=True)[1] if imagenet else
                                 net(acts[i:i + 256].float()) for i in range(0, len(acts), 256)]).float()
            return out, np.array([s.label for s in self.train_samples])
        pixels, y = self._sample_photos(per_class=300)
        self.model.eval()
        with torch.no_grad():
            return torch.from_numpy(self._features(pixels, head=True)), y

    def _sample_photos(self, per_class: int | None = None, total: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """At most ``per_class`` training photos of each class (or ``total`` in all), drawn with the run's seed and
        fitted to the contract -> (uint8 NHWC, labels). Unreadable photos are left out."""
        from PIL import Image

        rng = np.random.default_rng([self.cfg.seed, 13])
        labels = np.array([s.label for s in self.train_samples])
        if per_class is not None:
            pick = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                                   for c in np.unique(labels)])
        else:
            pick = rng.permutation(len(labels))[:total]
        px, ys = [], []
        for i in np.sort(pick):
            try:
                px.append(self.contract.fit(Image.fromarray(self.train_cache[i])) if self.train_cache is not None
                          else self.contract.load(self.train_samples[i].path))
            except ImageDecodeError:
                continue
            ys.append(labels[i])
        return np.stack(px), np.array(ys)

    # -- engine hooks ----------------------------------------------------------------------------------
    def epochs(self, cfg) -> int:
        return 0 if self.opts.linear_probe else cfg.epochs

    def _run_model(self, net, loader, features: bool = False):
        """-> (outputs, labels) for a whole loader, in eval mode."""
        net.eval()
        outs, ys = [], []
        fn = net.forward_features if features else net
        with torch.no_grad():
            for batch in loader:
                if batch is None:
                    continue
                x, y, _ = batch
                with self.engine.autocast():
                    o = fn(self.engine.to_input(x))
                outs.append(o.float().cpu().numpy())
                ys.append(y.numpy())
        if not outs:
            raise PocketVisionError("no readable images to run the model on.")
        return np.concatenate(outs), np.concatenate(ys)

    def prologue(self, engine, resuming: bool) -> None:
        self.engine = engine
        if self.weights is not None:
            self.weights = self.weights.to(engine.device)
        if self.top:
            self._prologue_top(engine, resuming)
            return
        # -- linear probe: the frozen-feature baseline, and the head's starting point --------------------
        if not resuming and self.baseline is not None and not self._probe_wanted():
            engine.record(0, "probe", self.validate(self.model), label=self.baseline)
        elif not resuming and self.pretrained and self._probe_wanted():
            t0 = time.perf_counter()
            plain = make_loader(self.plain_train_ds, self.eval_bs, False, self.workers if not self.use_cache else 0,
                                self.cfg.seed)
            tr_f, tr_y = self._run_model(self.model, plain, features=True)
            set_head(self.model, *fit_probe(self._probe_inputs(tr_f), tr_y, len(self.splits.classes),
                                            self.opts.class_weights == "auto"))
            engine.record(0, "probe", self.validate(self.model), img_per_s=len(self.train_samples) /
                          (time.perf_counter() - t0), label="linear probe")
        if self.opts.distill and self.epochs(self.cfg):
            self.teacher = Teacher(self.opts.distill, self.splits.classes, engine, self.opts.distill_t)

    def _prologue_top(self, engine, resuming: bool) -> None:
        probe = None
        if not resuming and self._probe_wanted():  # resumed: the head is the checkpoint's
            n = len(self.splits.classes)
            balanced = self.opts.class_weights == "auto"
            probe = lambda f, y: fit_probe(f, y, n, balanced)  # noqa: E731
        fitted = self._fitted if self._fitted is not None else self._fitted_train()
        self._top = TopTune(self.model, self.opts.top_blocks, self._top_views(fitted), np.array(
            [s.label for s in self.train_samples]), np.stack(self.val_cache), self.y_val, self.contract,
            seed=self.cfg.seed)
        self._fitted = self._photo_acts = None  # the cache holds them now
        if probe is not None:
            t0 = time.perf_counter()
            set_head(self.model, *probe(self._probe_inputs(self._top.features()), self._top.train_y))
            engine.record(0, "probe", self.validate(self.model), img_per_s=self._top.cached / max(
                self._top.cache_seconds + time.perf_counter() - t0, 1e-9), label="linear probe")
        elif not resuming and self.baseline is not None:  # the pretrained (or parent) head's own reading
            engine.record(0, "probe", self.validate(self.model), label=self.baseline)

    def _probe_wanted(self) -> bool:
        """A linear probe first: asked for, or by default for a new head (not for the ImageNet head, whose reading
        a probe fitted to these photos would bend toward their bias)."""
        if self.opts.linear_probe:
            return True
        return self.opts.probe_init if self.opts.probe_init is not None else self.baseline is None

    def _probe_inputs(self, features: np.ndarray) -> np.ndarray:
        """Pooled features -> what the model's last Linear sees (the features, or an ImageNet head's class scores)."""
        with torch.no_grad():
            return self.model.head_input(torch.from_numpy(features).float()).numpy()

    def _view_plan(self) -> list[str]:
        """What the top fine-tune caches of each photo (``top_views`` in all): the photo, its mirror (unless
        --augment says hflip=0), then crops augmented as pixel training would augment them. With augmentation
        off, or for a linear probe alone, the photo only."""
        aug = self.augmenter
        if not self.epochs(self.cfg) or not aug.cfg.enabled:
            return ["photo"]
        plan = ["photo"] + (["mirror"] if aug.cfg.hflip > 0 and self.opts.top_views >= 2 else [])
        low = (["low-res"] + (["low-res mirror"] if "mirror" in plan else [])) if self.opts.low_res_views else []
        return plan + low + ["augmented"] * (self.opts.top_views - len(plan))

    def _view_dataset(self):

        # keyed (view, photo): the augmentation is seeded by both, so a resumed run caches the same views
        return ImageDataset(self.train_samples, self.contract, self.augmenter, self.cfg.seed, self.train_cache,
                            pixels=self.pixels)

    def _top_views(self, fitted: np.ndarray):
        """One uint8 NHWC array per view of ``_view_plan``, made when the cache asks for it."""
        ds = self._view_dataset()
        low = None
        for v, kind in enumerate(self._view_plan()):
            if kind == "photo":  # the trunk's output when the head decision computed it already
                yield self._photo_acts if self._photo_acts is not None else fitted
            elif kind == "mirror":
                yield np.ascontiguousarray(fitted[:, :, ::-1])
            elif kind == "low-res":
                low = self._low_res_views()
                yield low
            elif kind == "low-res mirror":
                yield np.ascontiguousarray(low[:, :, ::-1])
            else:
                yield np.stack([ds[v, i][0].numpy() for i in range(len(ds))])

    def _low_res(self, i: int):
        """Photo ``i`` at a low resolution drawn for it (seeded by the run's seed and the photo), as a PIL image."""
        from PIL import Image

        from ...data.augment import low_resolution
        a = self.train_cache[i] if self.train_cache is not None else decode_source(
            self.train_samples[i].path, self.contract, self.pixels)
        return low_resolution(Image.fromarray(a), np.random.default_rng([self.cfg.seed, 11, i]))

    def _low_res_views(self) -> np.ndarray:
        return np.stack([self.contract.fit(self._low_res(i)) for i in range(len(self.train_samples))])

    def _fitted_train(self) -> np.ndarray:
        """Training images resized per the contract (no augmentation), from the RAM cache when present."""
        from PIL import Image

        if self.train_cache is not None:
            return np.stack([self.contract.fit(Image.fromarray(a)) for a in self.train_cache])
        arrays, _ = decode_all(self.train_samples, self.contract.load)
        # Lazy decoding found the unreadable photos only now: drop them from the samples too, so that the labels
        # and the augmented views stay aligned with these pixels.
        keep = [i for i, a in enumerate(arrays) if a is not None]
        self.train_samples = [self.train_samples[i] for i in keep]
        return np.stack([arrays[i] for i in keep])

    @property
    def trainable(self):
        return self._top.net if self._top is not None else self.model

    def param_groups(self, peak: float, backbone_lr_mult: float) -> list[dict]:
        if self._top is not None:  # the head learns 3x faster than the top blocks
            return self._top.param_groups(peak)
        return super().param_groups(peak, backbone_lr_mult)

    def scheduler(self, optimizer, total_steps: int):
        if self._top is not None and "schedule" not in self.cfg.model_fields_set:
            return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                       total_steps=total_steps, pct_start=0.2)
        return None

    def phase(self, epoch: int) -> str:
        return "top" if self._top is not None else "train"

    def _batch_size(self) -> int:
        return self.cfg.batch_size if "batch_size" in self.cfg.model_fields_set else 64

    def _loader(self):
        import functools

        if self._train_loader is None:
            fn = collate
            if self.batched:  # on the GPU: augmented in `batches`; on a CPU: in the workers' collate
                on_gpu = self.engine.device.type != "cpu"
                fn = functools.partial(collate_sources, augment_mode=None if on_gpu else grid_mode(self.contract))
            self._train_loader = make_loader(self.train_ds, self.cfg.batch_size, True, self.workers, self.cfg.seed,
                                             drop_last=len(self.train_ds) > self.cfg.batch_size, shard=self.shard,
                                             collate_fn=fn)
        return self._train_loader


    def steps_per_epoch(self) -> int:
        if self._top is not None:
            return self._top.steps(self._batch_size(), self.shard)
        return len(self._loader())

    def batches(self, epoch: int):
        if self._top is not None:
            return self._top.batches(self._batch_size(), self.shard, epoch)
        self.train_ds.set_epoch(epoch)
        if self.batched and self.engine.device.type != "cpu":
            return augmented_on(self.engine.device, self._loader(), grid_mode(self.contract))
        return self._loader()

    def forward(self, net, batch):
        if self._top is not None:
            return self._top.forward(net, batch, imagenet=bool(self.lwf))
        x, y, _ = batch
        y_b, lam = y, 1.0
        if self.opts.mixup and self.mix_rng.random() < self.opts.mixup:
            x, y_b, lam = cutmix(x, y, self.mix_rng)
        logits = net(self.engine.to_input(x))
        return logits, x, y_b, lam

    def loss(self, outputs, batch):
        if self._top is not None:
            logits, z = outputs if self.lwf else (outputs, None)
            loss = F.cross_entropy(logits, self._top.labels(batch), weight=self.weights,
                                   label_smoothing=self.label_smoothing)
            if z is not None:  # learning without forgetting: every view keeps what the network said of its photo
                t = LWF_T
                target = F.softmax(self._imagenet_logits[self._top.photo(batch)] / t, 1)
                loss = loss + self.lwf * t * t * F.kl_div(F.log_softmax(z.float() / t, 1), target,
                                                          reduction="batchmean")
            return loss
        logits, x, y_b, lam = outputs
        dev = self.engine.device
        y, y_b = batch[1].to(dev, non_blocking=True), y_b.to(dev, non_blocking=True)
        loss = F.cross_entropy(logits.float(), y, weight=self.weights, label_smoothing=self.label_smoothing)
        if lam < 1.0:
            loss = lam * loss + (1 - lam) * F.cross_entropy(logits.float(), y_b, weight=self.weights,
                                                            label_smoothing=self.label_smoothing)
        if self.teacher is not None:
            loss = (1 - self.opts.distill_alpha) * loss + self.opts.distill_alpha * self.teacher.loss(x, logits)
        return loss

    def batch_size(self, batch) -> int:
        return len(batch) if self._top is not None else len(batch[1])

    def preview(self, batch):
        if self._top is None:
            return batch[0].cpu()
        if self.train_cache is None:
            return None
        # the cached path trains on views of the photos (_view_plan): show those views, not activations
        from PIL import Image
        n, plan, ds = len(self.train_samples), self._view_plan(), self._view_dataset()
        views = []
        for v, i in (divmod(int(k), n) for k in batch[:32]):
            if plan[v] == "augmented":
                views.append(ds[v, i][0].numpy())
            elif plan[v].startswith("low-res"):
                low = self.contract.fit(self._low_res(i))
                views.append(low if plan[v] == "low-res" else low[:, ::-1])
            else:
                fit = self.contract.fit(Image.fromarray(self.train_cache[i]))
                views.append(fit if plan[v] == "photo" else fit[:, ::-1])
        return torch.from_numpy(np.ascontiguousarray(np.stack(views)))

    def validate(self, net) -> Validation:
        if self._top is not None:
            logits = self._top.run(self._top.val_acts)
        else:
            logits, _ = self._run_model(net, self.val_loader)
        probs = softmax(logits)
        acc, loss = val_score(probs, self.y_val)
        # A pretrained run starts near the top (99% val after its probe): accuracy then moves by a photo or two and
        # ties, and augmented fine-tuning shifts the argmax before the calibrated threshold is chosen. The log loss
        # (a proper score) orders those epochs; a from-scratch run still climbs, and accuracy orders it first.
        score = (-loss,) if self.pretrained else (acc, -loss)
        return Validation(score, {"val_loss": loss, "val_acc": acc},
                          f"val loss {loss:.4f}  val acc {acc:.4f}", probs)

    def epoch_note(self, epoch: int) -> str:
        return f"  {self.train_ds.sizes[epoch][0]}px" if self.train_ds.sizes and self._top is None else ""

    def close(self) -> None:
        if self._top is not None:
            self._top.release()

    def on_end(self, engine) -> None:
        if engine.logger.tb and hasattr(self.model, "forward_features"):
            self._log_embeddings(engine.logger.tb)

    def _log_embeddings(self, tb) -> None:
        """TensorBoard projector: pooled val features with labels and thumbnails."""
        if self._top is not None:  # the cached path: the val activations are there already
            feats, ys = self._top.run(self._top.val_acts, features=True), self.y_val
        else:
            feats, ys = self._run_model(self.model, self.val_loader, features=True)
        thumbs = []
        for a in self.val_cache:
            thumbs.append(torch.from_numpy(np.ascontiguousarray(
                a[::max(1, a.shape[0] // 32), ::max(1, a.shape[1] // 32)][:32, :32])))
        label_img = torch.stack(thumbs).permute(0, 3, 1, 2).float() / 255
        tb.add_embedding(torch.from_numpy(feats), metadata=[self.splits.classes[y] for y in ys], label_img=label_img,
                         tag="val")

    def _calibrate(self, probs: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Temperature scaling on val + a phone-photo shifted twin of val, folded into the last Linear (so the
        graph of every export outputs calibrated probabilities). -> (calibrated val probs, the record)."""


        def logits(pixels: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return self.model(torch.from_numpy(self.contract.normalize(pixels))).float().numpy()

        self.model.eval()
        shifted, kinds = shifted_copy(np.stack(self.val_cache), seed=self.cfg.seed)
        z_val, z_shift = log_probs(probs), batched(logits, shifted)
        y2 = np.concatenate([self.y_val, self.y_val])
        t = fit_temperature(np.concatenate([z_val, z_shift]), y2)
        record: dict[str, Any] = {"temperature": t, "fitted_on": f"val + shifted val ({len(y2)} images)",
                                  "ece_val_before": reliability(probs, self.y_val)["ece"],
                                  "ece_shifted_before": reliability(scale(z_shift, 1.0), self.y_val)["ece"]}
        try:
            head = final_linear(self.model)
        except TypeError:
            head = None
        if head is not None:  # fold 1/T into the classifier; proven on real images, else undone
            params = [p for p in (head.weight, head.bias) if p is not None]
            with torch.no_grad():
                for p in params:
                    p.div_(t)
            probe = shifted[:8]
            if not np.allclose(logits(probe), z_shift[:8] / t, atol=1e-3 * max(1.0, np.abs(z_shift).max() / t)):
                with torch.no_grad():
                    for p in params:
                        p.mul_(t)
                head = None
        if head is None:
            self.console.print("[yellow]calibration skipped[/]: the model's last nn.Linear is not its output layer")
            return probs, {**record, "temperature": 1.0, "folded": False}
        cal_val, cal_shift = scale(z_val, t), scale(z_shift, t)
        record.update(folded=True, ece_val=reliability(cal_val, self.y_val)["ece"],
                      ece_shifted=reliability(cal_shift, self.y_val)["ece"],
                      shifted_accuracy=float((cal_shift.argmax(1) == self.y_val).mean()),
                      shifted_corruptions=sorted(set(kinds)))
        self._shifted = cal_shift
        self.console.print(f"calibrated: temperature {t:.3f}, ECE val {record['ece_val_before']:.3f} -> "
                           f"{record['ece_val']:.3f}, shifted val {record['ece_shifted_before']:.3f} -> "
                           f"{record['ece_shifted']:.3f} (accuracy {record['shifted_accuracy']:.3f})")
        return cal_val, record

    def _fit_familiarity(self, val_probs: np.ndarray) -> dict[str, Any] | None:
        """The network's own "how unlike the training photos" score (``models/familiarity.py``): centres of the
        training photos' features, standardised on val with the final (calibrated) probabilities. -> the bundle's
        record, or None for a model with no pooled features (one of your own)."""
        if not hasattr(self.model, "attach_familiarity"):
            return None
        t0 = time.perf_counter()
        self.model.eval()
        if self._top is not None:  # the cached path has both at hand
            train_f = self._top.features()
            val_f = self._top.run(self._top.val_acts, features=True)
        else:  # the model is back on the CPU here: features of (at most 1,000) training photos and of val
            train_f, val_f = (self._features(px) for px in (self._sample_photos(total=1000)[0],
                                                            np.stack(self.val_cache)))
        fam, scores = fit_familiarity(train_f, val_f, val_probs, CENTRES, self.cfg.seed)
        self.model.familiarity = fam
        self.spec["familiarity"] = fam.centres.shape[0]
        rec = val_record(scores)
        rec.update(centres=int(fam.centres.shape[0]), seconds=round(time.perf_counter() - t0, 2),
                   how="cosine distance to the nearest training centre + (1 - top probability), each standardised "
                       "on val")
        self.console.print(f"unfamiliar score: {fam.centres.shape[0]} training centres; a photo above "
                           f"{rec['flag_above']:.2f} is less familiar than 95% of val")
        return rec

    def _features(self, pixels: np.ndarray, head: bool = False) -> np.ndarray:
        """Pooled features (``head``: the model's outputs) of uint8 NHWC pixels, on the CPU, in batches."""
        fn = self.model if head else self.model.forward_features
        with torch.no_grad():
            return np.concatenate([fn(torch.from_numpy(self.contract.normalize(pixels[i:i + 64]))).float().numpy()
                                   for i in range(0, len(pixels), 64)])

    def finish(self, best: Validation | None, run_dir: Path | None) -> dict[str, Any]:
        probs = best.result if best is not None else self.validate(self.model).result
        labels = self.splits.classes
        self._shifted = None
        calibration = None
        if self.opts.calibrate:
            probs, calibration = self._calibrate(probs)
        unfamiliar = self._fit_familiarity(probs)
        metrics = classification_metrics(self.y_val, probs, labels, target_precision=self.opts.target_precision)
        if metrics.get("threshold") is not None and self._shifted is not None:
            # The operating point must hold off the val split: chosen on val + its shifted twin, with the
            # precision's 95% lower bound reaching the target (not the one val point that happens to).
            pick = classification_metrics(np.concatenate([self.y_val, self.y_val]),
                                          np.concatenate([probs, self._shifted]), labels,
                                          target_precision=self.opts.target_precision, bound=True)
            chosen = classification_metrics(self.y_val, probs, labels, threshold=pick["threshold"],
                                            target_precision=self.opts.target_precision)
            chosen["threshold_source"] = pick["threshold_source"]
            chosen["threshold_reached"] = bool(pick["threshold_reached"] and chosen["threshold_reached"])
            chosen["threshold_selection"] = {k.removeprefix("threshold_"): pick[k] for k in (
                "threshold_precision", "threshold_precision_lower95", "threshold_recall", "threshold_reached")}
            chosen["threshold_selection"]["images"] = calibration["fitted_on"] if calibration else "val"
            metrics = chosen
        if calibration is not None:
            metrics["calibration"]["temperature"] = calibration["temperature"]
            metrics["temperature_scaling"] = calibration
        threshold = None
        if metrics.get("threshold") is not None:
            threshold = {"positive": metrics["positive_index"], "value": metrics["threshold"],
                         "target_precision": self.opts.target_precision,
                         "reached": metrics.get("threshold_reached", False)}
        splits = self.splits
        out: dict[str, Any] = {
            "labels": labels, "metrics": metrics, "threshold": threshold, "unfamiliar": unfamiliar,
            "data": {"root": str(Path(self.data).resolve()), "fingerprint": splits.fingerprint(),
                     "counts": splits.counts(), "explicit_splits": splits.explicit,
                     "val_fraction": self.cfg.val_fraction, "seed": self.cfg.seed, "skipped": self.problems}}
        if run_dir is not None:
            config = {**self.cfg.model_dump(mode="json"), **self.opts.model_dump(mode="json")}
            out["report"] = str(write_report(run_dir / "report", metrics, self.y_val, probs, labels,
                                             [s.path for s in self.val_samples],
                                             title=f"Training: {self.spec['name']}",
                                             extra={"training": {k: v for k, v in config.items()
                                                                 if v not in (None, {}, [])}}))
            _tb_confusion(run_dir, metrics, labels, self.cfg.tensorboard, self.y_val, probs)
        return out


def _tb_confusion(run_dir: Path, metrics: dict, labels: list[str], tensorboard: bool, y: np.ndarray,
                  probs: np.ndarray) -> None:
    """Confusion matrix, one PR curve per class and the reliability diagram, for every training path."""
    if not tensorboard:
        return
    try:
        from matplotlib.figure import Figure
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    cm = np.asarray(metrics["confusion_matrix"]["matrix"])
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set_xticks(range(len(labels)), labels, rotation=45), ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    with SummaryWriter(str(run_dir / "tb")) as w:
        w.add_figure("val/confusion_matrix", fig)
        for c, name in enumerate(labels):
            w.add_pr_curve(f"val/pr/{name}", y == c, probs[:, c])
        if metrics.get("calibration", {}).get("bins"):
            import io

            from PIL import Image
            png = np.asarray(Image.open(io.BytesIO(reliability_png(metrics["calibration"]))).convert("RGB"))
            w.add_image("val/reliability", png, dataformats="HWC")


