"""The bundle: the one artifact every stage reads and writes (DESIGN.md section 1).

On disk a bundle is a zip (``hotdog.pvb``) or a folder holding ``bundle.json`` and
``weights.safetensors``. Weights are never pickled, so loading a stranger's bundle cannot run code;
``bundle.json`` records the SHA-256 of the weights so a tampered or truncated file is caught before
any tensor is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .contract import Contract
from .errors import BundleError

SCHEMA_VERSION = 1
FORMAT = "pocketvision-bundle"
META_NAME, WEIGHTS_NAME = "bundle.json", "weights.safetensors"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temp file beside ``path`` then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # mkstemp makes the file private (0600); the result is an ordinary file, readable as the umask allows
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("pocketvision", "torch", "onnx", "onnxruntime", "numpy", "pillow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


@dataclass
class BundleData:
    """What is inside a bundle, torch-free: metadata dict + raw safetensors bytes."""

    meta: dict[str, Any]
    weights: bytes = b""
    source: Path | None = None

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def contract(self) -> Contract:
        return Contract.from_dict(self.meta["contract"])


def new_meta(task: str, arch: dict[str, Any], labels: list[str], contract: Contract, **extra: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "schema": SCHEMA_VERSION,
        "task": task,
        "arch": arch,
        "labels": list(labels),
        "contract": contract.to_dict(),
        "threshold": None,
        "metrics": {},
        "train_config": {},
        "data": {},
        "lineage": [],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        **extra,
    }


def write(path: str | Path, meta: dict[str, Any], weights: bytes) -> Path:
    """Write a bundle (zip if the name has a suffix like ``.pvb``, else a folder), atomically."""
    path = Path(path)
    meta = dict(meta, weights_sha256=hashlib.sha256(weights).hexdigest(), schema=SCHEMA_VERSION, format=FORMAT)
    meta_bytes = json.dumps(meta, indent=2, sort_keys=False, default=_json_default).encode()
    if path.suffix:
        buf = io.BytesIO()
        # Stored, not deflated: safetensors is incompressible-ish and loading stays a memcpy.
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr(META_NAME, meta_bytes)
            z.writestr(WEIGHTS_NAME, weights)
        return atomic_write_bytes(path, buf.getvalue())
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path / WEIGHTS_NAME, weights)
    atomic_write_bytes(path / META_NAME, meta_bytes)
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, set | tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read(path: str | Path) -> BundleData:
    """Read and validate a bundle. Every failure is a one-line BundleError naming the file."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: bundle not found. Train one with `pocketvision train DATA --out {path.name}`.")
    try:
        if path.is_dir():
            meta_bytes = (path / META_NAME).read_bytes()
            weights = (path / WEIGHTS_NAME).read_bytes()
        else:
            with zipfile.ZipFile(path) as z:
                meta_bytes, weights = z.read(META_NAME), z.read(WEIGHTS_NAME)
    except FileNotFoundError as e:
        raise BundleError(f"{path}: not a complete bundle (missing {Path(e.filename).name}).") from None
    except KeyError as e:
        raise BundleError(f"{path}: not a complete bundle (missing {e.args[0]}).") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise BundleError(f"{path}: corrupt or truncated bundle ({e}). Re-export or re-download it.") from None
    try:
        meta = json.loads(meta_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: {META_NAME} is not valid JSON ({e}).") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{path}: not a pocketvision bundle (bundle.json has no format={FORMAT!r}).")
    schema = meta.get("schema")
    if not isinstance(schema, int):
        raise BundleError(f"{path}: bundle.json has no integer 'schema'.")
    if schema > SCHEMA_VERSION:
        raise BundleError(f"{path}: written by a newer pocketvision (bundle schema {schema}, this version reads "
                          f"<= {SCHEMA_VERSION}). Upgrade: pip install -U pocketvision")
    digest = hashlib.sha256(weights).hexdigest()
    if meta.get("weights_sha256") != digest:
        raise BundleError(f"{path}: weights do not match the checksum in bundle.json (tampered or truncated). "
                          "Re-export or re-download the bundle.")
    for key in ("task", "arch", "labels", "contract"):
        if key not in meta:
            raise BundleError(f"{path}: bundle.json is missing '{key}'.")
    try:
        Contract.from_dict(meta["contract"])
    except Exception as e:  # noqa: BLE001 - any contract problem is a bundle problem
        raise BundleError(f"{path}: invalid preprocessing contract in bundle.json ({e}).") from None
    return BundleData(meta=meta, weights=weights, source=path)
