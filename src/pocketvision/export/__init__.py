"""Export targets: one module per format, imported lazily; requests are checked before any work.

FORMATS maps a target to its output suffix; PRECISIONS lists what each target can carry here.
"""

from ..errors import PocketVisionError, unknown_choice

FORMATS = {"onnx": ".onnx", "web": ".web", "tflite": ".tflite", "coreml": ".mlpackage"}
PRECISIONS = {"onnx": ("fp32", "int8"), "web": ("fp32", "int8"), "tflite": ("fp32", "int8", "fp16"),
              "coreml": ("fp32", "fp16", "int8")}


def check_request(to: str, precision: str = "fp32", bits: int | None = None) -> None:
    if to not in FORMATS:
        raise unknown_choice("format", to, FORMATS)
    if precision not in PRECISIONS[to]:
        raise PocketVisionError(f"{to} export does not support precision {precision!r}; "
                                f"choose from {', '.join(PRECISIONS[to])}.")
    if bits is not None and not 2 <= bits <= 8:
        raise PocketVisionError(f"bits must be between 2 and 8 (a palette of 2^bits values); got {bits}.")
    if bits and precision == "int8":
        raise PocketVisionError("choose one compression: --bits (palettised float weights) or --int8, not both.")
