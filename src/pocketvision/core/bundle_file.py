"""The bundle: the one artifact every stage reads and writes.

On disk a bundle is a zip (``hotdog.pvb``) or a folder holding ``bundle.json`` and
``weights.safetensors``. Weights are never pickled, so loading a stranger's bundle cannot run code;
``bundle.json`` records the SHA-256 of the weights so a tampered or truncated file is caught before
any tensor is used. A bundle from elsewhere is hostile until checked: each member's size is capped before
it is read (the way TUF caps metadata sizes), a zip may hold only the two members, and every parse error
is a one-line ``BundleError``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import platform
import stat
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .contract import Contract
from ..errors import BundleError

SCHEMA_VERSION = 1
FORMAT = "pocketvision-bundle"
META_NAME, WEIGHTS_NAME = "bundle.json", "weights.safetensors"
# Caps checked before a byte is read. A real bundle.json is 5-100 KB (training history included); weights of the
# models this tool makes are < 100 MB. A 1.5 GB bundle.json of spaces (a few MB zipped) used to cost 33 s and
# 4.8 GB of memory before failing.
MAX_META_BYTES = 8 * 2**20
MAX_WEIGHTS_BYTES = 2 * 2**30
MAX_LABELS = 10_000  # classes or points one model may name


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
    # a starter page (`pocketvision starter`) has no classes of its own: every class is taught on the device
    starter = isinstance(meta.get("teach"), dict) and meta["teach"].get("starter") is True
    if not all(isinstance(x, str) for x in meta.get("labels", [])) or not (meta.get("labels") or starter):
        raise BundleError(f"{where}: 'labels' should be a non-empty list of names.")
    if len(meta.get("labels", [])) > MAX_LABELS or any(len(x) > 200 for x in meta.get("labels", [])):
        raise BundleError(f"{where}: 'labels' holds {len(meta['labels']):,} names (at most {MAX_LABELS:,} of at most "
                          "200 characters); not a model pocketvision made.")
    if not all(isinstance(x, dict) for x in meta.get("lineage", [])):
        raise BundleError(f"{where}: 'lineage' should be a list of objects.")
    if "contract" in meta:
        try:
            Contract.from_dict(meta["contract"])
        except Exception as e:  # noqa: BLE001 - any contract problem is a metadata problem
            raise BundleError(f"{where}: invalid preprocessing contract ({str(e).splitlines()[0][:200]}).") from None


def parse_json(raw: bytes | str, where: str, error: type[Exception]) -> Any:
    """JSON from an untrusted source -> the value, or one ``error`` naming ``where`` (invalid text or encoding, or
    nesting so deep that the parser gives up: a RecursionError, raised quickly and with little memory; an integer
    of more digits than Python converts: a ValueError)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # ValueError covers JSONDecodeError and UnicodeDecodeError
        raise error(f"{where} is not valid JSON ({str(e)[:200]}).") from None


def _read_capped(f, cap: int, where: str) -> bytes:
    """At most ``cap`` bytes from ``f``, read in 1 MB pieces: a member or file that holds more than it declared
    (a zip directory that lies, a file that grows) is refused as soon as the count passes the cap."""
    out = bytearray()
    while chunk := f.read(min(1 << 20, cap + 1 - len(out))):
        out += chunk
        if len(out) > cap:
            raise BundleError(f"{where} holds more than the {cap:,} bytes it may; not a bundle pocketvision wrote.")
    return bytes(out)


