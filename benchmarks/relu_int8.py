"""DeepDog int8 vs fp32 latency by width, activation and size: ONNX and LiteRT, 1 thread, interleaved rounds.

Usage: python benchmarks/relu_int8.py  (needs benchmarks/out/deepdog.pvb for the data path and calibration)
"""
import statistics, time, numpy as np, torch
from pathlib import Path
import pocketvision as pv
from pocketvision.api import Bundle
from pocketvision.bundle import new_meta
from pocketvision.contract import Contract
from pocketvision.models import build_model
from pocketvision.runtime.artifact import open_predictor
src = pv.load(Path(__file__).resolve().parent / "out" / "deepdog.pvb")
out = Path(__file__).resolve().parent / "out" / "relu_int8"; out.mkdir(exist_ok=True)
res = {}
for alpha, act, size in [(0.5, "relu", 160), (1.0, "elu", 224), (1.0, "relu", 224)]:
    torch.manual_seed(0)
    spec = {"name": "deepdog", "args": {"alpha": alpha, "act": act, "num_classes": 2}}
    m = build_model(spec)
    c = Contract(size=(size, size), mean=(127.5,)*3, std=(127.5,)*3)
    meta = {**src.meta, "arch": spec, "contract": c.to_dict()}
    b = Bundle(meta, m.eval())
    # BN statistics from real photos so int8 ranges are realistic
    from pocketvision.compress.data import training_pixels
    px = training_pixels(b, limit=64)
    m.train();
    with torch.no_grad(): m(torch.from_numpy(c.normalize(px)))
    m.eval()
    tag = f"a{alpha}_{act}_{size}"
    files = {}
    for to, prec in [("onnx","fp32"),("onnx","int8"),("tflite","fp32"),("tflite","int8")]:
        files[f"{to} {prec}"] = b.export(out / f"{tag}-{prec}.{ 'onnx' if to=='onnx' else 'tflite'}", to=to, precision=prec, verify=False, max_drop=100).path
    preds = {k: open_predictor(p, threads=1) for k, p in files.items()}
    per = {k: [] for k in files}
    x = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    for _ in range(5):
        for k, p in preds.items():
            for _ in range(3): p.run_pixels(x)
            t = []
            for _ in range(20):
                t0 = time.perf_counter(); p.run_pixels(x); t.append((time.perf_counter() - t0) * 1e3)
            per[k].append(statistics.median(t))
    med = {k: statistics.median(v) for k, v in per.items()}
    print(tag, {k: round(v, 2) for k, v in med.items()}, "onnx int8/fp32 %.2f" % (med["onnx int8"]/med["onnx fp32"]), "tflite int8/fp32 %.2f" % (med["tflite int8"]/med["tflite fp32"]), flush=True)
