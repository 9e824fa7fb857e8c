"""The command line: a thin layer that parses arguments and calls the Python API (``main`` is the entry point)."""

from .commands import main

__all__ = ["main"]
