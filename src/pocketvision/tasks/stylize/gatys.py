"""Style transfer by optimisation (Gatys, Ecker & Bethge, "A Neural Algorithm of Artistic Style").

The output image itself is optimised so that its features match the content image's and its Gram
matrices match the style image's. What makes it fast on a CPU (512 px in ~2 minutes on 2 cores, where
VGG-19 + L-BFGS needs ~25 minutes for the reference 1,000 iterations; benchmarks/bench_gatys.py):

* a mobile feature network (EfficientNet-Lite0, installed weights, BN folded into the convs) instead of VGG-19:
  ~0.19 s per forward+backward at 512x384 against ~1.5 s;
* coarse-to-fine (1/2, 3/4, full size): the cheap coarse scales lay out the large strokes, and each finer
  scale starts from the upsampled result plus the content's own detail at that scale;
* L-BFGS with a strong-Wolfe line search; style Grams and content features computed once per scale; a scale
  stops once 50 iterations gain less than 0.5%.

    >>> from pocketvision.tasks.stylize.gatys import stylize
    >>> r = stylize("tubingen.jpg", "starry_night.jpg", out="tubingen_starry.png")
    >>> r.image.shape, r.time_to_within(0.01)

Pixels are optimised in 0-255 float space (the extractors normalise inside) and clamped to [0, 255]
between scales and at the end. With ``preserve_color`` only luminance is stylised (Gatys et al. 2016,
"Preserving Color in Neural Artistic Style Transfer"): the style's luminance is matched to the content's
mean/std, the optimisation runs on a grey image, and the result's luminance is recombined with the
content's chroma (YIQ).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...core.contract import load_rgb
from ...errors import PocketVisionError, unknown_choice
from .perceptual import DEFAULTS, FeatureExtractor, PerceptualLoss, build_extractor, min_side

ImageLike = str | os.PathLike | Image.Image | np.ndarray
OPTIMIZERS = ("lbfgs", "adam")
INITS = ("content", "noise")

# Defaults, measured at 512 px on 2 cores (benchmarks/bench_gatys.py): the total loss is within 1% of its
# final value after 105-122 s (runs of 116-136 s). The loss tail is long and flat: a run with twice the
# full-size iterations ends 3-7% lower, hardly visible side by side at full size. A single full-size scale
# reached a lower loss per iteration than coarse-to-fine but painted smaller, repetitive strokes.
DEFAULT_SCALES = (0.5, 0.75, 1.0)  # fractions of ``size``
DEFAULT_ITERATIONS = {"lbfgs": (150, 80, 500), "adam": (300, 200, 500)}  # maxima; ``tol`` usually stops sooner
ADAM_LR = 4.0  # pixel units (0-255)
LBFGS_HISTORY = 50
CONVERGENCE_WINDOW = 50  # iterations
DEFAULT_TOL = 0.005  # stop when the last window gained less than 0.5%
PYRAMID_LEVELS = 1  # plain pixels: see stylize(pyramid=...)

# RGB <-> YIQ (NTSC), as in Gatys et al. 2016.
_YIQ = np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]],
                dtype=np.float64)
_YIQ_INV = np.linalg.inv(_YIQ)


@dataclass
class StylizeResult:
    """``image``: uint8 HxWx3 RGB. ``history``: one row per loss evaluation, ``{iteration, evaluation,
    seconds, total, content, style, tv, scale}`` (seconds since ``stylize`` was called; losses weighted,
    ``total = content + style + tv``; ``scale`` = long side in px). ``timings`` in seconds."""

    image: np.ndarray
    history: list[dict[str, float]]
    timings: dict[str, Any]
    settings: dict[str, Any]
    out: Path | None = None

    @property
    def final_loss(self) -> dict[str, float]:
        return {k: self.history[-1][k] for k in ("total", "content", "style", "tv")}

    def time_to_within(self, rel: float = 0.01, reference: float | None = None) -> float:
        """Seconds after which the final-scale total loss stays within ``rel`` of ``reference`` (default:
        the final loss of this run). Losses of coarser scales are not comparable, so they never count."""
        last = self.history[-1]["scale"]
        rows = [r for r in self.history if r["scale"] == last]
        band = (rows[-1]["total"] if reference is None else reference) * (1 + rel)
        outside = [i for i, r in enumerate(rows) if r["total"] > band]
        if not outside:
            return rows[0]["seconds"]
        return rows[min(outside[-1] + 1, len(rows) - 1)]["seconds"]

    def save(self, path: str | os.PathLike) -> Path:
        return save_image(self.image, path)


# -- images -----------------------------------------------------------------------------------------
def _name(src: ImageLike, what: str) -> str:
    return str(src) if isinstance(src, str | os.PathLike) else f"the {what} image"


def _load(src: ImageLike, what: str) -> Image.Image:
    if isinstance(src, Image.Image):
        return src.convert("RGB")
    if isinstance(src, np.ndarray):
        a = src
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise PocketVisionError(f"The {what} array must be HxWx3 RGB (uint8 or float 0-255). "
                                    f"Got shape {a.shape}.")
        a = a[..., :3]
        a = np.clip(a, 0, 255).astype(np.uint8) if a.dtype != np.uint8 else a
        return Image.fromarray(np.ascontiguousarray(a), "RGB")
    if isinstance(src, str | os.PathLike):
        return load_rgb(src)  # ImageDecodeError names the file
    raise PocketVisionError(f"The {what} image must be a path, a PIL image or an HxWx3 array. "
                            f"Got {type(src).__name__}.")


def _fit(img: Image.Image, long_side: int) -> Image.Image:
    w, h = img.size
    s = long_side / max(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return img if size == img.size else img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _to_tensor(img: Image.Image | np.ndarray) -> torch.Tensor:
    a = np.asarray(img, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]


def _to_yiq(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) @ _YIQ.T


def _from_yiq(a: np.ndarray) -> np.ndarray:
    return a @ _YIQ_INV.T


def _luminance_image(img: Image.Image, match: tuple[float, float] | None = None) -> Image.Image:
    """Grey RGB image of ``img``'s luminance, optionally shifted/scaled to ``match`` = (mean, std)."""
    y = _to_yiq(np.asarray(img))[..., 0]
    if match is not None:
        # Gatys et al. 2016: match the style luminance's first two moments to the content's.
        y = (y - y.mean()) / max(y.std(), 1e-6) * match[1] + match[0]
    y = np.clip(y, 0, 255)
    return Image.fromarray(np.repeat(y[..., None], 3, axis=2).round().astype(np.uint8), "RGB")


