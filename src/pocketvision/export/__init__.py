"""Export targets: format -> file suffix (one module per format, imported lazily)."""

FORMATS = {"onnx": ".onnx"}
