"""The stylizer's training run (torch): random crops of the content photos through a feed-forward network, the
perceptual loss of the bundle's style images, and the training report beside a few optimisation-method results.
StylizeTask.setup imports it, so the runtime half of the task never loads torch.
"""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...core.contract import Contract, load_rgb
from ...data.folder import Sample
from ...errors import PocketVisionError
from ...evaluate.report import _atomic_write, _b64, _png
from ...models import build_model, check_input_size, model_entry
from ...training.loader import ImageDataset, decode_all, decode_source, default_workers, find_pixels, make_loader
from ..base import TaskRun, Validation, load_parent
from .gatys import stylize
from .options import MAX_SIDE, LossOptions, StylizeOptions, name_list
from .perceptual import DEFAULTS, PerceptualLoss, build_extractor, check_image_side
from .photos import scan_photos

if TYPE_CHECKING:  # pragma: no cover
    from . import StylizeTask


def _png_b64(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _fit_long(img, side: int):
    from PIL import Image
    s = side / max(img.size)
    return img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.BICUBIC)


def _loss_from(settings: dict[str, Any], style_images: list, device=None):
    """The perceptual loss a bundle was trained with (its settings, its style images)."""

    d = DEFAULTS[settings["features"]]
    cl = name_list(settings.get("content_layers")) or list(d.content_layers)
    sl = name_list(settings.get("style_layers")) or list(d.style_layers)
    ex = build_extractor(settings["features"], weights=settings.get("weights"),
                         layers=list(dict.fromkeys([*cl, *sl])), softmax=settings.get("softmax"))
    styles = []
    for i, img in enumerate(style_images):
        check_image_side(ex, (img.height, img.width), f"style image {settings.get('names', [''] * 99)[i] or i}",
                         hint="Use a larger style image or --style-size.")
        styles.append(torch.from_numpy(np.asarray(img, np.float32).copy()).permute(2, 0, 1)[None])
    loss = PerceptualLoss(ex, styles, content_layers=cl, style_layers=sl,
                          content_weight=settings.get("content_weight"), style_weight=settings.get("style_weight"),
                          tv_weight=settings.get("tv_weight"))
    return loss.to(device) if device is not None else loss


def _nchw(x) -> Any:
    """uint8 NHWC tensor -> float NCHW 0-255 (what the loss networks take)."""
    return x.permute(0, 3, 1, 2).float()


