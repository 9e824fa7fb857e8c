"""Style transfer as a task plug-in: a feed-forward stylizer trained on content photos with a style image.

Training (``StylizeRun`` in ``run.py``, driven by ``training/engine.py``) minimises the perceptual loss of Johnson et al. 2016
(``perceptual.py``: content loss on a deep layer, Gram style loss on several, total variation) of a
``johnson`` or ``stylenet_mobile`` network (``models/stylenet.py``) over random crops of the content photos.
Several ``--style`` images train one network with conditional instance norm (Dumoulin et al. 2017); the
bundle (torch) takes per-image style weights, and the exported graph carries the first style.

The bundle carries the style images it was trained with (PNG, at the size whose Grams were the targets), so
evaluation and reports need nothing else. The graph takes uint8 RGB at any height/width (a multiple of the
network's stride) and returns the stylised uint8 RGB image; parity is PSNR against the bundle's own output.

Also here: `pocketvision stylize` (the optimisation method, ``gatys.py``) and the video filter with
flow-guided temporal smoothing.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...core.contract import Contract, load_rgb
from ...core.pixels import batched, load_pixels
from ...data.video import cv2_module, filter_frames
from ...errors import ImageDecodeError, PocketVisionError
from ...training.recipes import Recipe, scaled_epochs
from ..base import Command, HeldOut, Int8Recipe, OutputSpec, Task, register_task
from .photos import held_out_photos, scan_photos

if TYPE_CHECKING:  # pragma: no cover
    from .run import StylizeRun

from .options import (MAX_SIDE, GatysOptions, StylizeCheckOptions, StylizeEvalOptions, StylizeFilterOptions,
                      StylizeOptions, name_list)

PSNR_FLOAT = 40.0  # dB: a float export must match the bundle at least this closely
PSNR_INT8 = 30.0  # dB: an int8 (or fp16) export
PSNR_CAP = 100.0  # identical images
CROP_BUDGET_EPOCHS = 12  # the recipe: 12 epochs of the 1,101 hotdog photos ...
CROP_BUDGET = CROP_BUDGET_EPOCHS * 1101  # ... = 13,212 training crops, whatever the folder's size
MAX_EPOCHS = 500  # a folder of a handful of photos: epochs are cheap, but a validation pass runs after each
HELD_OUT_MAX = 16  # photos for parity and budgets: enough for a PSNR, quick in a browser or interpreter


















# -- helpers -------------------------------------------------------------------------------------------
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else float(min(PSNR_CAP, 10 * np.log10(255.0**2 / mse)))


def _style_images(meta: dict[str, Any]):
    from PIL import Image
    return [Image.open(io.BytesIO(base64.b64decode(s["png"]))).convert("RGB") for s in meta["stylize"]["styles"]]


# -- the plug-in ---------------------------------------------------------------------------------------
@register_task
class StylizeTask(Task):
    name = "stylize"
    summary = "style transfer: a feed-forward stylizer trained on a folder of content photos with --style"
    Options = StylizeOptions
    EvalOptions = StylizeEvalOptions
    CheckOptions = StylizeCheckOptions
    FilterOptions = StylizeFilterOptions
    outputs = OutputSpec(names=("stylized",), coreml="image", dynamic_size=True, web_renderer="stylize.js",
                         quality="PSNR vs float (dB)")
    compressions = frozenset({"int8", "fp16"})
    model_kind = "image"
    default_arch = ("stylenet_mobile", {})
    # Batch 4 and Adam at 1e-3 are Johnson et al.'s; the recipe (below) raises the rate and says how long to train:
    # a number of crops, not of epochs. channels_last off: the loss network takes the stylizer's output, and a
    # channels_last output costs it format conversions: a whole training step is 7% faster contiguous (491 vs
    # 526 ms for 4 crops of 256 px on 2 cores, 2026-12-05).
    engine_defaults = {"size": 256, "batch_size": 4, "epochs": 8, "weight_decay": 0.0, "val_fraction": 0.02,
                       "channels_last": "off"}
    refuses = {"progressive": "a stylizer's loss statistics are tied to the crop size it trains at",
               "batch_augment": "a stylizer's crops are augmented per image; batched augmentation serves "
                                "classification and keypoints",
               "freeze_epochs": "a stylizer has no pretrained backbone to freeze",
               "backbone_lr_mult": "a stylizer has no pretrained backbone",
               "freeze_bn": "a stylizer has no BatchNorm (it uses instance norm)",
               "pretrained": "stylizers start from random weights"}
    detect_order = 90  # never chosen from the data alone: a folder of photos is also a classifier's
    model_flag = "--style"

    @staticmethod
    def architectures() -> list[str]:
        from ...models import list_models
        return list_models(kind=StylizeTask.model_kind)

    def count_images(self, data) -> int | None:
        try:
            return len(scan_photos(data, val_fraction=self.engine_defaults["val_fraction"]).train)
        except PocketVisionError:  # the run itself reports a bad folder, with its own message
            return None

    def recipe(self, ctx):
        # A stylizer learns from crops, whatever folder they come from: the validation loss kept falling with every
        # epoch up to 16 of the hotdog photos (benchmarks/RESULTS.md,
        # "The stylizer against the optimisation method"). So the recipe fixes the
        # number of crops, measured as 12 epochs of the 1,101 hotdog photos (~30 min on 2 CPU cores): a folder of 100
        # photos trains ~140 epochs instead of 8 (800 crops: an untrained network), one of 20,000 one. Adam's peak
        # at 2e-3 rather than Johnson et al.'s 1e-3: 12 epochs end at a val loss of 14.58 against 16.04. Not measured
        # on a GPU: the same count there.
        epochs = scaled_epochs(CROP_BUDGET_EPOCHS, 1101, ctx.n_images, floor=1, grow_to=MAX_EPOCHS)
        return Recipe(f"stylize-{CROP_BUDGET // 1000}k-crops",
                      f"{CROP_BUDGET:,} random crops ({CROP_BUDGET_EPOCHS} epochs of the 1,101 hotdog photos, ~30 min "
                      "on 2 CPU cores), batch 4, Adam 2e-3 one-cycle", engine=dict(epochs=epochs, lr=2e-3))

    # -- data ------------------------------------------------------------------------------------------
    def _photos(self, meta: dict[str, Any], data=None, split: str = "val") -> list[Path]:
        d = meta.get("data", {})
        if data is not None and split == "val":
            return held_out_photos(data)
        if data is not None:
            return scan_photos(data, val_fraction=d.get("val_fraction", 0.02), seed=d.get("seed", 0)).train
        if not d.get("root") or not Path(d["root"]).is_dir():
            return []
        ps = scan_photos(d["root"], val_fraction=d.get("val_fraction", 0.02), seed=d.get("seed", 0))
        return getattr(ps, split)

    def held_out(self, meta: dict[str, Any], data=None) -> HeldOut:
        paths = self._photos(meta, data, "val")[:HELD_OUT_MAX]
        pixels, kept = load_pixels(paths, Contract.from_dict(meta["contract"]))
        return HeldOut(pixels, None, [paths[i] for i in kept])

    def training_images(self, meta: dict[str, Any], data=None) -> tuple[list[Path], str | None]:
        paths = self._photos(meta, None, "train")
        if not paths and data is not None:
            paths = self._photos(meta, data, "train")
        return paths, meta.get("data", {}).get("root") if paths else (str(data) if data else None)

    def setup(self, data, cfg, opts, console, resuming: bool, user_model=None) -> StylizeRun:
        from .run import StylizeRun
        if user_model is not None:
            raise PocketVisionError("bring-your-own model is for classification; a stylizer is a registry network "
                                    f"(--arch {' or '.join(self.architectures())}).")
        return StylizeRun(self, data, cfg, opts, console)

    # -- model and graph -------------------------------------------------------------------------------
    def build_model(self, spec: dict[str, Any], contract: Contract):
        from ...models import build_model
        return build_model(spec)

    def graph_head(self, y):
        import torch

        # round, then cast: the export hands apps finished uint8 RGB pixels, NHWC like its input
        return (torch.clamp(y, 0.0, 255.0).round().to(torch.uint8).permute(0, 2, 3, 1),)

    def coreml_head(self, y):
        import torch
        return torch.clamp(y, 0.0, 255.0)  # Core ML's image output takes float NCHW in 0-255

    def export_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        s = meta.get("stylize", {})
        return {"stylize": {k: s[k] for k in ("multiple", "max_side", "features") if k in s}}

    # -- runtime (numpy + Pillow) ----------------------------------------------------------------------
    def _input_size(self, model, w: int, h: int) -> tuple[int, int]:
        if model.input_size is not None:  # a graph with a fixed size (LiteRT)
            return tuple(model.input_size)
        s = model.meta.get("stylize", {})
        mult, cap = int(s.get("multiple", 4)), int(s.get("max_side", MAX_SIDE))
        k = min(1.0, cap / max(w, h))
        return (max(mult, round(h * k / mult) * mult), max(mult, round(w * k / mult) * mult))

    def predict(self, model, sources: Sequence) -> list[dict[str, Any]]:
        from PIL import Image
        out = []
        for src in sources:
            img = load_rgb(src)
            h, w = self._input_size(model, *img.size)
            x = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), np.uint8)[None]
            y = model.run_pixels(x)[0]
            k = min(1.0, max(h, w) / max(img.size))  # a fixed-size model's output goes back to the photo's aspect
            size = (max(1, round(img.width * k)), max(1, round(img.height * k)))
            if y.shape[1::-1] != size:
                y = np.asarray(Image.fromarray(y).resize(size, Image.Resampling.BILINEAR))
            out.append({"image": np.ascontiguousarray(y), "size": list(size)})
        return out

    def record_line(self, record: dict[str, Any]) -> str:
        return f"{record['image']}\t{record['size'][0]}x{record['size'][1]}"

    def evaluate(self, model, data, *, split="auto", report_dir=None, title="model", options=None) -> dict[str, Any]:
        """The perceptual losses (the bundle's loss network and style images) of the model's outputs on
        content photos."""
        import torch

        from .run import _loss_from, _nchw
        ps = scan_photos(data, seed=0)
        paths = (ps.val if ps.explicit and split in ("auto", "val") else ps.train + ps.val)
        paths = paths[: options.max_images if options is not None else 50]
        pixels, kept = load_pixels(paths, model.contract)
        if not kept:
            raise PocketVisionError(f"{data}: none of the {len(paths)} photos could be read.")
        out = batched(model.run_pixels, pixels, 8)
        loss = _loss_from(model.meta["stylize"], _style_images(model.meta))
        sums = {"total": 0.0, "content": 0.0, "style": 0.0, "tv": 0.0}
        with torch.no_grad():
            for i in range(0, len(out), 8):
                y = torch.from_numpy(out[i:i + 8].astype(np.float32)).permute(0, 3, 1, 2)
                parts = loss(y, _nchw(torch.from_numpy(pixels[i:i + 8])), style=0)
                for k in sums:
                    sums[k] += float(parts[k]) * len(y)
        m = {f"{k}_loss" if k != "total" else "loss": v / len(out) for k, v in sums.items()}
        m.update(n=len(out), data=str(data), split="val" if ps.explicit else "all",
                 skipped_unreadable=len(paths) - len(kept))
        if report_dir is not None:
            from PIL import Image
            rd = Path(report_dir)
            rd.mkdir(parents=True, exist_ok=True)
            for i in range(min(8, len(out))):
                Image.fromarray(np.concatenate([pixels[i], out[i]], 1)).save(rd / f"{i:02d}.png")
            m["report"] = str(rd)
        return m

    def render_metrics(self, metrics: dict[str, Any], console) -> None:
        from rich.table import Table
        t = Table(title=f"stylizer ({metrics.get('n', metrics.get('n_val'))} photos)")
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in metrics.items():
            if isinstance(v, float):
                t.add_row(k, f"{v:.5g}")
            elif isinstance(v, dict):
                for kk, vv in v.items():
                    t.add_row(f"{k} {kk}", f"{vv:.5g}")
        console.print(t)

    def quality(self, outputs: np.ndarray, truth, reference, meta) -> float:
        """PSNR (dB) of ``outputs`` against the float model's ``reference`` outputs on the same photos."""
        return psnr(outputs, reference)

    def int8_recipe(self, onnx_path: Path | None):
        """Quantise the convolutions only, calibrated at the 99.99th percentile. Instance norm divides by a
        per-image std whose ReduceMean inputs, held in uint8, lose the small variances; residual Adds in uint8
        add their own step. Measured on the benchmark stylizer (16 hotdog val photos, PSNR vs float): all the
        classifier's op types + MinMax 23.5 dB; convs only + MinMax 30.6 dB; convs only + percentile 99.99
        34.5 dB (worst photo 30.0), 34.4 dB from 32 photos instead of 128 at a quarter of the time (the
        histograms cost ~0.25 s per photo). The budget loop still keeps the worst conv float if 30 dB is missed.
        LiteRT (op types only, MinMax) at 384 px: every op 29.7 dB, convs only 31.7 dB."""
        return Int8Recipe(op_types=["Conv"], calibration="percentile", percentile=99.99, max_images=64)

    def within_budget(self, base: float, quality: float, max_drop: float) -> bool:
        return quality >= PSNR_INT8

    def budget_text(self, precision: str, max_drop: float) -> str:
        return f"{precision}: PSNR >= {PSNR_INT8:.0f} dB against the float model"

    def compare(self, ref, cand, truth, meta, tolerance=None) -> dict[str, Any]:
        tolerance = PSNR_FLOAT if tolerance is None else tolerance
        if ref.shape != cand.shape:
            raise PocketVisionError(f"the export's output {cand.shape[1:]} differs in shape from the bundle's "
                                    f"{ref.shape[1:]}.")
        d = np.abs(ref.astype(np.int16) - cand.astype(np.int16))
        p = psnr(ref, cand)
        out = {"n": int(len(ref)), "psnr_db": p, "min_psnr_db": float(min(psnr(r, c) for r, c in zip(ref, cand)))
               if len(ref) else 0.0, "max_abs_diff": float(d.max()) if d.size else 0.0,
               "mean_abs_diff": float(d.mean()) if d.size else 0.0, "tolerance_db": tolerance,
               "reference_quality": PSNR_CAP, "candidate_quality": p}
        out["passed"] = bool(out["n"] > 0 and p >= tolerance)
        return out

    def parity_line(self, v: dict[str, Any]) -> str:
        crit = f" ({v['criterion']})" if v.get("criterion") else f" (>= {v['tolerance_db']:.0f} dB)"
        return (f"{v['n']} real photos, PSNR {v['psnr_db']:.1f} dB (worst photo {v['min_psnr_db']:.1f} dB){crit}, "
                f"max |dpixel| {v['max_abs_diff']:.0f}, mean {v['mean_abs_diff']:.3f}")

    # -- other verbs -----------------------------------------------------------------------------------
    def check(self, data, options: StylizeCheckOptions):
        ps = scan_photos(data, val_fraction=options.val_fraction, seed=options.seed)
        unreadable, tiny = [], []
        for p in ps.train + ps.val:
            try:
                img = load_rgb(p, min_size=(64, 64))
            except ImageDecodeError as e:
                unreadable.append(str(e))
                continue
            if min(img.size) < 64:
                tiny.append(str(p))
        styles = []
        for s in options.style:
            img = load_rgb(s)
            styles.append({"path": str(s), "size": list(img.size)})
        rep = {"root": str(ps.root), "train": len(ps.train), "val": len(ps.val), "explicit_splits": ps.explicit,
               "unreadable": unreadable, "tiny": tiny, "styles": styles}

        def render(console) -> None:
            console.print(f"[bold]{ps.root}[/]: {len(ps.train)} content photos, {len(ps.val)} validation "
                          f"({'val/ folder' if ps.explicit else f'seed {options.seed}'})")
            for s in styles:
                console.print(f"style {s['path']}: {s['size'][0]}x{s['size'][1]} px")
            for what, items in (("unreadable", unreadable), ("tiny (< 64 px)", tiny)):
                if items:
                    console.print(f"[yellow]{len(items)} {what}[/]: " + ", ".join(items[:10]))
        return rep, render

    def filter_video(self, model, video, out, options: StylizeFilterOptions) -> dict[str, Any]:
        return stylize_video(self, model, video, out, options)

    def filter_line(self, stats: dict[str, Any]) -> str:
        f = stats["flicker"]
        return (f"flicker {f['output']:.2f} vs input {f['input']:.2f} (ratio {f['ratio']:.2f}; without smoothing "
                f"{f['unsmoothed_ratio']:.2f})")

    def commands(self) -> list[Command]:
        return [Command("stylize", "Stylise one photo by optimisation (Gatys et al.): no training; L-BFGS or Adam "
                        "over the pixels, coarse to fine, on the lite0 (or VGG) loss network.", GatysOptions,
                        run_gatys)]


# -- `pocketvision stylize` ---------------------------------------------------------------------------------
def _floats(v: str | None, what: str) -> list[float] | None:
    if v is None:
        return None
    try:
        return [float(x) for x in v.split(",") if x.strip()]
    except ValueError:
        raise PocketVisionError(f"--{what}: expected comma-separated numbers, got {v!r}.") from None


def run_gatys(args: Any, o: GatysOptions) -> int:
    import json

    from .gatys import result_json, stylize
    iters = _floats(o.iterations, "iterations")
    r = stylize(o.content, o.style if len(o.style) > 1 else o.style[0], out=o.out, size=o.size, features=o.features,
                weights=o.weights, content_layers=name_list(o.content_layers), style_layers=name_list(o.style_layers),
                content_weight=o.content_weight, style_weight=o.style_weight, tv_weight=o.tv_weight,
                softmax=o.softmax, optimizer=o.optimizer,
                iterations=None if iters is None else [int(i) for i in iters] if len(iters) > 1 else int(iters[0]),
                scales=_floats(o.scales, "scales"), lr=o.lr, style_scale=o.style_scale,
                style_blend=_floats(o.style_blend, "style-blend"), preserve_color=o.preserve_color, init=o.init,
                seed=o.seed, intermediates=o.intermediates, every=o.every, progress=not args.json)
    if args.json:
        print(json.dumps(result_json(r), indent=2, default=str))
    else:
        fin = r.final_loss
        print(f"{r.out}: {r.image.shape[1]}x{r.image.shape[0]}, loss {fin['total']:.4g} (content "
              f"{fin['content']:.4g}, style {fin['style']:.4g}) in {r.timings.get('total_s', 0):.1f} s; within 1% of "
              f"the final loss after {r.time_to_within(0.01):.1f} s")
    return 0


# -- `pocketvision filter --style BUNDLE clip.mp4` -----------------------------------------------------------
def stylize_video(task: StylizeTask, model, video, out, o: StylizeFilterOptions) -> dict[str, Any]:
    """Stylise every frame; temporal smoothing blends the previous output, warped along the optical flow
    (OpenCV's DIS) to the current frame, where the warped previous *input* still matches the current input
    (Ruder et al. 2016's idea, without retraining): static regions stop flickering, moving ones do not ghost.
    Flicker = mean |out_t - out_t-1| over mean |in_t - in_t-1|, with and without the smoothing."""
    cv2 = cv2_module()
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    state: dict[str, Any] = {"prev_in": None, "prev_out": None, "prev_raw": None, "d_in": [], "d_out": [], "d_raw": []}

    def process(frame: np.ndarray, fps: float, times: dict[str, float]) -> np.ndarray:
        fh, fw = frame.shape[:2]
        h, w = task._input_size(_Sized(model, o.max_side), fw, fh)
        t0 = time.perf_counter()
        small = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        rgb = np.ascontiguousarray(small[..., ::-1])
        t1 = time.perf_counter()
        raw = model.run_pixels(rgb[None])[0][..., ::-1].astype(np.float32)  # RGB -> BGR
        t2 = time.perf_counter()
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        result = raw
        if o.temporal and state["prev_out"] is not None:
            f = flow.calc(gray, state["prev_in_gray"], None)  # where each current pixel was in the last frame
            grid = np.dstack(np.meshgrid(np.arange(w), np.arange(h))).astype(np.float32) + f
            warped_out = cv2.remap(state["prev_out"], grid[..., 0], grid[..., 1], cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REPLICATE)
            warped_in = cv2.remap(state["prev_in"], grid[..., 0], grid[..., 1], cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)
            err = np.abs(warped_in.astype(np.float32) - small.astype(np.float32)).mean(-1, keepdims=True)
            keep = o.temporal * np.exp(-err / 12.0)  # occluded or mis-tracked pixels take the new frame
            result = keep * warped_out + (1 - keep) * raw
        if state["prev_out"] is not None:
            state["d_in"].append(float(np.abs(small.astype(np.float32) - state["prev_in"].astype(np.float32)).mean()))
            state["d_out"].append(float(np.abs(result - state["prev_out"]).mean()))
            state["d_raw"].append(float(np.abs(raw - state["prev_raw"]).mean()))
        state.update(prev_in=small, prev_in_gray=gray, prev_out=result, prev_raw=raw)
        out_frame = np.clip(result + 0.5, 0, 255).astype(np.uint8)
        if (h, w) != (fh, fw):  # the video keeps its resolution; the stylizer ran at max_side
            out_frame = cv2.resize(out_frame, (fw, fh), interpolation=cv2.INTER_LINEAR)
        t3 = time.perf_counter()
        times["decode"] += t1 - t0
        times["stylize"] += t2 - t1
        times["smooth"] += t3 - t2
        return out_frame
    stats = filter_frames(video, out, process, stages=("stylize", "smooth"))
    d_in = float(np.mean(state["d_in"])) if state["d_in"] else 0.0
    d_out = float(np.mean(state["d_out"])) if state["d_out"] else 0.0
    d_raw = float(np.mean(state["d_raw"])) if state["d_raw"] else 0.0
    stats["flicker"] = {"input": d_in, "output": d_out, "unsmoothed": d_raw,
                        "ratio": d_out / d_in if d_in else 0.0, "unsmoothed_ratio": d_raw / d_in if d_in else 0.0,
                        "temporal": o.temporal}
    return stats


class _Sized:
    """A model seen with another ``max_side`` (the filter's frame size)."""

    def __init__(self, model, max_side: int):
        self.input_size = model.input_size
        self.meta = {**model.meta, "stylize": {**model.meta.get("stylize", {}), "max_side": max_side}}
