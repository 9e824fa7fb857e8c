"""The feed-forward stylizer against its targets, measured in one run on this machine.

    python benchmarks/bench_stylize.py                        # train + every measurement (~45 min on 2 cores)
    python benchmarks/bench_stylize.py --bundle B.pvb         # measure an existing bundle (no training)

1. train:    `pocketvision train ../shared/data/hotdog --task stylize --style starry_night.jpg` (defaults), wall time
2. quality:  on 20 held-out content photos (hotdog val) at the training size, the stylizer's content and style
             losses next to the optimisation method's (`pocketvision stylize` defaults, same loss network, weights,
             style image and size): ratio per photo, median; on the first 5, the number of single-scale L-BFGS
             iterations the optimisation method needs to reach the stylizer's total loss (Johnson et al.'s
             yardstick: their network matched 50-100 iterations)
3. size:     int8 ONNX and LiteRT files (<= 0.5 MB)
4. speed:    onnxruntime and LiteRT, 1 thread, batch 1, at 256x256 and 384x384 (fp32 and int8), median of 50
             runs; the LiteRT files are exported at each size (LiteRT graphs have a fixed input); Johnson et al.'s
             full transformer net (random weights: speed does not depend on them) exported the same way as a peer
5. parity:   PSNR of every export against the bundle on the held-out photos (fp32 >= 40 dB, int8 >= 30 dB)
6. flicker:  `pocketvision filter --style` on a 640x480 panning video of real photos: mean |out_t - out_t-1|
             over mean |in_t - in_t-1|, with and without temporal smoothing

Prints one table per part with the machine and the command; JSON and images go to benchmarks/out/stylize/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "out" / "stylize"


def _latency(path: Path, side: int, runs: int = 50) -> float:
    from pocketvision.deploy.artifact import open_predictor
    p = open_predictor(path, threads=1)
    x = np.random.default_rng(0).integers(0, 256, (1, side, side, 3), dtype=np.uint8)
    for _ in range(5):
        p.run_pixels(x)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p.run_pixels(x)
        t.append(time.perf_counter() - t0)
    return 1000 * float(np.median(t))


def _adapt(bundle, loss, photo: np.ndarray, steps: int) -> dict:
    """The bundle's stylizer fine-tuned on this one photo (Adam 1e-3): its content and style losses afterwards. Where
    these reach the optimisation method's, the network is big enough for a photo, and what the trained stylizer
    lacks is what one network for every photo costs (the amortisation gap), not capacity."""
    import copy

    import torch
    net = copy.deepcopy(bundle.model).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    target = loss.content_features(torch.from_numpy(photo[None].astype(np.float32)).permute(0, 3, 1, 2))
    x = torch.from_numpy(bundle.contract.normalize(photo[None]))
    for _ in range(steps):
        p = loss(net(x), target, style=0)
        opt.zero_grad()
        p["total"].backward()
        opt.step()
    with torch.no_grad():
        p = loss(net.eval()(x), target, style=0)
    return {"adapted_content": float(p["content"]), "adapted_style": float(p["style"])}


def _at_size(bundle, side: int):
    """The same weights with a contract of another size (a stylizer is fully convolutional)."""
    import copy

    from pocketvision.api import Bundle
    meta = copy.deepcopy(bundle.meta)
    meta["contract"]["size"] = [side, side]
    return Bundle(meta, bundle.model)


def main() -> None:
    import torch

    import pocketvision as pv
    from pocketvision.deploy.bench import machine
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--style", default=str(DATA / "style" / "styles" / "starry_night.jpg"))
    ap.add_argument("--photos", type=int, default=20, help="held-out photos for the quality part (0: skip it)")
    ap.add_argument("--equivalent", type=int, default=5, help="photos that also get the equivalent-iterations run")
    ap.add_argument("--adapt", default="", help="photos (indices among --photos, comma-separated) on which the "
                    "stylizer is also fine-tuned alone (--adapt-steps Adam steps): how close one network of this size "
                    "gets to the method on one photo")
    ap.add_argument("--adapt-steps", type=int, default=400)
    ap.add_argument("--quality-only", action="store_true", help="parts 1-2 only (no timing: two bundles can be "
                    "measured side by side, one thread each)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training and the optimisation method")
    ap.add_argument("--out", default=None, help="folder for the JSON and images (default benchmarks/out/stylize)")
    a = ap.parse_args()
    global OUT
    OUT = Path(a.out) if a.out else OUT
    torch.set_num_threads(a.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine(), "command": "python benchmarks/bench_stylize.py " + " ".join(sys.argv[1:])}
    print(f"{report['machine']}\n{report['command']}\n")

    # 1. train -------------------------------------------------------------------------------------------
    if a.bundle:
        b = pv.load(a.bundle)
    else:
        t0 = time.perf_counter()
        b = pv.train(DATA / "hotdog", out=OUT / "starry.pvb", task="stylize", style=a.style, run_dir=OUT / "run",
                     tensorboard=False)
        report["train_seconds"] = time.perf_counter() - t0
        print(f"train: {report['train_seconds'] / 60:.1f} min ({b.meta['metrics']})")
    report["train_config"] = {k: b.meta["train_config"][k] for k in ("arch", "arch_args", "size", "epochs",
                                                                    "batch_size", "lr")}

    # 2. quality against the optimisation method -----------------------------------------------------------
    if a.photos:  # --photos 0: exports, speed, parity and flicker only (an existing --bundle)
        from pocketvision.tasks.stylize.gatys import stylize
        from pocketvision.tasks.stylize import _style_images
        from pocketvision.tasks.stylize.run import _loss_from
        loss = _loss_from(b.meta["stylize"], _style_images(b.meta))
        from pocketvision.tasks.stylize.photos import scan_photos
        from pocketvision.core.pixels import load_pixels
        val = sorted(scan_photos(DATA / "hotdog" / "val").train + scan_photos(DATA / "hotdog" / "val").val)
        pick = np.random.default_rng(0).permutation(len(val))[: a.photos]  # both classes, never trained on
        pixels, _ = load_pixels([val[i] for i in sorted(pick)], b.contract)
        h, w = b.contract.size
        style_img = _style_images(b.meta)[0]

        def optimise(x, **over):
            """The optimisation method on the stylizer's own loss (network, layers, weights, style scale)."""
            return stylize(x, style_img, size=max(h, w), extractor=loss.extractor, content_layers=loss.content_layers,
                           style_layers=loss.style_layers, content_weight=loss.content_weight,
                           style_weight=loss.style_weight, tv_weight=loss.tv_weight,
                           style_scale=max(style_img.size) / max(h, w), progress=False, **over)

        rows = []
        adapt = {int(i) for i in a.adapt.split(",") if i.strip()}
        for i, x in enumerate(pixels):
            y = torch.from_numpy(b.predict_pixels(x[None]).astype(np.float32)).permute(0, 3, 1, 2)
            c = torch.from_numpy(x[None].astype(np.float32)).permute(0, 3, 1, 2)
            with torch.no_grad():
                ours = loss(y, c, style=0)
            t0 = time.perf_counter()
            r = optimise(x)
            t_g = time.perf_counter() - t0
            with torch.no_grad():
                theirs = loss(torch.from_numpy(r.image.astype(np.float32)).permute(2, 0, 1)[None], c, style=0)
            row_eq = {}
            if i < a.equivalent:
                # Johnson et al.'s yardstick: after how many single-scale L-BFGS iterations does the optimisation
                # method reach the stylizer's total loss (same loss, same size)?
                one = optimise(x, scales=[1.0], iterations=300, tol=0.0)
                hit = [r["iteration"] for r in one.history if r["total"] <= float(ours["total"])]
                row_eq = {"equivalent_iterations": hit[0] if hit else None,
                          "single_scale_total_300": one.history[-1]["total"]}
            if i in adapt:
                row_eq.update(_adapt(b, loss, x, a.adapt_steps))
            rows.append({**row_eq, "stylizer_total": float(ours["total"]), "gatys_total": float(theirs["total"]),
                         "content_ratio": float(ours["content"] / theirs["content"]),
                         "style_ratio": float(ours["style"] / theirs["style"]),
                         "stylizer_content": float(ours["content"]),
                         "stylizer_style": float(ours["style"]), "gatys_content": float(theirs["content"]),
                         "gatys_style": float(theirs["style"]), "gatys_seconds": t_g})
            if i < 4:
                from PIL import Image
                Image.fromarray(np.concatenate([x, b.predict_pixels(x[None])[0], r.image], 1)).save(OUT / f"q{i}.png")
        med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]
               if k not in ("equivalent_iterations", "single_scale_total_300", "adapted_content", "adapted_style")}
        eq = [r["equivalent_iterations"] for r in rows if "equivalent_iterations" in r]
        report["quality"] = {"photos": len(rows), "median": med, "equivalent_iterations": eq, "rows": rows}
        print(f"quality on {len(rows)} held-out photos at {h} px: stylizer/optimisation content loss "
              f"{med['content_ratio']:.2f}x, style loss {med['style_ratio']:.2f}x (target <= 1.5x each); "
              f"optimisation {med['gatys_seconds']:.1f} s per photo; total {med['stylizer_total']:.3g} vs "
              f"{med['gatys_total']:.3g}")
        if eq:
            print(f"the stylizer's total loss = single-scale L-BFGS after {eq} iterations (first {len(eq)} photos; "
                  "None = not reached in 300)")
        for i, r in ((i, rows[i]) for i in sorted(adapt) if i < len(rows)):
            print(f"photo {i}, the stylizer fine-tuned on it alone ({a.adapt_steps} steps): content "
                  f"{r['adapted_content'] / r['gatys_content']:.2f}x, "
                  f"style {r['adapted_style'] / r['gatys_style']:.2f}x "
                  f"(trained on all photos: {r['content_ratio']:.2f}x / {r['style_ratio']:.2f}x)")

    if a.quality_only:
        (OUT / "results.json").write_text(json.dumps(report, indent=2, default=str))
        return

    # 3-5. exports: size, speed, parity -----------------------------------------------------------------------
    ex = {}
    for side in (256, 384):
        bs = _at_size(b, side)
        for to, prec in [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8")]:
            path = OUT / f"s{side}-{prec}{'.onnx' if to == 'onnx' else '.tflite'}"
            res = bs.export(path, to=to, precision=prec, data=DATA / "hotdog" / "val")
            v = res.verification
            ex[(side, to, prec)] = {"size_kb": res.size_bytes / 1024, "psnr_db": v["psnr_db"], "passed": v["passed"],
                                    "ms": _latency(path, side)}
    from pocketvision.models import build_model, count_params
    for name in ("johnson", "stylenet_mobile"):
        net = build_model({"name": name, "args": {}})
        from pocketvision.api import Bundle
        peer = Bundle({**b.meta, "arch": {"name": name, "args": {}}}, net)
        for side in (256, 384):
            path = OUT / f"{name}-{side}.onnx"
            _at_size(peer, side).export(path, verify=False)
            ex[(side, f"{name} (random weights)", "fp32")] = {"ms": _latency(path, side), "params": count_params(net),
                                                               "size_kb": path.stat().st_size / 1024}
    report["exports"] = {f"{k[0]} {k[1]} {k[2]}": v for k, v in ex.items()}
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"stylizer exports, onnxruntime / LiteRT, 1 thread, batch 1 ({report['machine']})")
    for col in ("size", "model", "precision", "file", "PSNR vs bundle", "p50 latency", "fps"):
        t.add_column(col, justify="left" if col in ("model", "precision") else "right")
    for (side, to, prec), v in ex.items():
        t.add_row(f"{side}x{side}", to, prec, f"{v['size_kb']:.0f} KB",
                  f"{v['psnr_db']:.1f} dB" if "psnr_db" in v else "-", f"{v['ms']:.2f} ms", f"{1000 / v['ms']:.0f}")
    Console(width=160).print(t)
    for side in (256, 384):
        ratio = ex[(side, "tflite", "fp32")]["ms"] / ex[(side, "onnx", "fp32")]["ms"]
        print(f"{side}px: LiteRT / onnxruntime fp32 = {ratio:.2f}x (target <= 1.5x)")

    # 6. flicker ------------------------------------------------------------------------------------------
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test suite's video maker
    from synthetic_video import make_video
    photos = sorted((DATA / "style" / "content").glob("*.jpg"))
    make_video(photos, OUT / "pan.mp4", frames_per_image=30, pan=0.1)
    from pocketvision.deploy.artifact import open_predictor
    from pocketvision.tasks import get_task
    from pocketvision.tasks.stylize import StylizeFilterOptions
    model = open_predictor(OUT / "s256-fp32.onnx")
    flick = {}
    for temporal in (0.0, 0.6):
        s = get_task("stylize").filter_video(model, OUT / "pan.mp4", OUT / f"pan-{temporal}.mp4",
                                             StylizeFilterOptions(temporal=temporal))
        flick[temporal] = {"flicker": s["flicker"], "fps": s["fps"], "ms_per_frame": s["ms_per_frame"]}
        print(f"flicker (temporal={temporal}): output {s['flicker']['output']:.2f} vs input "
              f"{s['flicker']['input']:.2f} = {s['flicker']['ratio']:.3f} (unsmoothed "
              f"{s['flicker']['unsmoothed_ratio']:.3f}); {s['fps']} fps end to end at 640x480")
    report["flicker"] = flick
    (OUT / "results.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nJSON and images: {OUT}")


if __name__ == "__main__":
    main()
