"""The loop after shipping, end to end on real photos, through the real registry.

    python benchmarks/bench_loop.py [--bundle LIVE.pvb] [--steps 10,20,40,all] [--orders teach,random]
                                    [--out benchmarks/out/loop]

1. A registry (`pocketvision serve` in its own process) with keys and tokens, in --out.
2. The live version: --bundle, or the defaults' bundle trained here (`pocketvision train ../shared/data/hotdog`),
   published to stable at 100%.
3. A device (the Python SDK: ModelUpdater) installs it and runs every photo of food-shift/pool (the photos users
   send back). Each wrong answer is reported with the photo, the model's confidence and unfamiliarity score and
   the true label: a user's correction. No food-shift/eval photo is ever reported or trained on.
4. For each N of --steps and each order, the first N corrections of the review queue are confirmed (teach: the
   registry's `order=teach`, the answers the model was least sure of first, the least familiar among them; random:
   a seeded shuffle), the channel is set back to the first version, and `retrain` runs (pull, warm start, train,
   gate, publish). The candidate is judged on food-shift/eval and hotdog/val, whether or not the gate let it
   through; the round is timed.
Prints a markdown table with the machine and the command; writes --out/bench_loop.json and bench_loop.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from bench_ota import Server, machine, pv, run  # the registry in its own process, as the OTA benchmark runs it

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("POCKETVISION_DATA", HERE.parents[1] / "shared" / "data"))


def scores(bundle, folder: Path) -> dict:
    m = bundle.evaluate(folder)
    return {"accuracy": m["accuracy"], "roc_auc": m.get("roc_auc"), "precision": m.get("threshold_precision"),
            "argmax_accuracy": m["argmax_accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default=None, help="the live version (default: train the defaults here)")
    ap.add_argument("--steps", default="10,20,40,all", help="numbers of confirmed corrections per round")
    ap.add_argument("--orders", default="teach,random", help="review orders to compare")
    ap.add_argument("--epochs", type=int, default=None, help="retrain epochs (default: the engine's)")
    ap.add_argument("--repeat", type=int, default=1, help="times each correction counts in training")
    ap.add_argument("--out", default=str(HERE / "out" / "loop"))
    a = ap.parse_args()
    sys.path.insert(0, str(HERE.parent / "src"))
    import pocketvision as pv_
    from pocketvision.ota.device import ModelUpdater
    from pocketvision.serve.retrain import render, retrain
    from pocketvision.serve.publish import Client
    from rich.console import Console

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    t0 = time.perf_counter()
    live = Path(a.bundle) if a.bundle else out / "live.pvb"
    if not live.exists():
        pv_.train(DATA / "hotdog", out=live, run_dir=out / "run-live", progress=False)
    train_s = time.perf_counter() - t0
    store = out / f"store-{int(time.time())}"
    run(pv("keys", "new", "--store", str(store), "--root-out", str(store / "root.json"), "--json"))
    tokens = {r: run(pv("tokens", "new", "--store", str(store), "--role", r)).strip() for r in ("admin", "device")}
    srv = Server(store)
    rows, history = [], []
    try:
        run(pv("publish", str(live), "--name", "hotdog", "--channel", "stable", "--server", srv.url, "--token",
               tokens["admin"], "--data", str(DATA / "hotdog")))
        admin = Client(srv.url, tokens["admin"])
        dev = ModelUpdater(srv.url, "hotdog", token=tokens["device"], trusted_root=store / "root.json",
                           cache_dir=out / "device", device_id="bench-loop-device")
        assert dev.check().action == "installed"
        pool = DATA / "food-shift" / "pool"
        photos = [(p, c) for c in ("hotdog", "not_hotdog") for p in sorted((pool / c).iterdir())]
        wrong = 0
        for p, truth in photos:
            rec = dev.predictor.predict([str(p)])[0]
            if rec["label"] != truth:
                dev.report(p, rec["label"], truth, confidence=rec["confidence"], unfamiliar=rec.get("unfamiliar"))
                wrong += 1
        items = admin.call("GET", "/v1/models/hotdog/feedback?order=teach")["items"]
        console.print(f"live version: {wrong} of {len(photos)} food-shift/pool photos wrong, reported as corrections")
        base = pv_.load(live)
        rows.append({"order": "-", "n": 0, "action": "live", "feval": scores(base, DATA / "food-shift" / "eval"),
                     "hval": scores(base, DATA / "hotdog" / "val"), "seconds": None})
        steps = [len(items) if s == "all" else min(int(s), len(items)) for s in a.steps.split(",")]
        for order in a.orders.split(","):
            queue = list(items) if order == "teach" else random.Random(0).sample(items, len(items))
            for n in steps:
                for it in items:  # every round starts from the same state: nothing confirmed, the first version live
                    admin.call("POST", f"/v1/feedback/{it['id']}", {"status": "new"})
                for it in queue[:n]:
                    admin.call("POST", f"/v1/feedback/{it['id']}", {"status": "confirmed"})
                admin.call("PUT", "/v1/models/hotdog/channels/stable", {"version": 1, "rollout": 100})
                r = retrain("hotdog", srv.url, tokens["admin"], DATA / "hotdog", channel="stable", rollout=10,
                            work=out / f"round-{order}-{n}", console=console, repeat=a.repeat,
                            train_options={"epochs": a.epochs} if a.epochs else None)
                render(r, console)
                cand = pv_.load(r.candidate) if r.candidate else base
                rows.append({"order": order, "n": n, "action": r.action, "corrections": r.corrections,
                             "gate": [g.__dict__ for g in r.gate], "feval": scores(cand, DATA / "food-shift" / "eval"),
                             "hval": scores(cand, DATA / "hotdog" / "val"), "seconds": r.seconds})
                history.append(rows[-1])
                (out / "bench_loop.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    finally:
        srv.stop()
    cmd = "python benchmarks/bench_loop.py " + " ".join(sys.argv[1:])
    print(f"\nMachine: {machine()}\nCommand: `{cmd}` (live bundle trained in {train_s:.0f} s)\n")
    print("| order | confirmed corrections | trained / held back | gate | food-shift/eval acc | AUC | precision@thr "
          "| hotdog/val acc | round (pull+train+gate+publish) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = r.get("corrections", {})
        sec = r["seconds"] or {}
        total = sec.get("total") or sum(v for k, v in sec.items() if k != "total")
        print(f"| {r['order']} | {r['n']} | {c.get('trained', '-')} / {c.get('held_back', '-')} | {r['action']} | "
              f"{r['feval']['accuracy']:.3f} | {r['feval']['roc_auc']:.3f} | {r['feval']['precision'] or 0:.3f} | "
              f"{r['hval']['accuracy']:.3f} | {f'{total:.0f} s' if total else '-'} |")
    try:
        from matplotlib.figure import Figure
        fig = Figure(figsize=(5, 3.5))
        ax = fig.add_subplot()
        for order in a.orders.split(","):
            pts = [(0, rows[0]["feval"]["accuracy"])] + [(r["n"], r["feval"]["accuracy"]) for r in rows
                                                        if r["order"] == order]
            ax.plot(*zip(*pts), marker="o", label=order)
        ax.set_xlabel("confirmed corrections"), ax.set_ylabel("food-shift/eval accuracy"), ax.legend()
        fig.tight_layout()
        fig.savefig(out / "bench_loop.png", dpi=100)
    except ImportError:
        pass


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