# -- the training run ------------------------------------------------------------------------------------
class StylizeRun(TaskRun):
    def __init__(self, task: StylizeTask, data, cfg, opts: StylizeOptions, console):
        from rich.console import Console

        from ...data.augment import AugmentConfig, Augmenter

        self.task, self.data, self.cfg, self.opts = task, Path(data), cfg, opts
        self.console = console = console or Console(stderr=True)
        if not opts.style:
            raise PocketVisionError("stylize training needs a style image: --style STYLE.jpg (repeat it for several "
                                    "styles in one network).")
        arch = cfg.arch or task.default_arch[0]
        entry = model_entry(arch)
        if entry.kind != task.model_kind:
            raise PocketVisionError(f"--arch {arch}: a {entry.kind} network; a stylizer is one of "
                                    f"{', '.join(task.architectures())}.")
        size = (cfg.size, cfg.size)
        check_input_size(arch, size, dict(cfg.arch_args))
        styles = [load_rgb(p) for p in opts.style]  # a path that is not an image: one line naming it
        style_size = opts.style_size or cfg.size
        styles = [_fit_long(s, style_size) for s in styles]
        names = [Path(p).stem for p in opts.style]
        spec = {"name": arch, "args": {**cfg.arch_args, **({"num_styles": len(styles)} if len(styles) > 1 else {})}}
        contract = Contract.from_dict({**entry.default_contract, "size": list(size), "resize": "center_crop",
                                       "crop_pct": 1.0})
        if cfg.init_from:
            meta, model = load_parent(cfg.init_from)
            if meta["task"] != task.name or meta["arch"] != spec:
                raise PocketVisionError(f"{cfg.init_from}: its model {meta['arch']} differs from the requested "
                                        f"{spec}; train with the same --arch, --arch-args and number of styles.")
        else:
            model = build_model(spec)
        self.model, self.spec, self.contract = model, spec, contract
        self.settings = {**{k: getattr(opts, k) for k in LossOptions.model_fields}, "names": names,
                         "style_size": style_size}
        self.loss_fn = _loss_from(self.settings, styles)
        check_image_side(self.loss_fn.extractor, size, f"--size {cfg.size}")
        self.styles, self.names = styles, names
        self.default_lr = 1e-3
        self.workers = workers = default_workers() if cfg.workers is None else cfg.workers
        photos = scan_photos(data, val_fraction=cfg.val_fraction, seed=cfg.seed)
        self.photos = photos
        console.print(f"[bold]data[/] {photos.root}: {len(photos.train)} content photos, val {len(photos.val)}; "
                      f"style {', '.join(names)} at {style_size} px; loss network {opts.features}")
        t0 = time.perf_counter()
        train = [Sample(p, 0) for p in photos.train]
        pixels = find_pixels(photos.root, contract, cfg.cache_dir, console)
        cache, problems = decode_all(train, lambda p: decode_source(p, contract, pixels))
        val_px, p2 = decode_all([Sample(p, 0) for p in photos.val], contract.load)
        self.problems = problems + p2
        for msg in self.problems:
            console.print(f"[yellow]skipped unreadable image[/] {msg}")
        keep = [i for i, a in enumerate(cache) if a is not None]
        train, cache = [train[i] for i in keep], [cache[i] for i in keep]
        self.val_paths = [p for p, a in zip(photos.val, val_px) if a is not None]
        if len(train) < 2 or not self.val_paths:
            raise PocketVisionError(f"{data}: not enough readable photos (train {len(train)}, val {len(self.val_paths)}).")
        self.val_px = torch.from_numpy(np.stack([a for a in val_px if a is not None]))
        console.print(f"decoded {len(train) + len(self.val_paths)} photos in {time.perf_counter() - t0:.1f}s "
                      f"(RAM cache, {workers} workers)")
        # Crops and flips only: colour jitter, glare or moiré would change the content the loss compares to.
        aug = AugmentConfig(**{"scale": (0.3, 1.0), "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0,
                               "glare": 0.0, "moire": 0.0, **cfg.augment})
        self.train_ds = ImageDataset(train, contract, Augmenter(aug, contract), cfg.seed, cache)
        self.num_styles = len(styles)
        self.style_rng = np.random.default_rng([cfg.seed, 11])
        self._train_loader = None
        self._make_loader = make_loader

    def _loader(self):
        if self._train_loader is None:
            self._train_loader = self._make_loader(self.train_ds, self.cfg.batch_size, True, self.workers,
                                                   self.cfg.seed, drop_last=len(self.train_ds) > self.cfg.batch_size,
                                                   shard=self.shard)
        return self._train_loader

    def prologue(self, engine, resuming: bool) -> None:
        self.engine = engine
        self.loss_fn = self.loss_fn.to(engine.device)

    def steps_per_epoch(self) -> int:
        return len(self._loader())

    def batches(self, epoch: int):
        self.train_ds.set_epoch(epoch)
        return self._loader()

    def _style_weights(self, n: int):
        """One style per image (conditional instance norm learns each); None with a single style."""
        if self.num_styles == 1:
            return None
        w = torch.zeros(n, self.num_styles)
        w[torch.arange(n), torch.from_numpy(self.style_rng.integers(0, self.num_styles, n))] = 1.0
        return w.to(self.engine.device)

    def forward(self, net, batch):
        x = batch[0]
        w = self._style_weights(len(x))
        return net(self.engine.to_input(x), w), w

    def loss(self, outputs, batch):
        y, w = outputs
        content = _nchw(batch[0].to(self.engine.device, non_blocking=True))
        return self.loss_fn(y.float(), content, style=w)["total"]

    def preview(self, batch):
        return batch[0]

    def _val_outputs(self, net, limit: int | None = None):
        net.eval()
        outs = []
        with torch.no_grad():
            for i in range(0, min(len(self.val_px), limit or len(self.val_px)), 8):
                x = self.val_px[i:i + 8]
                w = None if self.num_styles == 1 else torch.eye(self.num_styles)[
                    torch.arange(i, i + len(x)) % self.num_styles].to(self.engine.device)
                outs.append((net(self.engine.to_input(x), w).float(), x, w))
        return outs

    def validate(self, net) -> Validation:
        sums = {"total": 0.0, "content": 0.0, "style": 0.0, "tv": 0.0}
        with torch.no_grad():
            for y, x, w in self._val_outputs(net):
                parts = self.loss_fn(y, _nchw(x.to(self.engine.device)), style=w)
                for k in sums:
                    sums[k] += float(parts[k]) * len(x)
        n = len(self.val_px)
        m = {k: v / n for k, v in sums.items()}
        return Validation((-m["total"],), {"val_loss": m["total"], "val_content": m["content"],
                                           "val_style": m["style"], "val_tv": m["tv"]},
                          f"val loss {m['total']:.4g}  content {m['content']:.4g}  style {m['style']:.4g}", m)

    def close(self) -> None:
        self._train_loader = None

    def finish(self, best: Validation | None, run_dir: Path | None) -> dict[str, Any]:
        self.engine.device = torch.device("cpu")  # the kept weights are back on the CPU
        self.loss_fn = self.loss_fn.cpu()
        m = self.validate(self.model).result
        metrics = {"val_loss": m["total"], "content_loss": m["content"], "style_loss": m["style"],
                   "tv_loss": m["tv"], "n_val": len(self.val_px)}
        styles = [{"name": n, "path": str(Path(p).resolve()), "png": _png_b64(img)}
                  for n, p, img in zip(self.names, self.opts.style, self.styles)]
        out: dict[str, Any] = {
            "labels": list(self.names), "metrics": metrics,
            "stylize": {**{k: v for k, v in self.settings.items() if k != "names"}, "styles": styles,
                        "multiple": model_entry(self.spec["name"]).size_multiple, "max_side": MAX_SIDE},
            "data": {"root": str(Path(self.data).resolve()), "fingerprint": self.photos.fingerprint(),
                     "explicit_splits": self.photos.explicit, "val_fraction": self.cfg.val_fraction,
                     "seed": self.cfg.seed, "counts": {"train": len(self.photos.train), "val": len(self.photos.val)},
                     "skipped": self.problems}}
        if run_dir is not None:
            gatys = self._gatys_comparison() if self.opts.report_gatys else []
            if gatys:
                metrics["gatys"] = {k: float(np.mean([g[k] for g in gatys])) for k in gatys[0]
                                    if k != "photo" and not k.startswith("_")}
            out["report"] = str(write_style_report(run_dir / "report", self, m, gatys))
        return out

    def _gatys_comparison(self) -> list[dict[str, Any]]:
        """The stylizer's losses next to the optimisation method's, on the same validation photos (style 0)."""

        rows = []
        n = min(self.opts.report_gatys, len(self.val_px))
        self.console.print(f"report: the optimisation method on {n} val photo(s) beside the stylizer "
                           "(--report-gatys; 0 skips it)")
        for i in range(n):
            x = self.val_px[i:i + 1]
            with torch.no_grad():
                y = self.model(self.engine.to_input(x)).float()
                ours = self.loss_fn(y, _nchw(x), style=0)
            h, w = self.contract.size
            r = stylize(x[0].numpy(), self.styles[0], size=max(h, w), extractor=self.loss_fn.extractor,
                        content_layers=self.loss_fn.content_layers, style_layers=self.loss_fn.style_layers,
                        content_weight=self.loss_fn.content_weight, style_weight=self.loss_fn.style_weight,
                        tv_weight=self.loss_fn.tv_weight, style_scale=max(self.styles[0].size) / max(h, w),
                        progress=self.cfg.progress, console=self.console)
            with torch.no_grad():
                theirs = self.loss_fn(torch.from_numpy(r.image.astype(np.float32)).permute(2, 0, 1)[None], _nchw(x),
                                      style=0)
            rows.append({"photo": str(self.val_paths[i]), "stylizer_content": float(ours["content"]),
                         "stylizer_style": float(ours["style"]), "gatys_content": float(theirs["content"]),
                         "gatys_style": float(theirs["style"]), "gatys_seconds": r.timings.get("total_s", 0.0),
                         "_image": r.image})
        return rows


