"""Gatys style transfer at 512 px on this CPU: time until the loss is within 1% of its final value.

    python benchmarks/bench_gatys.py [--pairs tubingen:starry_night,...] [--size 512] [--threads 2]
        [--reference 2] [--peer-iterations 5] [--vgg19 PATH] [--out benchmarks/out]

For each content/style pair, `pocketvision.tasks.stylize.gatys.stylize` runs with its defaults (lite0 + softmax
transformation, coarse-to-fine, L-BFGS) and reports
  * t(1% of final): seconds from the call until the final-scale total loss stays within 1% of this run's
    final loss (stricter than "first touched": it must stay in the band);
  * t(1% of ref): the same against a reference run with --reference x the final-scale iterations, so a run
    stopped early cannot look converged just because it stopped;
  * final losses, iterations, evaluations, wall time.
The peer, measured in the same process: the classic PyTorch-tutorial / neural-style configuration, VGG-19
(content relu4_2, style relu1_1..relu5_1) with L-BFGS at 512 px, single scale. Its seconds per L-BFGS
iteration are measured over --peer-iterations iterations and extrapolated to the reference neural-style's
1,000 iterations. Without --vgg19 it runs with *random weights*: the timing of a forward/backward does not
depend on the weight values, but its images would be meaningless, so none are written.
Stylised images and benchmarks/out/gatys.json are written to --out (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("POCKETVISION_DATA", HERE.parents[1] / "shared" / "data")) / "style"
DEFAULT_PAIRS = "tubingen:starry_night,golden_gate:the_scream,chicago:wave"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", default=DEFAULT_PAIRS)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference", type=float, default=2.0, help="final-scale iteration multiple of the reference")
    ap.add_argument("--peer-iterations", type=int, default=5)
    ap.add_argument("--vgg19", default=None, help="torchvision vgg19 weights for the peer (default: random)")
    ap.add_argument("--parts", default="ours,peer", help="ours, peer or both (a part left out is kept from "
                    "an earlier gatys.json)")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)  # benchmarks pin threads; the library never does
    from pocketvision.deploy.bench import machine
    from pocketvision.tasks.stylize.gatys import stylize
    from pocketvision.tasks.stylize.perceptual import build_extractor
    from pocketvision.tasks.stylize.gatys import DEFAULT_ITERATIONS, _fit, _load, _resolve_scales, _to_tensor
    from pocketvision.tasks.stylize.perceptual import PerceptualLoss

    a.out.mkdir(parents=True, exist_ok=True)
    ex = build_extractor("lite0")
    load0 = os.getloadavg()[0]
    rows, res = [], {"machine": machine(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
                     "threads": a.threads, "size": a.size, "pairs": []}
    parts = set(a.parts.split(","))
    old = json.loads((a.out / "gatys.json").read_text()) if (a.out / "gatys.json").exists() else {}
    if "ours" not in parts:
        res["pairs"], rows = old.get("pairs", []), old.get("rows", [])
    for ci, si in (p.split(":") for p in a.pairs.split(",") if "ours" in parts):
        c, s = DATA / "content" / f"{ci}.jpg", DATA / "styles" / f"{si}.jpg"
        r = stylize(c, s, size=a.size, extractor=ex, progress=False, out=a.out / f"gatys_{ci}_{si}.png")
        its = [p["iterations"] for p in r.timings["per_scale"]]  # what ran (tol stops early)
        ref_its = its[:-1] + [round(its[-1] * a.reference)]
        ref = stylize(c, s, size=a.size, extractor=ex, progress=False, iterations=ref_its, tol=0.0,
                      out=a.out / f"gatys_{ci}_{si}_reference.png")
        t_own = r.time_to_within(0.01)
        t_ref = r.time_to_within(0.01, reference=ref.final_loss["total"])
        gap = r.final_loss["total"] / ref.final_loss["total"] - 1
        h, w = r.image.shape[:2]
        evals = sum(p["evaluations"] for p in r.timings["per_scale"])
        rows.append([f"{ci} + {si}", f"{w}x{h}", f"{t_own:.0f} s", f"{t_ref:.0f} s" if gap <= 0.01 else
                     f"never (+{gap * 100:.1f}%)", f"{r.timings['total_s']:.0f} s",
                     "/".join(map(str, its)), str(evals),
                     f"{r.final_loss['total']:.4g}", f"{r.final_loss['content']:.3g}", f"{r.final_loss['style']:.3g}",
                     f"{r.final_loss['tv']:.3g}", f"{gap * 100:+.2f}%"])
        res["pairs"].append({"pair": f"{ci}+{si}", "size": [h, w], "time_to_1pct_s": t_own,
                             "time_to_1pct_of_reference_s": t_ref, "final_vs_reference": gap,
                             "total_s": r.timings["total_s"], "iterations": its,
                             "evaluations": evals, "final": r.final_loss, "reference_final": ref.final_loss,
                             "reference_iterations": ref_its, "reference_total_s": ref.timings["total_s"],
                             "timings": r.timings, "history": r.history})
        print(f"{ci}+{si}: {t_own:.0f} s to 1%, total {r.timings['total_s']:.0f} s, vs {a.reference:g}x reference "
              f"{gap * 100:+.2f}%", flush=True)

    res["rows"] = rows
    if "peer" not in parts:
        res["peer"] = old.get("peer")
        (a.out / "gatys.json").write_text(json.dumps(res, indent=2))
        return
    # The peer: VGG-19, L-BFGS, one scale at --size; seconds per iteration.
    c_img = _to_tensor(_fit(_load(DATA / "content" / "tubingen.jpg", "content"), a.size))
    s_img = _to_tensor(_fit(_load(DATA / "styles" / "starry_night.jpg", "style"), a.size))
    vgg = build_extractor("vgg19", weights=a.vgg19 or "random")
    loss = PerceptualLoss(vgg, s_img)
    cf, tg = loss.content_features(c_img), loss.style_targets()
    x = c_img.clone().requires_grad_(True)
    # tolerances 0: random weights give tiny losses and gradients, which must not end the timing early
    opt = torch.optim.LBFGS([x], max_iter=a.peer_iterations, history_size=100, line_search_fn=None,
                            tolerance_grad=0.0, tolerance_change=0.0)
    evals = [0]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        total = loss(x, cf, targets=tg)["total"]
        total.backward()
        evals[0] += 1
        return total

    t = time.perf_counter()
    opt.step(closure)
    peer_dt = time.perf_counter() - t
    peer_iters = opt.state[x]["n_iter"]
    per_it = peer_dt / peer_iters
    mean_ours = sum(p["total_s"] for p in res["pairs"]) / len(res["pairs"])
    mean_1pct = sum(p["time_to_1pct_s"] for p in res["pairs"]) / len(res["pairs"])
    res["peer"] = {"config": "VGG-19 relu4_2 / relu1_1..relu5_1, L-BFGS (no line search, as neural-style), "
                             f"{c_img.shape[-1]}x{c_img.shape[-2]}", "weights": a.vgg19 or "random",
                   "iterations": peer_iters, "evaluations": evals[0], "seconds": peer_dt,
                   "seconds_per_iteration": per_it, "extrapolated_1000_iterations_s": per_it * 1000}

    hdr = ["pair", "output", "t(1% of final)", "t(1% of ref)", "total", "iterations/scale", "evals", "final total",
           "content", "style", "tv", f"final vs {a.reference:g}x ref"]
    print(f"\n### Gatys at {a.size} px, {a.threads} threads, defaults (lite0 + softmax, scales "
          f"{_resolve_scales(a.size, None)}, L-BFGS {DEFAULT_ITERATIONS['lbfgs']})\n")
    res["load_average_start_end"] = [load0, os.getloadavg()[0]]
    print(f"machine: {res['machine']}  \ncommand: `{res['command']}`  \n1-min load average at start / end: "
          f"{load0:.2f} / {os.getloadavg()[0]:.2f} (alone, this run keeps it near {a.threads}; more: it competed)\n")
    print("| " + " | ".join(hdr) + " |\n|" + "---|" * len(hdr))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    weights = f"weights {a.vgg19}" if a.vgg19 else "random weights: timing only"
    print(f"\n### Peer: VGG-19 + L-BFGS at {a.size} px ({weights}; command above)\n")
    print("| method | s / iteration | 1,000 iterations (as neural-style) | ours: mean total | ours: mean t(1%) |")
    print("|---|---|---|---|---|")
    print(f"| VGG-19, L-BFGS, {c_img.shape[-1]}x{c_img.shape[-2]} | {per_it:.2f} s ({peer_iters} its) | "
          f"{per_it * 1000 / 60:.1f} min | {mean_ours:.0f} s ({per_it * 1000 / mean_ours:.0f}x faster) | "
          f"{mean_1pct:.0f} s |")
    (a.out / "gatys.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
