"""The Ultralytics peer's exports, checked the way pocketvision checks its own (run in its own venv).

For each format Ultralytics exports (onnx, tflite): size, gzip size, latency p50 at 1 thread, and
whether the exported file agrees with Ultralytics' own torch model on the same val photos (max |dp|,
top-1 agreement), through Ultralytics' own predict API for both. Prints one JSON line.

Usage: VENV/bin/python ultralytics_exports.py WEIGHTS.pt VAL_DIR
"""

import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
weights, val = sys.argv[1], Path(sys.argv[2])
import numpy as np  # noqa: E402
from ultralytics import YOLO  # noqa: E402

imgs = sorted(p for p in val.rglob("*.jpg"))
names = None


def probs(model, paths):
    out = []
    for p in paths:
        r = model.predict(str(p), imgsz=224, verbose=False)[0]
        out.append(r.probs.data.cpu().numpy() if hasattr(r.probs.data, "cpu") else np.asarray(r.probs.data))
    return np.stack(out)


ref_model = YOLO(weights, task="classify")
ref = probs(ref_model, imgs)
truth = np.array([list(ref_model.names.values()).index(p.parent.name) for p in imgs])
report = {"n": len(imgs), "torch_accuracy": float((ref.argmax(1) == truth).mean()), "formats": {}}
for fmt in ("onnx", "tflite"):
    row = {}
    try:
        t0 = time.perf_counter()
        path = ref_model.export(format=fmt, imgsz=224)
        row["export_s"] = round(time.perf_counter() - t0, 1)
        p = Path(path)
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*.tflite"))[:1]
        data = b"".join(f.read_bytes() for f in files)
        row.update(path=str(files[0]), bytes=len(data), gzip_bytes=len(gzip.compress(data, 9)))
        m = YOLO(str(files[0]), task="classify")
        cand = probs(m, imgs)
        row.update(max_abs_diff=float(np.abs(cand - ref).max()), agreement=float((cand.argmax(1) == ref.argmax(1)).mean()),
                   accuracy=float((cand.argmax(1) == truth).mean()))
        lat = []
        for p_ in imgs[:50]:
            t = time.perf_counter()
            m.predict(str(p_), imgsz=224, verbose=False)
            lat.append((time.perf_counter() - t) * 1e3)
        row["predict_e2e_p50_ms"] = statistics.median(lat)
    except Exception as e:  # noqa: BLE001 - report why a format failed
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    report["formats"][fmt] = row
print(json.dumps(report))
