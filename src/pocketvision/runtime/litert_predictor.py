"""Run an exported ``.tflite`` with the ai-edge-litert interpreter (no torch import).

Labels, contract and threshold come from the file's own ``pocketvision.*`` metadata entries.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PocketVisionError
from ..core.quiet import silence_fd2
from .predictor import META_PREFIX, Predictor, parse_metadata


def read_metadata(data: bytes) -> dict[str, Any]:
    from ai_edge_litert import schema_py_generated as fb
    m = fb.Model.GetRootAs(data, 0)
    out = {}
    for i in range(m.MetadataLength()):
        md = m.Metadata(i)
        name = md.Name().decode()
        if not name.startswith(META_PREFIX):
            continue
        buf = m.Buffers(md.Buffer())
        raw = buf.DataAsNumpy().tobytes() if buf.DataLength() else data[buf.Offset():buf.Offset() + buf.Size()]
        out[name] = raw
    return parse_metadata(out, "LiteRT metadata")


ACCELERATORS = ("xnnpack", "builtin")  # LiteRT's default XNNPACK delegate, or its built-in kernels alone


def _resolver(accelerator: str | None):
    from ai_edge_litert.interpreter import OpResolverType
    if accelerator in (None, "xnnpack"):
        return OpResolverType.AUTO
    if accelerator == "builtin":
        return OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    raise PocketVisionError(f"LiteRT accelerator {accelerator!r}: one of {', '.join(ACCELERATORS)}.")


class LiteRTPredictor(Predictor):
    def __init__(self, path: str | Path, threads: int | None = None, accelerator: str | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise PocketVisionError(f"{self.path}: model file not found.")
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise PocketVisionError("running a .tflite needs ai-edge-litert: pip install 'pocketvision[litert]'") from None
        data = self.path.read_bytes()
        try:
            meta = read_metadata(data)
            with silence_fd2():
                self.interpreter = Interpreter(model_content=data, num_threads=threads or 1,
                                               experimental_op_resolver_type=_resolver(accelerator))
                self.interpreter.allocate_tensors()
        except Exception as e:  # noqa: BLE001 - flatbuffer/interpreter errors for a bad file
            raise PocketVisionError(f"{self.path}: LiteRT cannot load this model ({str(e).splitlines()[0]}).") from None
        self._read_meta(meta)
        self._in = self.interpreter.get_input_details()[0]
        # Outputs in the graph's order, named by the metadata. The converter names them ..._output_<i>_output (an int8
        # file adds "_dequant" to a dequantised one, whose signature entry still points at the int8 tensor), so the
        # number in the name orders them; without such names, the graph's own order stands.
        details = self.interpreter.get_output_details()
        nums = [re.search(r"output_(\d+)_output", d["name"]) for d in details]
        if len(details) > 1 and all(nums):
            details = [d for _, d in sorted(zip((int(m.group(1)) for m in nums), details), key=lambda t: t[0])]
        names = self.meta.get("outputs") or [self.plugin.outputs.names[0]]
        if not isinstance(names, list) or len(names) != len(details) or not all(isinstance(n, str) for n in names):
            raise PocketVisionError(f"{self.path}: metadata names {names!r} as outputs but the graph has "
                                    f"{len(details)}; not a file pocketvision wrote.")
        self._outs = dict(zip(names, details))
        self._out = details[0]
        self.input_size = tuple(int(d) for d in self._in["shape"][1:3])

    def run_outputs(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 NHWC -> every output the file carries, by name; the graph has batch 1, so images run one by one."""
        rows: dict[str, list] = {n: [] for n in self._outs}
        for x in np.ascontiguousarray(pixels, dtype=np.uint8):
            self.interpreter.set_tensor(self._in["index"], x[None])
            self.interpreter.invoke()
            for name, d in self._outs.items():
                y = self.interpreter.get_tensor(d["index"])
                scale, zero = d["quantization"]
                if scale:  # a full-integer graph's quantised output: dequantise (a uint8 image has no scale)
                    y = (y.astype(np.float32) - zero) * scale
                rows[name].append(y[0])
        return {n: np.stack(r) if r else np.zeros((0, *self._outs[n]["shape"][1:]), np.float32)
                for n, r in rows.items()}

    def run_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NHWC -> the graph's first output."""
        return next(iter(self.run_outputs(pixels).values()))
