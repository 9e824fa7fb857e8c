"""The target protocol and its registry: one module per export format behind the same four verbs.

    check(task, precision, bits, qat_steps)  refuse a request before any work starts
    export(job)                              write ``job.out`` (a staging path beside the final one)
    open(path, threads)                      a predictor for the file, in the target's real runtime
    inspect(path, meta)                      a structural report where the runtime cannot run here, else None

Targets register with ``@register_target``; nothing outside ``export/`` knows a file suffix. Every export goes
through :func:`staged`: the parent folder is created, the target writes a temporary file or folder beside the
destination, and only a complete result is renamed into place (nothing half-written, whatever the format).

torch-free at import: target modules import their converters inside ``export``.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import PocketVisionError, did_you_mean
from ..runtime.predictor import META_PREFIX  # noqa: F401  (re-exported: the targets write what predictors read)

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ..core.contract import Contract
    from ..tasks.base import HeldOut, Task

PRECISIONS_ALL = ("fp32", "int8", "fp16")


@dataclass
class ExportJob:
    """Everything a target needs; the same for every target."""

    model: nn.Module  # the (possibly palettised) float model
    task: Task
    contract: Contract
    meta: dict[str, Any]  # what the file carries in its metadata
    out: Path  # staging path to write (file or folder, per the target)
    tmp: Path  # scratch folder, removed afterwards
    precision: str = "fp32"
    palettised_bits: int | None = None
    opset: int | None = None
    max_drop: float = 1.0
    qat_steps: int = 0
    calibration: Callable[[int], np.ndarray] = lambda limit: np.zeros((0, 1, 1, 3), np.uint8)  # up to N training images
    held_out: Callable[[], HeldOut] | None = None  # held-out images, lazily (int8 budgets)
    teachable: bool = False  # the graph also outputs the embedding (``Task.graph_model``)
    log: Callable[[str], None] = lambda s: None
    report: dict[str, Any] = field(default_factory=dict)  # compression reports a target adds


class Target:
    name: ClassVar[str]
    suffix: ClassVar[str]  # file suffix, or a folder suffix for folder formats (".web", ".mlpackage")
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    install: ClassVar[str] = ""  # the pip command when its converter is missing
    converters: ClassVar[tuple[str, ...]] = ()  # the modules its export needs (looked up, not imported, by check)
    # One file that a predictor on this machine runs with a thread count: what `search` and `bench` can time.
    timed: ClassVar[bool] = False
    # The runtime that runs the file: a device profile made for that runtime predicts its latency (`bench --pick`).
    runtime: ClassVar[str] = ""
    description: ClassVar[str] = ""
    teachable: ClassVar[bool] = False  # its files can carry the embedding output and a device's runtime reads it

    def check(self, task: Task | None, precision: str = "fp32", bits: int | None = None, qat_steps: int = 0,
              teachable: bool = False) -> None:
        """Refuse a request this target (and, with ``task``, that task's models) cannot do."""
        missing_tools = [m for m in self.converters if importlib.util.find_spec(m) is None]
        if missing_tools:
            raise PocketVisionError(f"the {self.name} target needs {', '.join(missing_tools)}, not installed here: "
                                    f"{self.install}")
        if precision not in self.precisions:
            raise PocketVisionError(f"{self.name} export does not support precision {precision!r}; "
                                    f"choose from {', '.join(self.precisions)}.")
        if bits is not None and not 2 <= bits <= 8:
            raise PocketVisionError(f"bits must be between 2 and 8 (a palette of 2^bits values); got {bits}.")
        if bits and precision == "int8":
            raise PocketVisionError("choose one compression: --bits (palettised float weights) or --int8, not both.")
        if qat_steps and precision != "int8":
            raise PocketVisionError("--qat-steps fine-tunes for int8: use it with --int8.")
        if teachable and not self.teachable:
            raise PocketVisionError(f"--teachable: {self.name} files carry one output here; export teachable models "
                                    f"to {', '.join(sorted(t for t in _TARGETS if _TARGETS[t].teachable))}.")
        if teachable and task is not None and not task.teachable:
            raise PocketVisionError(f"--teachable: {task.name} models have no embedding a device learns classes on "
                                    "(classifiers do).")
        if task is None:
            return
        wanted = [w for w, on in (("palettize", bits), ("qat", qat_steps),
                                  (precision, precision != "fp32")) if on]
        missing = [w for w in wanted if w not in task.compressions]
        if missing:
            flags = {"palettize": "--bits", "qat": "--qat-steps", "int8": "--int8", "fp16": "--fp16"}
            raise PocketVisionError(f"{', '.join(flags.get(m, m) for m in missing)}: not available for {task.name} "
                                    f"models (they support: {', '.join(sorted(task.compressions)) or 'none'}).")

    def export(self, job: ExportJob) -> None:
        raise NotImplementedError

    def open(self, path: str | Path, threads: int | None = None, accelerator: str | None = None):
        """A predictor in the real runtime; ``accelerator``: one of :meth:`accelerators` (None: the first)."""
        raise NotImplementedError

    def accelerators(self) -> tuple[str, ...]:
        """How this machine can run the format (execution providers, delegates), the default first; () where it
        cannot run here."""
        return ()

    def _default_only(self, accelerator: str | None) -> None:
        if accelerator not in (None, *self.accelerators()[:1]):
            raise PocketVisionError(f"{self.name}: no accelerator {accelerator!r} here (only "
                                    f"{', '.join(self.accelerators()) or 'none'}).")

    def inspect(self, path: str | Path, meta: dict[str, Any], task: Task) -> dict[str, Any] | None:
        """None: verify numerically through ``open``. A dict: the structural check done instead."""
        return None

    def owns(self, path: Path) -> bool:
        return path.suffix == self.suffix


_TARGETS: dict[str, Target] = {}


def register_target(cls: type[Target]) -> type[Target]:
    if cls.name in _TARGETS:
        raise ValueError(f"target {cls.name!r} is registered twice")
    _TARGETS[cls.name] = cls()
    return cls


def target_names() -> tuple[str, ...]:
    return tuple(_TARGETS)


def get_target(name: str) -> Target:
    if name not in _TARGETS:  # each with where it runs: "tfjs" means the browser, which is `web` here
        known = "; ".join(f"{n}: {t.runtime}" for n, t in _TARGETS.items())
        raise PocketVisionError(f"export target (--to) {name!r} is not one of: {known}.{did_you_mean(name, _TARGETS)}")
    return _TARGETS[name]


def target_for_path(path: str | Path) -> Target:
    """The target that made ``path``, or a one-line error."""
    p = Path(path)
    for t in _TARGETS.values():
        if t.owns(p):
            return t
    if not p.exists():
        raise PocketVisionError(f"{p}: no such file or folder.")
    suffixes = ", ".join(t.suffix for t in _TARGETS.values())
    raise PocketVisionError(f"{p}: not an exported model pocketvision can run ({suffixes}).")


def is_exported(path: str | Path) -> bool:
    p = Path(path)
    return any(t.owns(p) for t in _TARGETS.values())


def variant_suffix(precision: str, bits: int | None) -> str:
    return ("" if precision == "fp32" else f"-{precision}") + (f"-{bits}bit" if bits else "")


def _clean_stale(out: Path) -> None:
    """Remove the staging folders of exports to ``out`` that were killed: their process is gone (a live one's
    pid file names it; a folder without one is an old version's, removed after an hour)."""
    for d in out.parent.glob(f".{glob.escape(out.name)}.*"):
        if not d.is_dir() or d.is_symlink():
            continue
        try:
            pid = int((d / "pid").read_text())
            os.kill(pid, 0)
            continue  # still exporting
        except ProcessLookupError:
            pass
        except (OSError, ValueError):  # no pid file (or unreadable): only if nobody touched it for an hour
            try:
                if time.time() - d.stat().st_mtime < 3600:
                    continue
            except OSError:
                continue
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def staged(out: Path) -> Iterator[tuple[Path, Path]]:
    """-> (staging path, scratch folder), beside ``out`` (its folder is created). ``publish(stage, out)`` puts the
    staged file or folder in place: whatever the caller does before that (verifying it) happens before ``out``
    exists. Nothing of the staging remains after the context, and a killed export's is removed by the next one."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    (work / "pid").write_text(str(os.getpid()))
    scratch = work / "scratch"
    scratch.mkdir()
    stage = work / out.name
    try:
        yield stage, scratch
    finally:
        shutil.rmtree(work, ignore_errors=True)


def publish(stage: Path, out: Path) -> Path:
    """Move a staged export to ``out`` (replacing a file, or a folder moved aside first)."""
    if not stage.exists():
        raise RuntimeError(f"exporter wrote nothing to {stage}")
    if out.is_dir() and not out.is_symlink():
        old = stage.parent / "old"
        out.rename(old)
    stage.replace(out) if stage.is_file() else stage.rename(out)
    return out


def model_files(path: Path) -> list[Path]:
    """The files that make up the model itself (a web folder's runtime is not the model)."""
    import json
    if path.is_dir() and (path / "model.json").exists():
        meta = json.loads((path / "model.json").read_text())
        return [path / meta["model"]["path"]] + [path / c["path"] for c in meta["model"]["external_data"]]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def folder_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
