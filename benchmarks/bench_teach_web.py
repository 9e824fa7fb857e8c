"""Teaching in the web page (Chromium, onnxruntime-web WASM): the page's learner against scikit-learn, its fit time,
what the embedding output costs, and personal classes across an update of the backbone.

1. Embeddings of ``dishes/train`` and ``dishes/eval`` computed by the pages themselves: the starter page
   (``pocketvision starter``: EfficientNet-Lite0's ImageNet embedding, a model created in the page) and, with
   ``--bundle``, the bundle's teachable page. The page's learner (``teach.js``) fits 1, 5, 10 and 30 examples per
   class (5 draws below 30); scikit-learn's LogisticRegression (C=1) and the numpy learner fit the same rows.
2. The fit of 10 classes x 30 examples in the page (median of 5), with the shipped classes' anchors when the page
   has them, against numpy's on the same rows.
3. One photo's model time in the teachable page against the same bundle's plain page (``pv.runPixels``, median of
   100, alternated pages), and the personal head's answer on top.
4. With ``--update NEW.pvb``: two personal classes of 10 photos taught on the bundle's ONNX, recall on
   ``dishes/eval`` before and after moving to NEW's (its examples embedded again, ``Teacher.use``), three pairs.

    python benchmarks/bench_teach_web.py [--bundle live.pvb [--update other.pvb]]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("POCKETVISION_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SHOTS = (1, 5, 10, 30)
PAIRS = (("pizza", "sushi"), ("hamburger", "french_fries"), ("ramen", "ice_cream"))
FIT = """async ([flat, d, y, k, runs]) => { const T = await import('./teach.js');
  const x = T.unitRows(Float32Array.from(flat), d); const ms = []; let h;
  for (let r = 0; r < runs; r++) { const t0 = performance.now(); h = T.fitHead(x, d, Int32Array.from(y), k, {});
    ms.push(performance.now() - t0); }
  return { ms, weight: Array.from(h.weight), bias: Array.from(h.bias) }; }"""


def photos(split: str):
    files = [(f, c.name) for c in sorted((DATA / "dishes" / split).iterdir()) for f in sorted(c.iterdir())]
    return [f for f, _ in files], np.array([c for _, c in files])


def page_embeddings(web, contract, files) -> np.ndarray:
    px = np.stack([contract.load(f) for f in files])
    out = web.run_outputs(px)
    return out["embedding"] if "embedding" in out else next(iter(out.values()))


def page_fit(web, x: np.ndarray, y: np.ndarray, runs: int = 1):
    classes = sorted(set(y))
    idx = np.array([classes.index(c) for c in y])
    r = web.page.evaluate(FIT, [x.astype(np.float32).ravel().tolist(), int(x.shape[1]), idx.tolist(), len(classes),
                                runs])
    return classes, np.asarray(r["weight"]).reshape(x.shape[1], len(classes)), np.asarray(r["bias"]), r["ms"]


def accuracy_rows(web, name, xtr, ytr, xev, yev, draws: int) -> list[dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    from pocketvision.runtime.teach import fit_head, unit_rows
    rows = []
    for shots in SHOTS:
        acc: dict[str, list[float]] = {}
        for draw in range(draws if shots < 30 else 1):
            rng = np.random.default_rng(draw)
            pick = np.concatenate([rng.permutation(np.flatnonzero(ytr == c))[:shots] for c in np.unique(ytr)])
            classes, w, b, _ = page_fit(web, xtr[pick], ytr[pick])
            page = np.array(classes)[np.argmax(unit_rows(xev) @ w + b, 1)]
            for k, pred in (("page (teach.js)", page),
                            ("numpy fit_head", np.array([r["label"] for r in fit_head(xtr[pick], list(ytr[pick]))
                                                         .predict(xev)])),
                            ("scikit-learn LR", LogisticRegression(C=1.0, max_iter=5000)
                             .fit(unit_rows(xtr[pick]), ytr[pick]).predict(unit_rows(xev))),
                            ("kNN k=1", KNeighborsClassifier(1, metric="cosine").fit(xtr[pick], ytr[pick])
                             .predict(xev))):
                acc.setdefault(k, []).append(float((pred == yev).mean()))
        rows.append({"embeddings": name, "shots": shots, **{k: float(np.mean(v)) for k, v in acc.items()}})
    return rows


def latency(plain: Path, teachable: Path, rounds: int = 3, runs: int = 40) -> dict[str, float]:
    """Model time per photo (ms, measured in the page), the two pages in turn (one browser at a time), and the
    personal head's answer on top."""
    import base64

    from pocketvision.runtime.web_predictor import WebPredictor
    js = ("async ([b64, n]) => { const s = atob(b64); const a = new Uint8Array(s.length);"
          " for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i); const t = [];"
          " for (let i = 0; i < n; i++) t.push((await pv.runPixels(a, 1)).ms); return t; }")
    t: dict[str, list[float]] = {"plain": [], "teachable": []}
    route = None
    for _ in range(rounds):
        for kind, folder in (("plain", plain), ("teachable", teachable)):
            with WebPredictor(folder) as web:
                h, w = web.contract.size
                x = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
                b64 = base64.b64encode(x.tobytes()).decode()
                web.page.evaluate(js, [b64, 10])  # warm-up
                t[kind] += web.page.evaluate(js, [b64, runs])
                if kind == "teachable" and route is None:
                    route = web.page.evaluate("""async () => { const T = await import('./teach.js');
                        const d = pv.meta.teach.features; const e = new Float32Array(d).map((_, i) => (i % 7) / 7);
                        const head = { labels: ['a', 'b', 'c', 'd'], bias: new Float32Array(4),
                          weight: new Float32Array(d * 4).map((_, i) => ((i * 13) % 17) / 17 - 0.5) };
                        const t0 = performance.now(); for (let i = 0; i < 200; i++) T.headProbabilities(head, e);
                        return (performance.now() - t0) / 200; }""")
    return {"plain_ms": float(np.median(t["plain"])), "teachable_ms": float(np.median(t["teachable"])),
            "route_ms": float(route)}


