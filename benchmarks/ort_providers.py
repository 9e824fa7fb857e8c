"""DeepDog with ELU on onnxruntime, three ways to run the same file: is there a setting that reaches 6 ms?

Usage (onnxruntime-openvino replaces the onnxruntime wheel, so give it its own environment):
    python -m venv /tmp/ov && /tmp/ov/bin/pip install onnxruntime-openvino pillow && /tmp/ov/bin/pip install --no-deps -e .
    /tmp/ov/bin/python benchmarks/ort_providers.py [model.onnx ...]
(with the plain onnxruntime wheel the OpenVINO column is left out).

Columns: the CPU provider as `pocketvision bench` runs it (ORT_ENABLE_ALL, which includes the NCHWc layout pass);
the CPU provider with that pass turned off (no reorders around the ELUs, but plain-layout convolutions); the OpenVINO
provider in FP32. Batch 1, 1 thread, uint8 input, median of 7 interleaved rounds x 40 runs, and the largest
difference of any output against the first column on the same input. The default files come from
`python benchmarks/bench_classify.py --parts export` (our exporter, random weights: timing does not depend on them).
"""

import sys
import time

import numpy as np
import onnxruntime as ort

from pocketvision.deploy.bench import machine

DEFAULT = ["benchmarks/out/deepdog_1.0_elu.onnx", "benchmarks/out/deepdog_1.0_relu.onnx"]


def _sessions(path: str) -> dict[str, ort.InferenceSession]:
    def so() -> ort.SessionOptions:
        o = ort.SessionOptions()
        o.intra_op_num_threads = 1
        return o

    cpu = ["CPUExecutionProvider"]
    out = {"CPU provider": ort.InferenceSession(path, so(), providers=cpu),
           "CPU, NCHWc off": ort.InferenceSession(path, so(), providers=cpu, disabled_optimizers=["NchwcTransformer"])}
    if "OpenVINOExecutionProvider" in ort.get_available_providers():
        opts = {"device_type": "CPU", "precision": "FP32", "num_of_threads": "1"}
        out["OpenVINO provider"] = ort.InferenceSession(path, so(), providers=[("OpenVINOExecutionProvider", opts)])
    return out


def main(paths: list[str], rounds: int = 7, runs: int = 40) -> None:
    print(f"machine: {machine()}, onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})")
    print(f"command: {' '.join(['python', *sys.argv])}\n")
    rows = []
    for path in paths:
        sessions = _sessions(path)
        inp = next(iter(sessions.values())).get_inputs()[0]
        x = np.random.default_rng(0).integers(0, 256, [1 if not isinstance(d, int) else d for d in inp.shape],
                                              dtype=np.uint8)
        outs = {k: s.run(None, {inp.name: x}) for k, s in sessions.items()}
        ref = outs["CPU provider"]
        med: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(rounds):
            for k, s in sessions.items():
                for _ in range(5):
                    s.run(None, {inp.name: x})
                times = []
                for _ in range(runs):
                    t = time.perf_counter()
                    s.run(None, {inp.name: x})
                    times.append(time.perf_counter() - t)
                med[k].append(float(np.median(times)) * 1e3)
        cells = []
        for k in sessions:
            diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, outs[k]))
            cells.append(f"{np.median(med[k]):.2f}" + (f" (diff {diff:.0e})" if k != "CPU provider" else ""))
        rows.append((path, list(sessions), cells))
    names = rows[0][1]
    print("| model, batch 1, 1 thread | " + " | ".join(f"{n} p50 ms" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for path, _, cells in rows:
        print(f"| {path} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