# -- the report ---------------------------------------------------------------------------------------------
def write_style_report(out_dir: Path, run: StylizeRun, m: dict[str, float], gatys: list[dict[str, Any]]) -> Path:
    """Content, style and result side by side, loss curves, and the stylizer against the optimisation
    method on the same photos: one self-contained HTML page."""
    from html import escape

    from matplotlib.figure import Figure
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)

    def img_tag(a: np.ndarray | Image.Image, side: int = 220) -> str:
        im = a if isinstance(a, Image.Image) else Image.fromarray(a)
        im = _fit_long(im, side)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return f'<img src="data:image/png;base64,{_b64(buf.getvalue())}">'
    with torch.no_grad():
        results = [y[j].permute(1, 2, 0).clamp(0, 255).round().byte().numpy()
                   for y, _, _ in run._val_outputs(run.model, limit=max(6, len(gatys))) for j in range(len(y))]
    rows = "".join(f"<tr><td>{img_tag(run.val_px[i].numpy())}</td><td>{img_tag(run.styles[i % run.num_styles])}</td>"
                   f"<td>{img_tag(results[i])}</td></tr>" for i in range(min(6, len(results))))
    hist = run.engine.history
    fig = Figure(figsize=(5.5, 3.4))
    ax = fig.add_subplot()
    ep = [h["epoch"] for h in hist]
    for key, label in (("train_loss", "train"), ("val_loss", "val"), ("val_content", "val content"),
                       ("val_style", "val style")):
        ax.plot(ep, [h.get(key) for h in hist], marker="o", label=label)
    ax.set_xlabel("epoch"), ax.set_ylabel("loss"), ax.set_yscale("log"), ax.legend(), ax.grid(alpha=0.3)
    curves = _png(fig)
    _atomic_write(out_dir / "loss_curves.png", curves)
    comp = ""
    if gatys:
        comp = ("<h2>Stylizer vs the optimisation method (same photos, loss network and weights)</h2><table><tr>"
                "<th>photo</th><th>stylizer</th><th>optimisation</th><th>content loss (stylizer / optim.)</th>"
                "<th>style loss (stylizer / optim.)</th><th>optimisation time</th></tr>")
        for i, g in enumerate(gatys):
            comp += (f"<tr><td>{escape(Path(g['photo']).name)}</td><td>{img_tag(results[i], 160)}</td>"
                     f"<td>{img_tag(g['_image'], 160)}</td><td>{g['stylizer_content']:.4g} / {g['gatys_content']:.4g}"
                     f" ({g['stylizer_content'] / max(g['gatys_content'], 1e-12):.2f}x)</td>"
                     f"<td>{g['stylizer_style']:.4g} / {g['gatys_style']:.4g} "
                     f"({g['stylizer_style'] / max(g['gatys_style'], 1e-12):.2f}x)</td>"
                     f"<td>{g['gatys_seconds']:.1f} s</td></tr>")
            g.pop("_image")
        comp += "</table>"
    cards = "".join(f"<tr><td>{escape(k)}</td><td>{v:.5g}</td></tr>" for k, v in m.items())
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>Stylizer: {escape(', '.join(run.names))}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:middle}}img{{display:block}}</style></head><body>
<h1>Stylizer: {escape(run.spec['name'])}, style {escape(', '.join(run.names))}</h1>
<p>Loss network {escape(str(run.settings['features']))}; {len(run.photos.train)} content photos at
{run.contract.size[0]} px; validation on {len(run.val_px)} held-out photos.</p>
<h2>Validation losses</h2><table>{cards}</table>
<h2>Content, style, result</h2><table><tr><th>content</th><th>style</th><th>result</th></tr>{rows}</table>
<h2>Loss curves</h2><img src="data:image/png;base64,{_b64(curves)}">{comp}</body></html>"""
    _atomic_write(out_dir / "index.html", html.encode())
    return out_dir / "index.html"