def recall(teacher, held: dict[str, list[Path]]) -> float:
    return float(np.mean([r["label"] == c for c, ps in held.items() for r in teacher.predict(ps)]))


def across_update(bundle: str, update: str) -> list[dict]:
    """Two personal classes of 10 photos taught on ``bundle``'s ONNX; recall on dishes/eval before and after the
    device moves to ``update``'s (``Teacher.use``: the kept examples embedded again, the head refitted)."""
    import pocketvision as pv
    from pocketvision.deploy.artifact import open_predictor
    from pocketvision.runtime.teach import Teacher
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = pv.load(bundle).export(Path(tmp) / "v1.onnx", teachable=True, verify=False).path
        new = pv.load(update).export(Path(tmp) / "v2.onnx", teachable=True, verify=False).path
        with open_predictor(old) as m1, open_predictor(new) as m2:
            for pair in PAIRS:
                t = Teacher(m1, Path(tmp) / "-".join(pair))
                for c in pair:
                    t.add(c, sorted((DATA / "dishes" / "train" / c).iterdir())[:10])
                held = {c: sorted((DATA / "dishes" / "eval" / c).iterdir()) for c in pair}
                before = recall(t, held)
                t.use(m2)
                rows.append({"classes": " + ".join(pair), "before": before, "after": recall(t, held)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", help="a shipped classifier: its teachable and plain pages too")
    ap.add_argument("--update", help="with --bundle: the release that replaces it (personal classes re-embedded)")
    ap.add_argument("--draws", type=int, default=5)
    args = ap.parse_args()
    import pocketvision as pv
    from pocketvision.runtime.teach import anchors_of, fit_head
    from pocketvision.runtime.web_predictor import WebPredictor
    tr_files, ytr = photos("train")
    ev_files, yev = photos("eval")
    rows, fits, lat, moved = [], [], None, None
    with tempfile.TemporaryDirectory() as tmp:
        pages = {"starter page (Lite0 ImageNet, no classes)": Path(pv.starter(Path(tmp) / "starter.web")["path"])}
        if args.bundle:
            b = pv.load(args.bundle)
            pages[f"teachable page of {Path(args.bundle).name}"] = b.export(Path(tmp) / "t.web", to="web",
                                                                            teachable=True, verify=False).path
        for name, folder in pages.items():
            with WebPredictor(folder) as web:
                xtr = page_embeddings(web, web.contract, tr_files)
                xev = page_embeddings(web, web.contract, ev_files)
                rows += accuracy_rows(web, name, xtr, ytr, xev, yev, args.draws)
                anchors, anchor_names = (anchors_of(web.meta) if web.meta["teach"].get("anchors")
                                         else (np.zeros((0, xtr.shape[1]), np.float32), []))
                x = np.concatenate([anchors, xtr])
                y = np.array(anchor_names + list(ytr))
                _, _, _, ms = page_fit(web, x, y, runs=5)
                t = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    fit_head(x, list(y))
                    t.append(1000 * (time.perf_counter() - t0))
                fits.append({"page": name, "rows": len(x), "classes": len(set(y)), "page_ms": float(np.median(ms)),
                             "numpy_ms": float(np.median(t))})
        if args.bundle:
            plain = b.export(Path(tmp) / "p.web", to="web", verify=False).path
            lat = latency(plain, pages[f"teachable page of {Path(args.bundle).name}"])
    if args.bundle and args.update:
        moved = across_update(args.bundle, args.update)
    print(f"# bench_teach_web: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Chromium "
          f"(WASM); command: python {' '.join(sys.argv)}")
    names = ["page (teach.js)", "numpy fit_head", "scikit-learn LR", "kNN k=1"]
    print("| embeddings (computed by the page) | examples per class | " + " | ".join(names) + " | page - LR | "
          "page - kNN |")
    print("|---|---|" + "---|" * (len(names) + 2))
    for r in rows:
        print(f"| {r['embeddings']} | {r['shots']} | " + " | ".join(f"{r[n]:.3f}" for n in names)
              + f" | {100 * (r[names[0]] - r[names[2]]):+.1f} | {100 * (r[names[0]] - r[names[3]]):+.1f} |")
    print("\n| page | rows fitted (anchors + 10 x 30) | classes | fit in the page (median of 5) | numpy | page / numpy |")
    print("|---|---|---|---|---|---|")
    for f in fits:
        print(f"| {f['page']} | {f['rows']} | {f['classes']} | {f['page_ms']:.0f} ms | {f['numpy_ms']:.0f} ms | "
              f"{f['page_ms'] / f['numpy_ms']:.2f} |")
    if lat:
        print(f"\nmodel time per photo (median of 100, alternated): plain page {lat['plain_ms']:.1f} ms, teachable page "
              f"{lat['teachable_ms']:.1f} ms ({lat['teachable_ms'] / lat['plain_ms']:.3f}x); the personal head's answer "
              f"{lat['route_ms']:.2f} ms on top")
    if moved:
        print(f"\nPersonal classes across an update ({Path(args.bundle).name} -> {Path(args.update).name}, examples "
              "embedded again):")
        print("| personal classes (10 photos each) | recall on dishes/eval before | after | change |")
        print("|---|---|---|---|")
        for m in moved:
            print(f"| {m['classes']} | {m['before']:.3f} | {m['after']:.3f} | {100 * (m['after'] - m['before']):+.1f} |")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "teach_web.json").write_text(json.dumps({"rows": rows, "fits": fits, "latency": lat, "update": moved},
                                                  indent=1))


if __name__ == "__main__":
    main()
