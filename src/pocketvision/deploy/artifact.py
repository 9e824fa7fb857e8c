"""Open an exported model in its real runtime: the export target that made the file decides (torch-free)."""

from __future__ import annotations

from pathlib import Path

from ..export.base import is_exported, target_for_path  # importing export registers every target


def open_predictor(path: str | Path, threads: int | None = None, accelerator: str | None = None):
    """``.onnx`` (onnxruntime), ``.tflite`` (LiteRT interpreter), a web folder (the page in Chromium)... ->
    its predictor (``predict``, ``evaluate``, ``run_pixels``, ``meta``); Core ML says where it runs.
    ``accelerator``: an execution provider / delegate the format's target offers here (None: its default)."""
    return target_for_path(path).open(path, threads, accelerator)


def is_artifact(path: str | Path) -> bool:
    return is_exported(path)


Artifact = open_predictor  # the earlier name


def load_any(path: str | Path):
    """A bundle (torch), or an exported file opened in its real runtime (torch-free): both offer ``predict``,
    ``evaluate``, ``run_pixels``, ``meta`` and ``plugin``. Only a bundle imports torch."""
    if is_artifact(path):
        return open_predictor(path)
    from ..bundle import load
    return load(path)