def save_image(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write uint8 HxWx3 to ``path`` atomically (temp file beside it + rename); format from the suffix."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise PocketVisionError(f"Cannot tell the image format of {path} from its suffix. Use .png or .jpg.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(image, "RGB").save(f, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- settings ---------------------------------------------------------------------------------------
def _resolve_scales(size: int, scales: Sequence[float | int] | int | None) -> list[int]:
    """Long sides (px) of the coarse-to-fine pyramid, ending at ``size``."""
    if scales is None:
        fr: Sequence[float | int] = DEFAULT_SCALES
    elif isinstance(scales, int) and not isinstance(scales, bool):
        if scales < 1:
            raise PocketVisionError(f"scales must be >= 1 (a count) or a list of sizes. Got {scales}.")
        fr = [0.5 ** (scales - 1 - i) for i in range(scales)]
    else:
        fr = list(scales)
    sides = []
    for f in fr:
        if isinstance(f, bool) or not isinstance(f, int | float) or f <= 0:
            raise PocketVisionError(f"scales must be fractions of size in (0, 1] or sizes in px. Got {list(fr)}.")
        px = round(f * size) if f <= 1 else int(f)
        if px > size:
            raise PocketVisionError(f"scale {f} is larger than size={size}; scales end at the output size.")
        sides.append(px)
    return sorted(set(sides) | {size})


def _resolve_iterations(iterations: int | Sequence[int] | None, optimizer: str, n: int) -> list[int]:
    if iterations is None:
        d = DEFAULT_ITERATIONS[optimizer]
        return list(d[-n:]) if n <= len(d) else [d[0]] * (n - len(d)) + list(d)
    if isinstance(iterations, int) and not isinstance(iterations, bool):
        its = [iterations] * n
    else:
        its = [int(i) for i in iterations]
        if len(its) != n:
            raise PocketVisionError(f"iterations has {len(its)} entries but there are {n} scales; give one "
                                    f"count per scale or a single number.")
    if any(i < 1 for i in its):
        raise PocketVisionError(f"iterations must be >= 1. Got {iterations!r}.")
    return its


# -- the optimisation -------------------------------------------------------------------------------
def stylize(content: ImageLike, style: ImageLike | Sequence[ImageLike], *, out: str | os.PathLike | None = None,
            size: int = 512, features: str = "lite0", weights: str | os.PathLike | None = None,
            content_layers: dict[str, float] | Sequence[str] | None = None,
            style_layers: dict[str, float] | Sequence[str] | None = None,
            content_weight: float | None = None, style_weight: float | None = None, tv_weight: float | None = None,
            softmax: bool | None = None, optimizer: str = "lbfgs", iterations: int | Sequence[int] | None = None,
            scales: Sequence[float | int] | int | None = None, lr: float | None = None,
            style_scale: float = 1.0, style_blend: Sequence[float] | None = None,
            preserve_color: bool = False, init: str = "content", seed: int = 0,
            tol: float = DEFAULT_TOL, pyramid: int | None = None,
            intermediates: str | os.PathLike | None = None, every: int = 50, progress: bool = True,
            console: Any = None, extractor: FeatureExtractor | None = None) -> StylizeResult:
    """Stylise ``content`` with ``style`` by optimising the output image; returns a :class:`StylizeResult`.

    content, style: paths, PIL images or HxWx3 arrays (``style`` may be a list, blended by ``style_blend``).
    size: long side of the output (px). features: ``"lite0"`` (default, installed weights), ``"vgg16"``,
    ``"vgg19"`` (``weights`` = torchvision file; see :mod:`pocketvision.models.vgg`).
    content_layers / style_layers / *_weight / softmax: override the extractor's defaults
    (:data:`pocketvision.tasks.stylize.perceptual.DEFAULTS`). optimizer: ``"lbfgs"`` or ``"adam"`` (``lr`` in pixel
    units). iterations: the most per scale (one number for all, or a list); a scale stops early once its last
    50 iterations lowered the loss by less than ``tol`` (relative; 0 = always run them all). scales: fractions
    of ``size`` (or px), coarse to fine, or a count (halving). style_scale: the style image's long side
    relative to the output's.
    preserve_color: luminance-only transfer. init: ``"content"`` or ``"noise"`` (seeded). pyramid: optimise
    the image as a sum of that many resolutions (1 = plain pixels, the default; 4 gave a 4% lower loss after 300
    single-scale iterations at 512 px, but converged later and painted larger colour blotches).
    intermediates: a folder that receives a PNG every ``every`` iterations. out: written atomically.
    extractor: a prebuilt :func:`build_extractor` result, to reuse across calls.
    """
    t0 = time.perf_counter()
    _check_args(optimizer, init, size, tol, every, style_scale, out)
    styles_in = list(style) if isinstance(style, list | tuple) else [style]
    content_img = _load(content, "content")
    style_imgs = [_load(s, "style") for s in styles_in]
    if style_blend is not None and len(style_blend) != len(style_imgs):
        raise PocketVisionError(f"style_blend has {len(style_blend)} weights for {len(style_imgs)} style images.")
    t_load = time.perf_counter() - t0

    if extractor is None:
        extractor = _extractor(features, weights, content_layers, style_layers, softmax)
    features = extractor.name
    t_setup = time.perf_counter() - t0 - t_load

    floor = min_side(extractor)
    sides, its = _scales_to_run(content, content_img, style_imgs, styles_in, size, scales, iterations, optimizer,
                                floor, features)
    lr = ADAM_LR if lr is None else float(lr)
    pyramid = _levels(pyramid)
    if preserve_color:
        yc = _to_yiq(np.asarray(content_img))[..., 0]
        style_imgs = [_luminance_image(s, (float(yc.mean()), float(yc.std()))) for s in style_imgs]

    settings = dict(size=size, features=features, softmax=extractor.softmax, optimizer=optimizer,
                    iterations=its, tol=tol, scales=sides, lr=lr if optimizer == "adam" else None, pyramid=pyramid,
                    style_scale=style_scale, style_blend=list(style_blend) if style_blend else None,
                    preserve_color=preserve_color, init=init, seed=seed,
                    content_layers=None, style_layers=None, content_weight=None, style_weight=None,
                    tv_weight=None, content=_name(content, "content"),
                    style=[_name(s, "style") for s in styles_in])
    loss_args = dict(content_layers=content_layers, style_layers=style_layers, content_weight=content_weight,
                     style_weight=style_weight, tv_weight=tv_weight,
                     default_style=list(style_blend) if style_blend is not None else 0)
    run = _Optimisation(extractor, content_img, style_imgs, loss_args, settings, torch.Generator().manual_seed(seed),
                        intermediates, every, _progress(console, progress), sum(its), t0, floor)
    with run.prog:
        for side, n_its in zip(sides, its):
            run.scale(side, n_its)

    image = _finish(run.x, run.c_img if preserve_color else None)
    t_opt = sum(p["seconds"] for p in run.per_scale)
    result = StylizeResult(image=image, history=run.history,
                           timings={"load_s": t_load, "setup_s": t_setup, "per_scale": run.per_scale,
                                    "optimise_s": t_opt, "total_s": time.perf_counter() - t0},
                           settings=settings)
    if out is not None:
        result.out = save_image(image, out)
    result.timings["total_s"] = time.perf_counter() - t0
    return result


def _check_args(optimizer: str, init: str, size: int, tol: float, every: int, style_scale: float,
                out: str | os.PathLike | None) -> None:
    if optimizer not in OPTIMIZERS:
        raise unknown_choice("optimizer", str(optimizer), OPTIMIZERS)
    if init not in INITS:
        raise unknown_choice("init", str(init), INITS)
    if isinstance(size, bool) or not isinstance(size, int) or size < 16:
        raise PocketVisionError(f"size must be an integer >= 16 (the output's long side in px). Got {size!r}.")
    if not 0 <= tol < 1:
        raise PocketVisionError(f"tol must be in [0, 1). Got {tol!r}.")
    if every < 1:
        raise PocketVisionError(f"every must be >= 1. Got {every!r}.")
    if not style_scale > 0:
        raise PocketVisionError(f"style_scale must be > 0. Got {style_scale!r}.")
    if out is not None and Image.registered_extensions().get(Path(out).suffix.lower()) is None:
        raise PocketVisionError(f"Cannot tell the image format of {out} from its suffix. Use .png or .jpg.")


def _levels(pyramid: int | None) -> int:
    pyramid = PYRAMID_LEVELS if pyramid is None else pyramid
    if isinstance(pyramid, bool) or not isinstance(pyramid, int) or pyramid < 1:
        raise PocketVisionError(f"pyramid must be an integer >= 1 (1 = plain pixels). Got {pyramid!r}.")
    return pyramid


def _extractor(features: str, weights, content_layers, style_layers, softmax) -> FeatureExtractor:
    """The feature network with the layers the loss reads (the features' defaults unless given)."""
    d = DEFAULTS.get(features)
    if d is None:
        raise unknown_choice("features", str(features), DEFAULTS)
    cl = content_layers if content_layers is not None else d.content_layers
    sl = style_layers if style_layers is not None else d.style_layers
    layers = list(dict.fromkeys([*(cl if not isinstance(cl, str) else [cl]),
                                 *(sl if not isinstance(sl, str) else [sl])]))
    return build_extractor(features, weights=weights, layers=layers, softmax=softmax)


def _scales_to_run(content, content_img: Image.Image, style_imgs: list[Image.Image], styles_in: list, size: int,
                   scales, iterations, optimizer: str, floor: int, features: str) -> tuple[list[int], list[int]]:
    """The output's long side at each scale and its iterations; scales too small for the features are skipped
    (with their iterations), and images too small for them are refused."""
    named = [(content_img, content, "content"), *[(s, sn, "style") for s, sn in zip(style_imgs, styles_in)]]
    for img, src, what in named:
        if min(img.size) < floor:
            raise PocketVisionError(f"{what} image {_name(src, what)} is {img.width}x{img.height} px; the "
                                    f"{features} features need at least {floor} px on each side. Use a larger image.")
    sides = _resolve_scales(size, scales)
    its = _resolve_iterations(iterations, optimizer, len(sides))
    aspect = min(content_img.size) / max(content_img.size)
    if round(size * aspect) < floor:
        raise PocketVisionError(f"content image {_name(content, 'content')} ({content_img.width}x{content_img.height}) "
                                f"at size={size} would be {round(size * aspect)} px on its short side; the {features} "
                                f"features need at least {floor}. Use a larger size.")
    keep = [i for i, s in enumerate(sides) if round(s * aspect) >= floor]
    return [sides[i] for i in keep], [its[i] for i in keep]


class _Optimisation:
    """One output image optimised scale after scale, coarse to fine: its loss history, the per-scale timings and
    the intermediate PNGs."""

    def __init__(self, extractor: FeatureExtractor, content_img: Image.Image, style_imgs: list[Image.Image],
                 loss_args: dict[str, Any], settings: dict[str, Any], gen: torch.Generator,
                 intermediates: str | os.PathLike | None, every: int, prog: Any, total_its: int, t0: float, floor: int):
        inter_dir = Path(intermediates) if intermediates is not None else None
        if inter_dir is not None:
            inter_dir.mkdir(parents=True, exist_ok=True)
        self.extractor, self.content_img, self.style_imgs = extractor, content_img, style_imgs
        self.loss_args, self.settings, self.gen, self.inter_dir, self.every = loss_args, settings, gen, inter_dir, every
        self.prog, self.total_its, self.t0, self.floor = prog, total_its, t0, floor
        self.preserve_color = settings["preserve_color"]
        self.task = prog.add_task("stylize", total=total_its, scale="", loss="")
        self.history: list[dict[str, float]] = []
        self.per_scale: list[dict[str, Any]] = []
        self.x: torch.Tensor | None = None
        self.c_prev: torch.Tensor | None = None
        self.done_its = 0

    def scale(self, side: int, n_its: int) -> None:
        ts = time.perf_counter()
        s = self.settings
        self.c_img = c_img = _fit(self.content_img, side)
        c = _to_tensor(_luminance_image(c_img) if self.preserve_color else c_img)
        # The style at the output's scale (times style_scale), but never below what the features need.
        st = [_to_tensor(_fit(im, max(round(side * s["style_scale"]),
                                      math.ceil(self.floor * max(im.size) / min(im.size)))))
              for im in self.style_imgs]
        self.loss_fn = loss_fn = PerceptualLoss(self.extractor, st, **self.loss_args)
        s.update(content_layers=loss_fn.content_layers, style_layers=loss_fn.style_layers,
                 content_weight=loss_fn.content_weight, style_weight=loss_fn.style_weight, tv_weight=loss_fn.tv_weight)
        c_feats = loss_fn.content_features(c)
        targets = {k: v.detach() for k, v in loss_fn.style_targets().items()}
        self.h, self.w = h, w = c.shape[-2:]
        self.side = side
        params, self.synth = _parametrise(self._start(c, h, w).clamp(0, 255), s["pyramid"])
        self.c_prev = c

        def evaluate() -> dict[str, torch.Tensor]:
            img = self.synth()
            return loss_fn(img.expand(-1, 3, -1, -1) if self.preserve_color else img, c_feats, targets=targets)

        done = (self._lbfgs(params, evaluate, n_its) if s["optimizer"] == "lbfgs"
                else self._adam(params, evaluate, n_its, s["lr"] if s["lr"] is not None else ADAM_LR))
        self.done_its += done
        with torch.no_grad():
            self.x = self.synth().clamp_(0, 255)
        if self.inter_dir is not None:
            save_image(_finish(self.x, c_img if self.preserve_color else None),
                       self.inter_dir / f"scale_{w}x{h}_final.png")
        self.per_scale.append({"size": [h, w], "iterations": done,
                               "evaluations": sum(1 for r in self.history if r["scale"] == side),
                               "seconds": time.perf_counter() - ts})
        self.prog.update(self.task, completed=self.done_its)

    def _start(self, c: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Where this scale's optimisation starts: the content (or seeded noise), or the previous scale's result."""
        if self.x is None or self.c_prev is None:
            init = self.settings["init"]
            x0 = c.clone() if init == "content" else _noise((1, 1 if self.preserve_color else 3, h, w), self.gen)
            return x0[:, :1] if self.preserve_color else x0
        # Coarse-to-fine: the previous scale's result, upsampled. Upsampling cannot invent the detail the coarse
        # scale could not hold; the content's own detail (this scale's content minus the coarse one, upsampled: a
        # Laplacian band) is put back, so the fine scale starts sharp instead of spending its iterations on
        # re-sharpening (measured at 512: first fine-scale loss 20.6 -> 14.5, and 6% lower after 400 iterations).
        x0 = F.interpolate(self.x, size=(h, w), mode="bicubic", align_corners=False)
        detail = c - F.interpolate(self.c_prev, size=(h, w), mode="bicubic", align_corners=False)
        return x0 + (detail[:, :1] if self.preserve_color else detail)

    def _record(self, parts: dict[str, torch.Tensor], it: int) -> None:
        row = {"iteration": self.done_its + it, "evaluation": len(self.history) + 1,
               "seconds": time.perf_counter() - self.t0, "scale": self.side,
               **{k: float(v) for k, v in parts.items()}}
        self.history.append(row)
        self.prog.update(self.task, completed=min(self.done_its + it, self.total_its), scale=f"{self.w}x{self.h}",
                         loss=f"total {row['total']:.4g}  content {row['content']:.3g}  style {row['style']:.3g}"
                              + (f"  tv {row['tv']:.3g}" if self.loss_fn.tv_weight else ""))

    def _snapshot(self, it: int) -> None:
        if self.inter_dir is not None and (self.done_its + it) % self.every == 0:
            with torch.no_grad():
                img = _finish(self.synth(), self.c_img if self.preserve_color else None)
            save_image(img, self.inter_dir / f"iter_{self.done_its + it:05d}_{self.w}x{self.h}.png")

    def _converged(self, it: int) -> bool:
        # Stop once the last CONVERGENCE_WINDOW iterations gained less than ``tol`` (relative): the loss tail of
        # style transfer is long and flat, and this is where further iterations stop showing.
        tol, now = self.settings["tol"], self.done_its + it
        done = [r["total"] for r in self.history if r["scale"] == self.side and r["iteration"] <= now]
        past = [r["total"] for r in self.history if r["scale"] == self.side
                and r["iteration"] <= now - CONVERGENCE_WINDOW]
        return bool(tol) and bool(past) and (min(past) - min(done)) < tol * min(done)

    def _lbfgs(self, params: list[torch.Tensor], evaluate, n_its: int) -> int:
        """L-BFGS for at most ``n_its`` iterations -> how many it ran."""
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=n_its, history_size=LBFGS_HISTORY,
                                line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)
        lb_state = opt.state[params[0]]  # torch keeps the L-BFGS state on the first parameter
        state = {"it": 0}

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            parts = evaluate()
            parts["total"].backward()
            # Inside L-BFGS the parameters are at the line search's trial point; the first evaluation of a new
            # iteration is (close to) the iterate, so that is where intermediates are taken.
            it = lb_state.get("n_iter", 0)
            if it != state["it"]:
                state["it"] = it
                self._snapshot(it)
            self._record({k: v.detach() for k, v in parts.items()}, it)
            return parts["total"]

        # In chunks, so convergence is checked between them; the history (curvature pairs) is kept in the
        # optimizer's state across step() calls, each of which costs one extra evaluation.
        while lb_state.get("n_iter", 0) < n_its:
            chunk = min(CONVERGENCE_WINDOW, n_its - lb_state.get("n_iter", 0))
            opt.param_groups[0].update(max_iter=chunk, max_eval=int(chunk * 1.25) + 2)
            before = lb_state.get("n_iter", 0)
            opt.step(closure)
            if lb_state.get("n_iter", 0) == before or self._converged(lb_state["n_iter"]):
                break
        return lb_state.get("n_iter", 0)

    def _adam(self, params: list[torch.Tensor], evaluate, n_its: int, lr: float) -> int:
        """Adam (``lr`` in pixel units) for at most ``n_its`` iterations -> how many it ran."""
        opt = torch.optim.Adam(params, lr=lr)
        done = 0
        for it in range(1, n_its + 1):
            opt.zero_grad(set_to_none=True)
            parts = evaluate()
            parts["total"].backward()
            opt.step()
            with torch.no_grad():  # keep pixels in range by correcting the finest level
                img = self.synth()
                params[0].add_(img.clamp(0, 255) - img)
            self._record({k: v.detach() for k, v in parts.items()}, it)
            self._snapshot(it)
            done = it
            if it % CONVERGENCE_WINDOW == 0 and self._converged(it):
                break
        return done


def _parametrise(x0: torch.Tensor, levels: int) -> tuple[list[torch.Tensor], Any]:
    """The image as a sum of ``levels`` resolutions: ``x = p0 + up(p1) + up(p2) + ...``, ``p_k`` at 1/2^k size.

    The same set of images, but a coarse pixel's gradient gathers its whole neighbourhood's, so L-BFGS moves
    large areas as fast as single pixels: a preconditioner for the low frequencies that style transfer
    spends most iterations on. ``levels=1`` is the plain pixel parametrisation.
    """
    h, w = x0.shape[-2:]
    params = [x0.detach().clone().contiguous().requires_grad_(True)]
    for k in range(1, levels):
        ph, pw = math.ceil(h / 2 ** k), math.ceil(w / 2 ** k)
        if min(ph, pw) < 2:
            break
        params.append(torch.zeros(x0.shape[0], x0.shape[1], ph, pw, requires_grad=True))

    def synth() -> torch.Tensor:
        x = params[0]
        for p in params[1:]:
            x = x + F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
        return x

    return params, synth


def _noise(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    # Mid-grey plus seeded noise: a start with no structure, so everything comes from the losses.
    return 127.5 + 50.0 * torch.randn(shape, generator=gen)


def _finish(x: torch.Tensor, content_rgb: Image.Image | None) -> np.ndarray:
    """Optimised tensor -> uint8 HxWx3; with ``content_rgb`` (colour preservation) x is the luminance and
    the content's chroma (I, Q) is put back."""
    a = x[0].detach().clamp(0, 255).numpy()
    if content_rgb is None:
        return a.transpose(1, 2, 0).round().astype(np.uint8)
    yiq = _to_yiq(np.asarray(content_rgb))
    yiq[..., 0] = a[0]
    return np.clip(_from_yiq(yiq), 0, 255).round().astype(np.uint8)


class _NoProgress:
    def __enter__(self) -> _NoProgress:  # noqa: PYI034
        return self

    def __exit__(self, *a: object) -> None:
        return None

    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def update(self, *a: Any, **k: Any) -> None:
        return None


def _progress(console: Any, enabled: bool) -> Any:
    if not enabled:
        return _NoProgress()
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[bold]stylize[/] {task.fields[scale]}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), TextColumn("{task.fields[loss]}"),
                    console=console, transient=False)


def result_json(r: StylizeResult) -> dict[str, Any]:
    """JSON-ready summary (no pixels)."""
    return {"history": r.history, "timings": r.timings, "settings": r.settings,
            "out": str(r.out) if r.out else None, "shape": list(r.image.shape)}


__all__ = ["StylizeResult", "result_json", "save_image", "stylize"]
