"""Keypoints (landmarks) as a task plug-in: COCO keypoints / CSV annotations in, points in pixels out.

The network (``net.py``: a registry backbone + a heatmap, SimCC or regression head) already
returns decoded points ``(N, K, 3)`` = x, y, score in model-input pixels, so every export hands apps finished
points. Points come back in each original image's pixels (the contract's resize undone, full resolution).

Training (``KeypointRun`` in ``run.py``, driven by ``training/engine.py``): images are decoded once into RAM, shrunk so the
short side is just above the model's (points scaled with them); each epoch warps them with a fresh random
homography per sample (flips swap left/right points), seeded by ``(seed, epoch, index)``. The best epoch by
validation NME is kept. Images listed in ``exclude`` (``pocketvision check --suspects-out``) stay out of
training and of every later measurement.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...core.bundle_file import atomic_write_bytes
from ...core.contract import Contract, load_rgb
from ...core.pixels import load_pixels
from ...data import shards
from ...errors import ImageDecodeError, PocketVisionError
from ...training.recipes import Recipe
from ..base import HeldOut, Int8Recipe, OutputSpec, Task, register_task
from .annotations import KeypointSchema, drop_images, is_keypoint_source, load_keypoints, read_annotations
from .metrics import keypoint_metrics
from .report import render_keypoint_table, write_keypoint_report

if TYPE_CHECKING:  # pragma: no cover
    from .run import KeypointRun

from .options import KeypointCheckOptions, KeypointEvalOptions, KeypointFilterOptions, KeypointOptions, exclude_set

KP_TOLERANCE_PX = 0.05  # float exports: max coordinate difference, in model-input pixels














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
        from .run import KeypointRun
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
        exclude = exclude_set(options.exclude if options is not None else None)
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
