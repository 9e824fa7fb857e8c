"""Predictors of exported files: numpy and a runtime (onnxruntime, LiteRT, a browser), never torch."""
