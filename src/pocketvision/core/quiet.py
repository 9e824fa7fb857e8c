"""Keep third-party chatter (converters, quantizers, runtimes) off the user's terminal.

Users get our one-line summaries; real failures still arrive as exceptions. numpy/stdlib only, so the
torch-free runtime path can use it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def silence_fd2() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null: C++ logs (absl, LiteRT's "Created TensorFlow Lite XNNPACK
    delegate") bypass Python's sys.stderr."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def quiet(fd2: bool = False) -> Iterator[None]:
    """Silence Python logging below ERROR, warnings, stdout and stderr (and fd 2 with ``fd2``)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    with contextlib.ExitStack() as stack:
        if fd2:
            stack.enter_context(silence_fd2())
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        try:
            yield
        finally:
            root.setLevel(level)
