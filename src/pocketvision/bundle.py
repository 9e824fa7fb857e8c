"""The bundle: the one artifact every stage reads and writes (DESIGN.md section 1).

On disk a bundle is a zip (``hotdog.pvb``) or a folder holding ``bundle.json`` and
``weights.safetensors``. Weights are never pickled, so loading a stranger's bundle cannot run code;
``bundle.json`` records the SHA-256 of the weights so a tampered or truncated file is caught before
any tensor is used. A bundle from elsewhere is hostile until checked: each member's size is capped before
it is read (the way TUF caps metadata sizes), a zip may hold only the two members, and every parse error
is a one-line ``BundleError``.
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
# Caps checked before a byte is read. A real bundle.json is 5-100 KB (training history included); weights of the
# models this tool makes are < 100 MB. A 1.5 GB bundle.json of spaces (a few MB zipped) used to cost 33 s and
# 4.8 GB of memory before failing.
MAX_META_BYTES = 8 * 2**20
MAX_WEIGHTS_BYTES = 2 * 2**30


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MB pieces (memory stays flat for any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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


# The type of every field code reads without looking first (bundle.json comes from elsewhere).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "task": (str,), "arch": (dict,), "labels": (list,), "contract": (dict,), "threshold": (dict, type(None)),
    "metrics": (dict,), "train_config": (dict,), "data": (dict,), "lineage": (list,), "history": (list, dict),
    "recipe": (dict, type(None)),
}


def check_fields(meta: dict[str, Any], where: str) -> None:
    """One-line error for metadata (a bundle.json, or an exported file's) whose fields have the wrong types (a list
    where a name belongs...) or whose preprocessing contract is invalid."""
    for key, types in _FIELD_TYPES.items():
        if key in meta and not isinstance(meta[key], types):
            raise BundleError(f"{where}: '{key}' should be {' or '.join(t.__name__ for t in types)}, "
                              f"not {type(meta[key]).__name__}.")
    arch = meta.get("arch")
    if arch is not None and (not isinstance(arch.get("name"), str) or not isinstance(arch.get("args", {}), dict)):
        raise BundleError(f"{where}: 'arch' needs a 'name' (text) and 'args' (an object).")
    if not all(isinstance(x, str) for x in meta.get("labels", [])) or not meta.get("labels"):
        raise BundleError(f"{where}: 'labels' should be a non-empty list of names.")
    if not all(isinstance(x, dict) for x in meta.get("lineage", [])):
        raise BundleError(f"{where}: 'lineage' should be a list of objects.")
    if "contract" in meta:
        try:
            Contract.from_dict(meta["contract"])
        except Exception as e:  # noqa: BLE001 - any contract problem is a metadata problem
            raise BundleError(f"{where}: invalid preprocessing contract ({str(e).splitlines()[0][:200]}).") from None


def parse_json(raw: bytes | str, where: str, error: type[Exception]) -> Any:
    """JSON from an untrusted source -> the value, or one ``error`` naming ``where`` (invalid text or encoding, or
    nesting so deep that the parser gives up: a RecursionError, raised quickly and with little memory)."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise error(f"{where} is not valid JSON ({str(e)[:200]}).") from None


def read(path: str | Path) -> BundleData:
    """Read and validate a bundle. Every failure is a one-line BundleError naming the file."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: bundle not found. Train one with `pocketvision train DATA --out {path.name}`.")
    caps = {META_NAME: MAX_META_BYTES, WEIGHTS_NAME: MAX_WEIGHTS_BYTES}

    def too_big(name: str, size: int) -> BundleError:
        return BundleError(f"{path}: {name} is {size:,} bytes, over this reader's cap of {caps[name]:,}; not a bundle "
                           "pocketvision wrote (refused before reading it).")
    try:
        if path.is_dir():
            for name in caps:
                size = (path / name).stat().st_size
                if size > caps[name]:
                    raise too_big(name, size)
            meta_bytes = (path / META_NAME).read_bytes()
            weights = (path / WEIGHTS_NAME).read_bytes()
        else:
            with zipfile.ZipFile(path) as z:
                infos = z.infolist()
                extra = sorted({i.filename for i in infos} - set(caps))
                if extra or len(infos) != len({i.filename for i in infos}):
                    raise BundleError(f"{path}: unexpected member(s) {extra[:5] or 'repeated names'}; a bundle holds "
                                      f"only {META_NAME} and {WEIGHTS_NAME}.")
                for i in infos:
                    if i.file_size > caps[i.filename]:
                        raise too_big(i.filename, i.file_size)
                # zipfile stops decompressing at the declared size, so the caps hold even if the sizes lie
                meta_bytes, weights = z.read(META_NAME), z.read(WEIGHTS_NAME)
    except BundleError:
        raise
    except FileNotFoundError as e:
        raise BundleError(f"{path}: not a complete bundle (missing {Path(e.filename).name}).") from None
    except KeyError as e:
        raise BundleError(f"{path}: not a complete bundle (missing {e.args[0]}).") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError, ValueError,
            RuntimeError) as e:  # RuntimeError: an encrypted member; NotImplementedError: an unknown compression
        raise BundleError(f"{path}: corrupt or truncated bundle ({str(e)[:200]}). Re-export or re-download it.") from None
    meta = parse_json(meta_bytes, f"{path}: {META_NAME}", BundleError)
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
    check_fields(meta, f"{path}: bundle.json")
    return BundleData(meta=meta, weights=weights, source=path)
