"""Image classification as a task plug-in: class folders in, probabilities out.

Training (``ClassifyRun`` in ``run.py``, driven by ``training/engine.py``): a pretrained architecture first fits a
logistic-regression head on frozen features (the linear-probe baseline: exact and fast; it counts as epoch 0,
so fine-tuning never ends worse than it), then either trains its last blocks on cached trunk activations of a few
views of each photo (``finetune="top"``, fast on a CPU: ``top_tune.py``) or every layer with pixel
augmentation (``finetune="full"``). From scratch: augmentation, class weights, label smoothing, optional CutMix and
distillation from a teacher bundle, progressive resizing. The best validation epoch is kept (least log loss when
pretrained; accuracy first from scratch); a binary model gets a decision threshold chosen for a target precision.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...core.contract import Contract
from ...core.pixels import batched, load_pixels
from ...data import shards
from ...data.folder import SPLITS, labelled_samples, scan
from ...errors import PocketVisionError
from ...evaluate import classification_metrics, render_table, write_report
from ...training.recipes import Recipe, scaled_epochs
from ..base import HeldOut, Int8Recipe, OutputSpec, Starter, Task, register_task
from .compare import compare_to_val, render_shift, val_summary
from .decision import decide

if TYPE_CHECKING:  # pragma: no cover
    from .run import ClassifyRun

from .options import ClassifyCheckOptions, ClassifyEvalOptions, ClassifyOptions

PROB_TOLERANCE = 1e-3  # float exports: max |probability difference|
MIN_AGREEMENT = 0.995
# A teachable export's anchors: training photos' embeddings per shipped class. Measured (hotdog default + two
# dish classes of 10 examples, class-balanced fit): 8 per class let the new classes take 1-3 val photos, 32 none
# (val 0.9893 kept) with the new classes still recalled (0.83, 0.93); 64 no better.
ANCHORS = 32
MAX_ANCHORS = 1024  # ~2.6 MB of float16 for Lite0: many-class models keep fewer per class








def embedding_id(body, contract: Contract) -> str:
    """SHA-256 of the weights the embedding depends on (the parameters its gradient reaches, and the buffers of
    their modules): equal ids, equal embeddings. A release whose id differs from the last one's changed its
    embedding's meaning, and a device's personal classes must be embedded again (``ota`` says so)."""
    import hashlib

    import torch
    body = body.eval()
    named = [(n, p) for n, p in body.named_parameters()]
    x = torch.zeros(1, 3, *contract.size)
    with torch.enable_grad():
        emb = body(x)[-1]
        grads = torch.autograd.grad(emb.sum(), [p for _, p in named], allow_unused=True)
    used = {n for (n, _), g in zip(named, grads) if g is not None}
    owners = {n.rpartition(".")[0] for n in used}
    h = hashlib.sha256()
    for n, t in sorted([*[(n, p) for n, p in named if n in used],
                        *[(n, b) for n, b in body.named_buffers() if n.rpartition(".")[0] in owners]]):
        h.update(n.encode())
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


# -- the plug-in ---------------------------------------------------------------------------------------
@register_task
class ClassifyTask(Task):
    name = "classify"
    summary = "image classification: class = sub-folder of an image folder"
    Options = ClassifyOptions
    EvalOptions = ClassifyEvalOptions
    CheckOptions = ClassifyCheckOptions
    # "unfamiliar": how unlike the training photos each photo is (models/familiarity.py), when the bundle has one;
    # "embedding": the pooled features before the head, in a teachable export (a device learns new classes on it)
    outputs = OutputSpec(names=("probabilities", "logits", "unfamiliar", "embedding"), coreml="classifier",
                         web_renderer="classify.js", quality="accuracy")
    teachable = True
    compressions = frozenset({"int8", "fp16", "palettize", "qat", "prune"})
    default_arch = ("efficientnet_lite0", {})
    detect_order = 100
    fallback = True  # any folder of images
    shift_keeps_truth = True  # a blurred, dark or tilted hot dog is still a hot dog
    finish_options = frozenset({"target_precision", "calibrate"})  # both act in finish(), on the trained weights

    def detect(self, data: str | os.PathLike) -> bool:
        return True

    def shard_records(self, data, val_fraction, seed):
        splits = scan(data, val_fraction=val_fraction, seed=seed)
        root = Path(data)
        return {"classes": splits.classes}, {
            split: [(s.path, s.path.relative_to(root).as_posix(), {"label": splits.classes[s.label]})
                    for s in getattr(splits, split)] for split in SPLITS if getattr(splits, split)}

    def count_images(self, data: str | os.PathLike) -> int | None:
        try:
            return len(scan(data).train)
        except PocketVisionError:  # the run itself reports a bad folder, with its own message
            return None

    def recipe(self, ctx):
        if ctx.pretrained:
            # The engine defaults already are this recipe; naming it puts it in the bundle and on screen.
            return Recipe("pretrained-probe-top", "logistic-regression probe on frozen ImageNet features, then the "
                          "last 3 blocks fine-tuned on cached activations (CPU) or the whole net (GPU), least-val-loss "
                          "epoch kept: EfficientNet-Lite0 99.5% val on the hotdog photos in ~3 min on 2 CPU cores")
        # From scratch. Measured with DeepDog alpha=0.5 on the hotdog photos (1,101 training images): these
        # settings give 90.4-90.9% val on 5 of 5 seeds in ~8 min on 2 cores (benchmarks/RESULTS.md,
        # "DeepDog alpha=0.5 from scratch");
        # the plain engine defaults (AdamW 3e-3, 8 epochs) reach the low 80s. Small data from scratch wants
        # many epochs; a bigger set keeps the same number of image steps.
        engine: dict[str, Any] = dict(epochs=scaled_epochs(120, 1101, ctx.n_images, floor=20), optimizer="sgd",
                                      lr=0.1, weight_decay=5e-4, ema=0.995)
        arch_args: dict[str, Any] = {}
        coupled = Recipe.coupled
        if ctx.arch == "deepdog":  # its measured size and width; dw_bn: BN + ReLU between dw and pw (MobileNetV1)
            engine.update(size=128, progressive=96, progressive_until=0.9)
            arch_args = {"alpha": 0.5, "dw_bn": True}
        elif ctx.arch == "searched" and ctx.size:
            # A searched network trains at the side its architecture file gives, with deepdog's progressive resizing
            # from 3/4 of that side: measured on the hotdog photos (benchmarks/RESULTS.md,
            # "The stored threshold on from-scratch networks"), the 75-minute
            # search's winner went from 89.8/89.3% val (seeds 0/1) to 92.0/90.9% with it. The start follows the
            # given side, so a size of the user's own keeps it.
            start = 3 * ctx.size // 4 // 16 * 16
            if 16 <= start < ctx.size:
                engine.update(progressive=start, progressive_until=0.9)
                coupled = (("optimizer", "lr", "weight_decay"),)
        return Recipe("scratch-sgd-ema" + ("-progressive" if "progressive" in engine else ""),
                      "SGD 0.1 one-cycle, weight decay 5e-4, EMA 0.995, crops of 40-100% of the photo, 120 epochs "
                      "for ~1,100 images: DeepDog alpha=0.5 90.4-90.9% val on 5 of 5 seeds (hotdog, 2 CPU cores, "
                      "~8 min); progressive resizing for deepdog and searched networks; other architectures get the "
                      "optimiser part, not measured per architecture",
                      engine=engine, arch_args=arch_args, augment={"scale": [0.4, 1.0]}, coupled=coupled)

    # -- data ------------------------------------------------------------------------------------------
    def _samples(self, meta: dict[str, Any], data, split: str):
        if data is not None:
            if split == "val":
                return labelled_samples(data, list(meta["labels"]))[0], str(data)
            root = Path(data)
            return (scan(root, classes=list(meta["labels"])).train if root.is_dir() else []), str(root)
        d = meta.get("data", {})
        root = d.get("root")
        if not root or not Path(root).is_dir():
            return [], None
        splits = scan(root, val_fraction=d.get("val_fraction", 0.15), seed=d.get("seed", 0),
                      classes=list(meta["labels"]))
        return getattr(splits, split), root

    def held_out(self, meta: dict[str, Any], data=None) -> HeldOut:
        samples, _ = self._samples(meta, data, "val")
        pixels, kept = load_pixels([s.path for s in samples], Contract.from_dict(meta["contract"]))
        return HeldOut(pixels, np.array([samples[i].label for i in kept]), [samples[i].path for i in kept])

    def training_images(self, meta: dict[str, Any], data=None) -> tuple[list[Path], str | None]:
        samples, where = self._samples(meta, None, "train")
        if not samples and data is not None:
            samples, where = self._samples(meta, data, "train")
        return [s.path for s in samples], where

    def setup(self, data, cfg, opts, console, resuming: bool, user_model=None) -> ClassifyRun:
        from .run import ClassifyRun
        return ClassifyRun(self, data, cfg, opts, console, resuming, user_model)

    def int8_recipe(self, onnx_path: Path | None):
        """Every quantisable op of the trunk, calibrated at the 99.99th percentile of 128 training photos; the head
        (everything after the pooled features) float but for its large dense layers' weights. Measured on the
        default EfficientNet-Lite0 (hotdog, ImageNet head kept), judged on val and its phone-photo twin at the
        stored threshold: with the head in int8 too, every photo got one answer (0.59: the kept head's -inf class
        mask and its 1,000 logits share one uint8 scale); this recipe: -0.5 / -0.5 points, 5.1 MB. (Before the
        kept head: MinMax on 256 photos kept 12 layers float and still lost 0.5 / 2.1; percentile 0.0 / 0.5.)"""
        return Int8Recipe(float_head=True, calibration="percentile", percentile=99.99, max_images=128)

    @staticmethod
    def sampled_nll(logits, generator):
        import torch
        import torch.nn.functional as F
        with torch.no_grad():
            y = torch.multinomial(torch.softmax(logits.float(), 1), 1, generator=generator).squeeze(1)
        return F.cross_entropy(logits.float(), y, reduction="sum")

    # -- graph -----------------------------------------------------------------------------------------
    def graph_model(self, model, teachable: bool = False):
        if getattr(model, "familiarity", None) is None:
            if teachable:  # the outputs are named by position: the embedding comes after the unfamiliarity score
                raise PocketVisionError("--teachable needs a bundle trained by this version (its unfamiliarity "
                                        "score comes before the embedding): retrain it with `pocketvision train`.")
            return model
        from ...models.familiarity import WithUnfamiliar
        return WithUnfamiliar(model, embedding=teachable)

    def graph_head(self, y):
        import torch
        if isinstance(y, tuple):  # (logits, unfamiliarity[, embedding])
            return (torch.softmax(y[0], dim=1), *y)
        return torch.softmax(y, dim=1), y

    def teach_meta(self, bundle, data=None) -> dict[str, Any]:
        """The embedding's name and length, and anchors: up to ``ANCHORS`` training photos' embeddings per class
        (float16), the shipped classes' side when a device fits personal classes beside them (``runtime/teach``)."""
        samples, where = self._samples(bundle.meta, None, "train")
        if not samples and data is not None:
            samples, where = self._samples(bundle.meta, data, "train")
        labels = list(bundle.labels)
        per = max(1, min(ANCHORS, MAX_ANCHORS // len(labels)))
        shuffled = [samples[i] for i in np.random.default_rng(0).permutation(len(samples))]
        picked = [s for k in range(len(labels)) for s in [s for s in shuffled if s.label == k][:per]]
        if {s.label for s in picked} != set(range(len(labels))):
            raise PocketVisionError(f"--teachable keeps a few training photos' embeddings per class (what personal "
                                    f"classes are fitted against); the training data ({where or 'not found'}) has "
                                    "none for some classes: pass --data DIR with train/<class>/ folders.")
        pixels, kept = load_pixels([s.path for s in picked], bundle.contract)
        emb = batched(lambda p: bundle.run_outputs(p, teachable=True)["embedding"], pixels).astype(np.float16)
        return {"output": "embedding", "features": int(emb.shape[1]), "rows": "unit length",
                "id": embedding_id(self.graph_model(bundle.model, teachable=True), bundle.contract),
                "learner": "softmax regression, pocketvision.runtime.teach.fit_head",
                "anchors": {"labels": [labels[picked[i].label] for i in kept], "shape": list(emb.shape),
                            "float16_b64": base64.b64encode(emb.tobytes()).decode()}}

    def starter(self, arch: str) -> Starter:
        """``arch``'s offline ImageNet weights up to the pooled features: the embedding a page learns every class
        on (no anchors: there are no shipped classes). Its head is never part of the graph."""
        import torch

        from ...models.registry import build_model, model_entry

        class Embedding(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, x):
                return (self.net.forward_features(x),)

        net = build_model({"name": arch, "args": {"num_classes": 1000}}, pretrained=True).eval()
        if not hasattr(net, "forward_features"):
            raise PocketVisionError(f"{arch} has no pooled features to learn on; use efficientnet_lite0 (or another "
                                    "pretrained classifier in `pocketvision info`).")
        contract = Contract.from_dict(model_entry(arch).default_contract)
        body = Embedding(net).eval()
        with torch.no_grad():
            features = body(torch.zeros(1, 3, *contract.size))[0].shape[1]
        meta = {"labels": [], "task": self.name, "contract": contract.to_dict(), "threshold": None,
                "arch": {"name": arch, "args": {}}, "precision": "fp32",
                "teach": {"output": "embedding", "features": features, "rows": "unit length", "starter": True,
                          "id": embedding_id(body, contract), "anchors": None,
                          "learner": "softmax regression, pocketvision.runtime.teach.fit_head"}}
        return Starter(body, contract, meta, OutputSpec(names=("embedding",), web_renderer=self.outputs.web_renderer))

    # -- runtime ---------------------------------------------------------------------------------------
    def predict(self, model, sources: Sequence) -> list[dict[str, Any]]:
        c = model.contract
        pixels = np.stack([c.load(s) for s in sources])
        outs = model.run_outputs(pixels)
        records = decide(outs["probabilities"], model.labels, model.threshold)
        unf, ref = outs.get("unfamiliar"), (model.meta.get("unfamiliar") or {})
        if unf is not None:  # how unlike the training photos; flagged above 95% of the val photos' scores
            for r, u in zip(records, np.asarray(unf, dtype=np.float64).reshape(-1)):
                r["unfamiliar"] = float(u)
                if ref.get("flag_above") is not None:
                    r["unfamiliar_flag"] = bool(u > float(ref["flag_above"]))
        return records

    def record_line(self, record: dict[str, Any]) -> str:
        return f"{record['label']}\t{record['confidence']:.4f}"

    def evaluate(self, model, data, *, split="auto", report_dir=None, title="model", options=None) -> dict[str, Any]:
        labels, contract = model.labels, model.contract
        compare = options is not None and options.compare_to_val
        unknown: list[str] = []
        samples, used = labelled_samples(data, labels, split, unknown_out=unknown if compare else None)
        val = (model.meta.get("val") or (val_summary(model.meta["metrics"]) if model.meta.get("metrics") else {})
               if compare else {})
        if compare and not val:
            raise PocketVisionError(f"{getattr(model, 'path', None) or 'model'}: carries no val figures to compare "
                                    "against (an export made before they were recorded); re-export it, or pass "
                                    "the .pvb bundle.")
        pixels, kept = load_pixels([s.path for s in samples], contract)
        if not kept:
            raise PocketVisionError(f"{data}: none of the {len(samples)} images could be read.")
        y = np.array([samples[i].label for i in kept])
        probs = batched(model.run_pixels, pixels)
        given = options.threshold if options is not None else None
        thr = given if given is not None else (model.threshold or {}).get("value")
        metrics = classification_metrics(y, probs, labels, threshold=thr)
        # the headline uses the bundle's decision rule (its threshold); metrics carry argmax's beside it
        metrics.update(data=str(data), split=used, skipped_unreadable=len(samples) - len(kept))
        if compare:
            metrics["shift"] = compare_to_val(val, metrics, y, probs, [samples[i].path for i in kept], labels,
                                              unknown)
        if report_dir is not None:
            metrics["report"] = str(write_report(Path(report_dir), metrics, y, probs, labels,
                                                 [samples[i].path for i in kept], title=f"Evaluation: {title}"))
        return metrics

    def render_metrics(self, metrics: dict[str, Any], console) -> None:
        render_table(metrics, console)
        if metrics.get("shift"):
            render_shift(metrics["shift"], console)

    def export_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        # the val figures travel with every export, so `eval --compare-to-val` works on the file on a phone too;
        # so does the val distribution of the unfamiliarity score, so a device can flag a photo by itself
        out = {"val": val_summary(meta["metrics"])} if meta.get("metrics", {}).get("accuracy") is not None else {}
        if meta.get("unfamiliar"):
            out["unfamiliar"] = {k: meta["unfamiliar"][k] for k in ("flag_above", "val_quantiles")
                                 if k in meta["unfamiliar"]}
        return out

    def quality(self, outputs: np.ndarray, truth, reference, meta) -> float:
        # The answers users see: a binary bundle's stored threshold decides, not argmax (budgets and gates judge them).
        picked = [r["index"] for r in decide(outputs, list(meta["labels"]), meta.get("threshold"))]
        return float((np.asarray(picked) == truth).mean())

    def compare(self, ref, cand, truth, meta, tolerance=None) -> dict[str, Any]:
        tolerance = PROB_TOLERANCE if tolerance is None else tolerance
        diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
        agree = float((ref.argmax(1) == cand.argmax(1)).mean())
        out: dict[str, Any] = {"n": int(len(ref)), "max_abs_diff": float(diff.max()) if diff.size else 0.0,
                               "mean_abs_diff": float(diff.mean()) if diff.size else 0.0, "top1_agreement": agree,
                               "tolerance": tolerance, "min_agreement": MIN_AGREEMENT}
        if truth is not None and len(truth):
            ra, ca = self.quality(ref, truth, None, meta), self.quality(cand, truth, None, meta)
            out.update(reference_accuracy=ra, candidate_accuracy=ca, accuracy_change=ca - ra,
                       reference_quality=ra, candidate_quality=ca)
        out["passed"] = bool(out["n"] > 0 and out["max_abs_diff"] <= tolerance and agree >= MIN_AGREEMENT)
        return out

    def parity_line(self, v: dict[str, Any]) -> str:
        extra = (f", accuracy {v['reference_accuracy']:.4f} -> {v['candidate_accuracy']:.4f}"
                 if "candidate_accuracy" in v else "")
        crit = f" ({v['criterion']})" if v.get("criterion") else f" (tol {v['tolerance']:.0e})"
        return (f"{v['n']} real images, max |dp| {v['max_abs_diff']:.2e}{crit}, top-1 agreement "
                f"{v['top1_agreement']:.4f}{extra}")

    # -- label -----------------------------------------------------------------------------------------
    def label_problem(self, mode: str, labels: list[str], names: list[str]) -> str | None:
        if mode != "classes":
            return f"a classify model cannot suggest {mode}."
        if sorted(labels) != sorted(names):
            return f"its classes {labels} differ from --classes {names}."
        return None

    def label_suggestion(self, record: dict[str, Any], names: list[str]) -> dict[str, Any]:
        return {"class": record["label"], "confidence": record["confidence"],
                "uncertainty": 1.0 - float(record["confidence"])}

    # -- check -----------------------------------------------------------------------------------------
    def check(self, data, options: ClassifyCheckOptions):
        from .check import check_dataset, render_check, write_preview
        rep = check_dataset(data, val_fraction=options.val_fraction, seed=options.seed, tiny=options.tiny)
        report = rep.to_dict()
        content = None
        if options.content_sheet and not options.content:
            raise PocketVisionError("--content-sheet draws the content check's clusters; leave out --no-content.")
        if options.content and not shards.is_shard_set(Path(data)):  # a shard set's photos are not files to open

            from . import content as classify_content
            splits = scan(data, val_fraction=options.val_fraction, seed=options.seed)
            content = classify_content.analyse(
                {c: [s.path for s in splits.train if s.label == i] for i, c in enumerate(splits.classes)},
                max_per_class=options.content_per_class, seed=options.seed)
            if options.content_sheet:
                classify_content.write_sheet(content, options.content_sheet)
            report["content"] = content.to_dict()

        def show(console) -> None:
            render_check(rep, console)
            if content is not None:
                classify_content.render(content, console)
        if options.preview:
            from ...data.augment import AugmentConfig, Augmenter
            write_preview(scan(data, val_fraction=options.val_fraction, seed=options.seed), options.preview,
                          Augmenter(AugmentConfig(), Contract(size=(options.size, options.size))),
                          n=options.preview_n, seed=options.seed)
        return report, show
