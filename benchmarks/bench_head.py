"""What keeping the ImageNet head costs on a device: two bundles' ONNX exports timed side by side in one run.

    python benchmarks/bench_head.py --new hotdog.pvb --old hotdog-new-head.pvb [--runs 300]

--old is the same data trained with `--imagenet-head off --no-low-res-views` (a new head, the earlier default).
Each is exported to ONNX fp32 and run with 1 thread at batch 1, the two alternated after a warm-up so drift on a
noisy machine hits both alike; median latency and file size, with the ratio new / old.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_ota import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new", required=True, help="a bundle whose ImageNet head was kept")
    ap.add_argument("--old", required=True, help="the same data with a new head")
    ap.add_argument("--runs", type=int, default=300)
    a = ap.parse_args()
    import onnxruntime as ort

    import pocketvision as pv
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in (("new head (--imagenet-head off)", a.old), ("ImageNet head kept", a.new)):
            out = pv.load(path).export(Path(tmp) / f"{len(sessions)}.onnx", verify=False).path
            so = ort.SessionOptions()
            so.intra_op_num_threads = so.inter_op_num_threads = 1
            s = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"])
            inp = s.get_inputs()[0]
            x = np.zeros([1] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]], np.uint8)
            sessions[name] = (s, inp.name, x, out.stat().st_size / 1e6)
        times = {k: [] for k in sessions}
        for i in range(30 + a.runs):
            for k, (s, n, x, _) in sessions.items():
                t = time.perf_counter()
                s.run(None, {n: x})
                if i >= 30:
                    times[k].append(time.perf_counter() - t)
    cmd = "python benchmarks/bench_head.py " + " ".join(sys.argv[1:])
    print(f"\nMachine: {machine()}\nCommand: `{cmd}`\n")
    print("| ONNX fp32, 1 thread, batch 1 | median ms | size MB |\n|---|---|---|")
    base = None
    for k, (_, _, _, mb) in sessions.items():
        ms = statistics.median(times[k]) * 1e3
        base = base or ms
        print(f"| {k} | {ms:.2f} ({ms / base - 1:+.1%}) | {mb:.2f} |")


if __name__ == "__main__":
    main()