class _Members:
    """The two members of a bundle, zip or folder, each read with a cap checked before a byte is inflated."""

    ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}

    def __init__(self, path: Path):
        self.path, self.zip = path, None
        if not path.is_dir():
            self.zip = zipfile.ZipFile(path)
            infos = self.zip.infolist()
            extra = sorted({i.filename for i in infos} - {META_NAME, WEIGHTS_NAME})
            if extra or len(infos) != len({i.filename for i in infos}):
                raise BundleError(f"{path}: unexpected member(s) {extra[:5] or 'repeated names'}; a bundle holds "
                                  f"only {META_NAME} and {WEIGHTS_NAME}.")
            for i in infos:  # other methods (LZMA, bzip2) inflate far more per read; pocketvision writes stored
                if i.compress_type not in self.ZIP_METHODS:
                    raise BundleError(f"{path}: {i.filename} uses zip compression method {i.compress_type}; a bundle "
                                      "is stored or deflated (re-zip it with `zip -r`, or re-export it).")

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def read(self, name: str, cap: int, too_big) -> bytes:
        where = f"{self.path}: {name}"
        if self.zip is not None:
            info = self.zip.getinfo(name)
            if info.file_size > cap:
                raise too_big(name, info.file_size, cap)
            # zipfile stops at the declared size and then checks the CRC; the capped reads bound what it inflates
            with self.zip.open(info) as f:
                return _read_capped(f, info.file_size, where)
        # Only a regular file inside the folder: a link (to /dev/zero, out of the folder) or a FIFO is refused
        # before a byte is read (O_NONBLOCK: opening a FIFO does not wait for a writer).
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(self.path / name, flags)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EMLINK):
                raise BundleError(f"{where} is a link; a bundle folder holds plain files. Copy the file in.") from None
            raise
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BundleError(f"{where} is not a regular file; a bundle folder holds plain files.")
            if st.st_size > cap:
                raise too_big(name, st.st_size, cap)
            return _read_capped(f, cap, where)


def read(path: str | Path, weights_cap: Callable[[dict[str, Any]], int] | None = None) -> BundleData:
    """Read and validate a bundle. Every failure is a one-line BundleError naming the file. ``weights_cap``:
    metadata -> the most bytes its weights may take (the architecture, sized without memory); checked before the
    weights are read."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: bundle not found. Train one with `pocketvision train DATA --out {path.name}`.")

    def too_big(name: str, size: int, cap: int) -> BundleError:
        return BundleError(f"{path}: {name} is {size:,} bytes, over this reader's cap of {cap:,}; not a bundle "
                           "pocketvision wrote (refused before reading it).")
    members = None
    try:
        members = _Members(path)
        meta = _meta(members.read(META_NAME, MAX_META_BYTES, too_big), path)
        cap = MAX_WEIGHTS_BYTES if weights_cap is None else min(MAX_WEIGHTS_BYTES, weights_cap(meta))
        weights = members.read(WEIGHTS_NAME, cap, too_big)
    except BundleError:
        raise
    except FileNotFoundError as e:
        raise BundleError(f"{path}: not a complete bundle (missing {Path(e.filename).name}).") from None
    except KeyError as e:
        raise BundleError(f"{path}: not a complete bundle (missing {e.args[0]}).") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError, ValueError,
            RuntimeError) as e:  # RuntimeError: an encrypted member; NotImplementedError: an unknown compression
        raise BundleError(f"{path}: corrupt or truncated bundle ({str(e)[:200]}). Re-export or re-download it.") from None
    finally:
        if members is not None:
            members.close()
    digest = hashlib.sha256(weights).hexdigest()
    if meta.get("weights_sha256") != digest:
        raise BundleError(f"{path}: weights do not match the checksum in bundle.json (tampered or truncated). "
                          "Re-export or re-download the bundle.")
    return BundleData(meta=meta, weights=weights, source=path)


def _meta(meta_bytes: bytes, path: Path) -> dict[str, Any]:
    """bundle.json's bytes -> its validated fields (before the weights are read)."""
    meta = parse_json(meta_bytes, f"{path}: {META_NAME}", BundleError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{path}: not a pocketvision bundle (bundle.json has no format={FORMAT!r}).")
    schema = meta.get("schema")
    if not isinstance(schema, int):
        raise BundleError(f"{path}: bundle.json has no integer 'schema'.")
    if schema > SCHEMA_VERSION:
        raise BundleError(f"{path}: written by a newer pocketvision (bundle schema {schema}, this version reads "
                          f"<= {SCHEMA_VERSION}). Upgrade: pip install -U pocketvision")
    for key in ("task", "arch", "labels", "contract"):
        if key not in meta:
            raise BundleError(f"{path}: bundle.json is missing '{key}'.")
    check_fields(meta, f"{path}: bundle.json")
    return meta
