"""The Ultralytics peer, run inside its own venv (it needs another torch): train yolo11n-cls from
scratch offline, export ONNX, time its ONNX and its predict API. Prints one JSON line.

Usage (from bench_classify.py): VENV/bin/python ultralytics_peer.py DATA OUT_DIR EPOCHS PHOTOS_DIR [DEVICE]
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
data, out, epochs, photos = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
arg = sys.argv[5] if len(sys.argv) > 5 else "cpu"
device = {"auto": None, "cuda": 0}.get(arg, arg)
try:
    import polars  # noqa: F401
except ImportError:
    # The GPU machine has no polars (its wheel, 54 MB, is more than can be carried there). Ultralytics imports it
    # only to read its results.csv back into the checkpoint, inside a try that then stores {}: an empty module
    # keeps training and timing untouched.
    import types
    sys.modules["polars"] = types.ModuleType("polars")
from ultralytics import YOLO  # noqa: E402

if device not in (None, "cpu"):
    # Ultralytics' AMP self-test first downloads yolo26n.pt, which offline can raise an error it doesn't catch.
    # Passing the test turns AMP on, so skip it and keep AMP on.
    import ultralytics.engine.trainer as _trainer
    _trainer.check_amp = lambda model: True

t = time.perf_counter()
model = YOLO("yolo11n-cls.yaml")
model.train(data=data, imgsz=224, epochs=epochs, batch=32, pretrained=False, plots=False, device=device,
            project=str(out), name="train", exist_ok=True, verbose=False)
train_s = time.perf_counter() - t
metrics = model.val(data=data, imgsz=224, batch=32, device=device, plots=False, verbose=False)
onnx_path = model.export(format="onnx", imgsz=224)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

so = ort.SessionOptions()
so.intra_op_num_threads = 1
sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
x = np.random.rand(1, 3, 224, 224).astype(np.float32)
for _ in range(10):
    sess.run(None, {sess.get_inputs()[0].name: x})
lat = []
for _ in range(100):
    t0 = time.perf_counter()
    sess.run(None, {sess.get_inputs()[0].name: x})
    lat.append((time.perf_counter() - t0) * 1e3)

onnx_model = YOLO(onnx_path, task="classify")
imgs = sorted(photos.glob("*.jpg"))[:50]
onnx_model.predict(str(imgs[0]), imgsz=224, verbose=False)
e2e = []
for p in imgs:
    t0 = time.perf_counter()
    onnx_model.predict(str(p), imgsz=224, verbose=False)
    e2e.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({"train_seconds": train_s, "val_top1": float(metrics.top1), "epochs": epochs,
                  "onnx": onnx_path, "onnx_bytes": os.path.getsize(onnx_path),
                  "onnx_p50_ms_1thread": statistics.median(lat), "predict_e2e_p50_ms": statistics.median(e2e)}))
