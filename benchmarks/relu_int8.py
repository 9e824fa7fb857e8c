"""DeepDog int8 vs fp32 latency by width, activation and size: ONNX and LiteRT, 1 thread, interleaved rounds.

Usage: python benchmarks/relu_int8.py  (uses benchmarks/out/deepdog.pvb for its data path and calibration photos)

Random-init nets whose BatchNorm statistics come from real photos (so int8 ranges are realistic); latency does
not depend on the weights. Rounds alternate between the four files so machine noise hits them alike.
"""

from pathlib import Path

import torch

import pocketvision as pv
from pocketvision.api import Bundle
from pocketvision.compress.data import training_pixels
from pocketvision.core.contract import Contract
from pocketvision.models import build_model

from bench_compress import interleaved  # same folder: rounds alternate between the files

OUT = Path(__file__).resolve().parent / "out"
CASES = [(0.5, "relu", 160), (1.0, "elu", 224), (1.0, "relu", 224)]


def main() -> None:
    src = pv.load(OUT / "deepdog.pvb")
    out = OUT / "relu_int8"
    out.mkdir(exist_ok=True)
    for alpha, act, size in CASES:
        torch.manual_seed(0)
        spec = {"name": "deepdog", "args": {"alpha": alpha, "act": act, "num_classes": 2}}
        model = build_model(spec)
        contract = Contract(size=(size, size), mean=(127.5,) * 3, std=(127.5,) * 3)
        bundle = Bundle({**src.meta, "arch": spec, "contract": contract.to_dict()}, model.eval())
        pixels = training_pixels(bundle, limit=64)
        model.train()  # one pass in train mode: BN statistics from real photos
        with torch.no_grad():
            model(torch.from_numpy(contract.normalize(pixels)))
        model.eval()
        tag = f"a{alpha}_{act}_{size}"
        files = {f"{to} {prec}": bundle.export(out / f"{tag}-{prec}.{'onnx' if to == 'onnx' else 'tflite'}", to=to,
                                                precision=prec, verify=False, max_drop=100).path
                 for to, prec in [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8")]}
        med = interleaved(files, rounds=5, runs=20)
        print(tag, {k: round(v, 2) for k, v in med.items()},
              f"onnx int8/fp32 {med['onnx int8'] / med['onnx fp32']:.2f}",
              f"tflite int8/fp32 {med['tflite int8'] / med['tflite fp32']:.2f}", flush=True)


if __name__ == "__main__":
    main()
