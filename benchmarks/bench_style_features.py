"""Does SWAG's softmax transformation help a mobile loss network stylise? Measured, not assumed.

    python benchmarks/bench_style_features.py [--size 384] [--pairs tubingen:starry_night,...]
        [--weights 1e2,1e3,1e4,1e5] [--vgg19 PATH] [--random] [--out benchmarks/out]

For each content/style pair, Gatys optimisation (the library's defaults otherwise) runs with the lite0
features with and without the softmax transformation -- and with VGG-19 when real weights are given. The
loss magnitudes of the variants differ, so each is swept over ``--weights`` (style weights) and compared
as a trade-off curve: at similar content preservation, which matches the style better?

The metrics never use the network that was optimised (that would grade it on its own exam):
  colour   Hellinger distance between 8x8x8 RGB histograms of output and style (0 = same palette)
  texture  Gram distance under a fixed *random* filter bank (3/5/9 px, 2 scales, ReLU), relative:
           ||G(out) - G(style)|| / ||G(content) - G(style)|| (1 = the content's own texture, lower = styled)
  ssim     SSIM of output vs content, grey (content structure kept; 1 = identical)
  edges    Pearson correlation of blurred Sobel magnitudes, output vs content (big shapes kept)
Prints markdown tables (machine, command), writes benchmarks/out/style_features.json and a side-by-side
PNG per pair: content | style | each variant at each weight.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("POCKETVISION_DATA", HERE.parents[1] / "shared" / "data")) / "style"
DEFAULT_PAIRS = "tubingen:starry_night,golden_gate:the_scream,chicago:wave,stata:udnie"


# -- metrics (independent of the optimised extractor) ----------------------------------------------
def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32).transpose(2, 0, 1))[None] / 255.0


def colour_distance(a: np.ndarray, b: np.ndarray, bins: int = 8) -> float:
    def hist(x: np.ndarray) -> np.ndarray:
        q = (x.reshape(-1, 3).astype(np.int64) * bins) // 256
        h = np.bincount(q[:, 0] * bins * bins + q[:, 1] * bins + q[:, 2], minlength=bins ** 3).astype(np.float64)
        return h / h.sum()
    return float(np.sqrt(max(0.0, 1.0 - np.sqrt(hist(a) * hist(b)).sum())))


_BANK: list[torch.Tensor] | None = None


def _bank() -> list[torch.Tensor]:
    global _BANK
    if _BANK is None:
        g = torch.Generator().manual_seed(1234)
        _BANK = []
        for k in (3, 5, 9):
            w = torch.randn(32, 3, k, k, generator=g)
            w -= w.mean(dim=(1, 2, 3), keepdim=True)  # zero-mean: responds to texture, not to brightness
            _BANK.append(w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    return _BANK


def _random_grams(img: np.ndarray) -> list[torch.Tensor]:
    x = _t(img)
    out = []
    for scale in (1.0, 0.5):
        xs = x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="area")
        for w in _bank():
            f = F.relu(F.conv2d(xs, w))
            _, c, h, ww = f.shape
            f = f.reshape(c, h * ww)
            out.append(f @ f.T / (c * h * ww))
    return out


def texture_distance(out: np.ndarray, style: np.ndarray, content: np.ndarray) -> float:
    go, gs, gc = _random_grams(out), _random_grams(style), _random_grams(content)
    num = sum(float((a - b).norm()) for a, b in zip(go, gs))
    den = sum(float((a - b).norm()) for a, b in zip(gc, gs))
    return num / den


def _grey(img: np.ndarray) -> torch.Tensor:
    return (_t(img) * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)


def _gauss(sigma: float, k: int) -> torch.Tensor:
    ax = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
    g = torch.exp(-ax ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, k, k)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    x, y = _grey(a), _grey(b)
    w = _gauss(1.5, 11)
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mx ** 2
    syy = F.conv2d(y * y, w) - my ** 2
    sxy = F.conv2d(x * y, w) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def edge_similarity(a: np.ndarray, b: np.ndarray) -> float:
    def mag(img: np.ndarray) -> torch.Tensor:
        x = F.conv2d(_grey(img), _gauss(2.0, 13), padding=6)
        kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
        gx, gy = F.conv2d(x, kx), F.conv2d(x, kx.transpose(2, 3))
        return (gx ** 2 + gy ** 2).sqrt().flatten()
    ma, mb = mag(a), mag(b)
    ma, mb = ma - ma.mean(), mb - mb.mean()
    return float((ma @ mb) / (ma.norm() * mb.norm() + 1e-12))


def metrics(out: np.ndarray, content: np.ndarray, style: np.ndarray) -> dict[str, float]:
    return {"colour": colour_distance(out, style), "texture": texture_distance(out, style, content),
            "ssim": ssim(out, content), "edges": edge_similarity(out, content)}


def _fit(path: Path, long_side: int) -> np.ndarray:
    from pocketvision.core.contract import load_rgb
    img = load_rgb(path)
    s = long_side / max(img.size)
    return np.asarray(img.resize((round(img.width * s), round(img.height * s)), Image.Resampling.LANCZOS))


# -- the run ----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--pairs", default=DEFAULT_PAIRS)
    ap.add_argument("--weights", default="", help="style weights to sweep, comma-separated; default per variant")
    ap.add_argument("--vgg19", default=None, help="torchvision vgg19 weights file: adds VGG-19 (no softmax)")
    ap.add_argument("--random", action="store_true", help="also lite0 with random weights (the paper's claim)")
    ap.add_argument("--iterations", default="150,80,150", help="L-BFGS iterations per scale (fixed, tol=0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--summary", type=Path, default=None, help="only print the tables of an earlier JSON")
    a = ap.parse_args()
    if a.summary:
        summarise(json.loads(a.summary.read_text()))
        return
    torch.set_num_threads(a.threads)
    from pocketvision.deploy.bench import machine
    from pocketvision.tasks.stylize.gatys import stylize
    from pocketvision.tasks.stylize.perceptual import DEFAULTS, build_extractor

    a.out.mkdir(parents=True, exist_ok=True)
    base = DEFAULTS["lite0"].style_weight
    sweep = [float(w) for w in a.weights.split(",")] if a.weights else [base * f for f in (0.3, 1.0, 3.0)]
    # Without the softmax the content term is ~20x smaller for the same change (measured), so the same balance
    # sits ~10x lower; this sweep spans the same SSIM-to-content range as the one above (0.50-0.65).
    variants: dict[str, dict] = {
        "lite0 + softmax": dict(extractor=build_extractor("lite0", softmax=True), weights=sweep),
        "lite0, no softmax": dict(extractor=build_extractor("lite0", softmax=False), weights=[w / 10 for w in sweep]),
    }
    if a.random:
        torch.manual_seed(0)
        variants["lite0 random + softmax"] = dict(extractor=build_extractor("lite0", weights="random", softmax=True),
                                                  weights=sweep)
        torch.manual_seed(0)
        variants["lite0 random, no softmax"] = dict(
            extractor=build_extractor("lite0", weights="random", softmax=False), weights=[w / 10 for w in sweep])
    if a.vgg19:
        variants["vgg19"] = dict(extractor=build_extractor("vgg19", weights=a.vgg19), weights=[1e5, 1e6, 1e7])

    load0 = os.getloadavg()[0]
    its = [int(i) for i in a.iterations.split(",")]
    pairs = [p.split(":") for p in a.pairs.split(",")]
    results: list[dict] = []
    for ci, si in pairs:
        cpath, spath = DATA / "content" / f"{ci}.jpg", DATA / "styles" / f"{si}.jpg"
        c_img, s_img = _fit(cpath, a.size), _fit(spath, a.size)
        tiles = [("content", c_img), ("style", s_img)]
        base_m = metrics(c_img, c_img, s_img)
        results.append({"pair": f"{ci}+{si}", "variant": "content (no stylisation)", "style_weight": None,
                        **base_m, "seconds": 0.0})
        for name, v in variants.items():
            for w in v["weights"]:
                t = time.perf_counter()
                r = stylize(cpath, spath, size=a.size, extractor=v["extractor"], style_weight=w, progress=False,
                            iterations=its, tol=0.0)
                m = metrics(r.image, c_img, s_img)
                results.append({"pair": f"{ci}+{si}", "variant": name, "style_weight": w, **m,
                                "seconds": time.perf_counter() - t})
                print(f"{ci}+{si} {name} sw={w:g}: " + " ".join(f"{k}={m[k]:.3f}" for k in m), flush=True)
                tiles.append((f"{name} sw={w:g}", r.image))
        _sheet(tiles, a.out / f"style_features_{ci}_{si}.png")

    cmd = " ".join([Path(sys.executable).name, *sys.argv])
    report = {"machine": machine(), "command": cmd, "size": a.size, "iterations": its,
              "load_average_start_end": [load0, os.getloadavg()[0]], "results": results}
    report["at_equal_ssim"] = summarise(report)
    (a.out / "style_features.json").write_text(json.dumps(report, indent=2))


def summarise(report: dict) -> dict:
    """Print the tables of a run (also: ``--summary benchmarks/out/style_features.json``)."""
    results = report["results"]
    load0, load1 = report.get("load_average_start_end", [float("nan")] * 2)
    print(f"\n### Softmax transformation (SWAG) on lite0: Gatys at {report['size']} px (L-BFGS "
          f"{'/'.join(map(str, report['iterations']))} per scale), metrics independent of the optimised network\n\n"
          f"machine: {report['machine']}  \ncommand: `{report['command']}`  \n1-min load average at start / end: "
          f"{load0:.2f} / {load1:.2f}\n")
    print("| pair | variant | style weight | colour dist to style (lower) | texture dist, rel. (lower) | "
          "SSIM to content (higher) | edge corr. to content (higher) | s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        sw = "-" if r["style_weight"] is None else f"{r['style_weight']:g}"
        print(f"| {r['pair']} | {r['variant']} | {sw} | {r['colour']:.3f} | {r['texture']:.3f} | {r['ssim']:.3f} | "
              f"{r['edges']:.3f} | {r['seconds']:.0f} |")
    # Mean over pairs per (variant, weight): the trade-off curve in one small table.
    print("\nMean over pairs:\n\n| variant | style weight | colour | texture | SSIM | edges |\n"
          "|---|---|---|---|---|---|")
    curves: dict[str, list[dict]] = {}
    for vname, sw in dict.fromkeys((r["variant"], r["style_weight"]) for r in results):
        rs = [r for r in results if r["variant"] == vname and r["style_weight"] == sw]
        mean = {k: float(np.mean([r[k] for r in rs])) for k in ("colour", "texture", "ssim", "edges")}
        print(f"| {vname} | {'-' if sw is None else f'{sw:g}'} | {mean['colour']:.3f} | {mean['texture']:.3f} | "
              f"{mean['ssim']:.3f} | {mean['edges']:.3f} |")
        if sw is not None:
            curves.setdefault(vname, []).append(mean)
    # The variants at equal content preservation: each metric interpolated along each sweep at SSIM levels that
    # every variant's sweep covers.
    lo = max(min(p["ssim"] for p in c) for c in curves.values())
    hi = min(max(p["ssim"] for p in c) for c in curves.values())
    out: dict[str, dict] = {}
    if lo > hi:
        print("\nThe sweeps' SSIM ranges do not overlap: widen --weights to compare at equal SSIM.")
        return out
    print("\nAt equal SSIM to the content (linear interpolation along each variant's style-weight sweep, means "
          "over pairs):\n\n| variant | SSIM | colour (lower) | texture (lower) | edges (higher) |\n"
          "|---|---|---|---|---|")
    for level in sorted({round(lo, 3), round((lo + hi) / 2, 3), round(hi, 3)}):
        for vname, pts in curves.items():
            pts = sorted(pts, key=lambda p: p["ssim"])
            xs = [p["ssim"] for p in pts]
            vals = {k: float(np.interp(level, xs, [p[k] for p in pts])) for k in ("colour", "texture", "edges")}
            out[f"{vname} @ SSIM {level}"] = vals
            print(f"| {vname} | {level:.3f} | {vals['colour']:.3f} | {vals['texture']:.3f} | {vals['edges']:.3f} |")
    return out


def _sheet(tiles: list[tuple[str, np.ndarray]], path: Path, h: int = 192) -> None:
    ims = []
    for label, img in tiles:
        im = Image.fromarray(img)
        im = im.resize((round(im.width * h / im.height), h), Image.Resampling.LANCZOS)
        ImageDraw.Draw(im).text((4, 4), label, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
        ims.append(im)
    cols = 4
    rows = [ims[i:i + cols] for i in range(0, len(ims), cols)]
    width = max(sum(i.width for i in r) for r in rows)
    sheet = Image.new("RGB", (width, h * len(rows)), (255, 255, 255))
    for y, r in enumerate(rows):
        x = 0
        for im in r:
            sheet.paste(im, (x, y * h))
            x += im.width
    sheet.save(path)


if __name__ == "__main__":
    main()
