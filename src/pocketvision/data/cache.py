"""`pocketvision cache DATA --size 256`: decode every image once and keep its pixels for every later run.

A JPEG from a phone costs tens of milliseconds to decode; a 2-core machine spends more time on that than on a
small model's training step. The cache decodes each image once (reduced-scale JPEG decoding, then a resize so
the short side is ``size``) and stores the uint8 pixels, or (``--format jpeg``) the resized image re-encoded as a
JPEG, ~10x smaller, for data sets whose pixels would not fit in RAM or the page cache:

    <cache-dir>/<hash of DATA's path>-<size>/
        index.json          {"format", "source", "size", "encoding", "quality", "entries": {relative path: entry}}
        shard-000.npy ...   flat uint8 arrays in NumPy's .npy format (memory-mapped when read, ~256 MB each)

An entry is ``{bytes, mtime_ns, sha256, shard, offset, h, w}`` (+ ``n``, the JPEG's length). A source file whose
size and mtime are unchanged is trusted; a changed one is hashed, and only different content is decoded again (into
a new shard). New shards and the index are written to temporary names and renamed, index last: a build that is
killed leaves the previous cache whole. Training and ``check`` use a cache when one exists for DATA (default
location: the user cache, or ``--cache-dir`` / ``POCKETVISION_CACHE_DIR`` for a shared one); files changed since
it was built are decoded from the source again, never served stale.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.bundle_file import sha256_file
from ..core.contract import is_image_file, load_rgb
from ..errors import ImageDecodeError, PocketVisionError

FORMAT = "pocketvision-pixel-cache/1"
SHARD_BYTES = 256 << 20
ENCODINGS = ("pixels", "jpeg")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir or os.environ.get("POCKETVISION_CACHE_DIR"):
        return Path(cache_dir or os.environ["POCKETVISION_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pocketvision" / "datasets"


def _source_key(data: Path) -> str:
    return hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:16]


def decode_at(path: Path, side: int) -> np.ndarray:
    """Upright RGB with its short side at most ``side`` (JPEGs decode at 1/2..1/8 scale when that suffices)."""
    img = load_rgb(path, min_size=(side, side))
    s = min(img.size)
    if s > side:
        img = img.resize((max(1, round(img.width * side / s)), max(1, round(img.height * side / s))),
                         Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def encode_jpeg(a: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    # 4:4:4: halving the colour resolution (JPEG's default) costs 1.5 more levels of mean error at 128 px
    Image.fromarray(a).save(buf, "JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def upright_size(path: Path) -> tuple[int, int]:
    """(w, h) of the image as ``load_rgb`` turns it upright (EXIF orientations 5-8 swap the sides), from the header."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            return (h, w) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(f"{path}: not a readable image ({e}). Remove or replace the file.") from None


@dataclass
class Stale:
    changed: list[str]  # content differs from when it was cached
    missing: list[str]  # cached, but the file is gone


class PixelCache:
    def __init__(self, folder: Path, index: dict[str, Any]):
        self.folder, self.index = folder, index
        self.source, self.size = Path(index["source"]), int(index["size"])
        # Indexes written before JPEG storage existed hold raw pixels.
        self.encoding, self.quality = index.get("encoding", "pixels"), index.get("quality")
        self.entries: dict[str, dict[str, Any]] = index["entries"]
        self._shards: dict[int, np.ndarray] = {}
        self._rel: dict[Any, str] = {}
        self._unusable: set[str] = set()  # changed or missing since the build (``check``)
        self.stale: Stale | None = None

    # -- opening -------------------------------------------------------------------------------------------
    @staticmethod
    def folder_for(data: Path, size: int, cache_dir=None) -> Path:
        return cache_root(cache_dir) / f"{_source_key(data)}-{size}"

    @classmethod
    def read(cls, folder: Path, data: Path | None = None, size: int | None = None) -> PixelCache:
        """The cache in ``folder``; a one-line error when it is unreadable or made from another source/size."""
        try:
            index = json.loads((folder / "index.json").read_text())
            ok = index.get("format") == FORMAT and isinstance(index.get("entries"), dict)
        except (OSError, ValueError) as e:
            raise PocketVisionError(f"{folder}: not a readable pixel cache ({e}); delete it or run "
                                    "`pocketvision cache` again.") from None
        if not ok:
            raise PocketVisionError(f"{folder}/index.json: not a {FORMAT} index; run `pocketvision cache` again.")
        c = cls(folder, index)
        if data is not None and c.source != data.resolve():
            raise PocketVisionError(f"{folder}: a cache of {c.source}, not of {data.resolve()}; give another "
                                    "--cache-dir or delete it.")
        if size is not None and c.size != size:
            raise PocketVisionError(f"{folder}: cached at {c.size} px, not {size}.")
        return c

    @classmethod
    def find(cls, data: str | os.PathLike, min_side: int, cache_dir=None) -> PixelCache | None:
        """The smallest cache of ``data`` whose short side is at least ``min_side`` (None: no such cache), with
        the files changed since it was built found (size + mtime, then content)."""
        data = Path(data)
        root = cache_root(cache_dir)
        prefix = f"{_source_key(data)}-"
        sizes = sorted(int(p.name[len(prefix):]) for p in root.glob(prefix + "*")
                       if p.name[len(prefix):].isdigit() and (p / "index.json").is_file()) if root.is_dir() else []
        for size in sizes:
            if size >= min_side:
                c = cls.read(root / f"{prefix}{size}", data, size)
                c.check()
                return c
        return None

    def check(self) -> Stale:
        """Compare each entry with its source file now: unchanged size+mtime is trusted, else the hash decides."""
        changed, missing = [], []
        for rel, e in self.entries.items():
            p = self.source / rel
            try:
                st = p.stat()
            except OSError:
                missing.append(rel)
                continue
            if (st.st_size, st.st_mtime_ns) != (e["bytes"], e["mtime_ns"]) and sha256_file(p) != e["sha256"]:
                changed.append(rel)
        self.stale = Stale(changed, missing)
        self._unusable = set(changed) | set(missing)  # looked up once per image per epoch: a set, not the lists
        return self.stale

    def __getstate__(self) -> dict[str, Any]:
        # Sent to DataLoader workers that are spawned (macOS, Windows): a memory map would be pickled as a copy of
        # its whole shard; each worker maps the shards again itself.
        return {**self.__dict__, "_shards": {}}

    # -- reading -------------------------------------------------------------------------------------------
    def _shard(self, n: int) -> np.ndarray:
        if n not in self._shards:
            self._shards[n] = np.load(self.folder / f"shard-{n:03d}.npy", mmap_mode="r")
        return self._shards[n]

    def _relative(self, path) -> str | None:
        rel = self._rel.get(path)
        if rel is None:  # resolving walks the path's folders: once per file, not once per epoch
            try:
                rel = self._rel[path] = Path(path).resolve().relative_to(self.source).as_posix()
            except ValueError:  # outside the cached folder (an annotation file may name any path)
                return None
        return rel

    def get(self, path: str | os.PathLike) -> np.ndarray | None:
        """The cached pixels of ``path`` (HWC uint8; a read-only view of raw pixels), or None when not cached or
        changed."""
        rel = self._relative(path)
        e = self.entries.get(rel) if rel is not None else None
        if e is None or rel in self._unusable:
            return None
        if self.encoding == "jpeg":
            return self._decode(rel, e, None)
        n = e["h"] * e["w"] * 3
        return self._shard(e["shard"])[e["offset"]:e["offset"] + n].reshape(e["h"], e["w"], 3)

    def _decode(self, rel: str, e: dict[str, Any], side: int | None) -> np.ndarray:
        data = self._shard(e["shard"])[e["offset"]:e["offset"] + e["n"]].tobytes()
        try:  # ``side``: libjpeg decodes at 1/2..1/8 scale when the model needs that little
            img = load_rgb(data, min_size=(side, side) if side else None)
        except ImageDecodeError:
            raise PocketVisionError(f"{self.folder}: the cached JPEG of {rel} is damaged; run `pocketvision cache "
                                    f"{self.source}` again.") from None
        return np.asarray(img, dtype=np.uint8)

    def source_pixels(self, path, side: int) -> np.ndarray | None:
        """Pixels with the short side at most ``side`` (what augmentation starts from), from the cache."""
        rel = self._relative(path)
        e = self.entries.get(rel) if rel is not None else None
        if e is None or rel in self._unusable:
            return None
        a = self._decode(rel, e, side) if self.encoding == "jpeg" else self.get(path)
        h, w = a.shape[:2]
        if min(h, w) <= side:
            return np.array(a)
        s = side / min(h, w)
        img = Image.fromarray(np.asarray(a)).resize((max(1, round(w * s)), max(1, round(h * s))),
                                                    Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)

    def describe(self) -> str:
        st = self.stale or Stale([], [])
        extra = f"; {len(st.changed)} changed and {len(st.missing)} missing since (decoded from the source)" \
            if st.changed or st.missing else ""
        how = f" as JPEG q{self.quality}" if self.encoding == "jpeg" else ""
        return f"pixel cache {self.folder} ({len(self.entries)} images at {self.size} px{how}{extra})"


def _checked(data: Path, size: int, encoding: str, quality: int | None) -> int | None:
    """The arguments of ``build``, checked -> the JPEG quality to store at (None for raw pixels)."""
    if not data.is_dir():
        raise PocketVisionError(f"{data}: not a folder of images.")
    if not 16 <= size <= 4096:
        raise PocketVisionError(f"--size {size}: between 16 and 4096 pixels (the short side kept).")
    if encoding not in ENCODINGS:
        raise PocketVisionError(f"--format {encoding}: one of {', '.join(ENCODINGS)}.")
    if encoding == "pixels" and quality is not None:
        raise PocketVisionError("--quality is the JPEG quality of --format jpeg; raw pixels have none.")
    quality = (90 if quality is None else quality) if encoding == "jpeg" else None
    if quality is not None and not 50 <= quality <= 100:
        raise PocketVisionError(f"--quality {quality}: between 50 and 100 (lower smears the details a model "
                                "learns from).")
    return quality


def _previous(folder: Path, data: Path, size: int, encoding: str, quality: int | None,
              log: Callable[[str], None]) -> PixelCache | None:
    """The cache already in ``folder`` when it can be brought up to date (same storage), else None."""
    if not (folder / "index.json").exists():
        return None
    old: PixelCache | None = None
    try:
        old = PixelCache.read(folder, data, size)
    except PocketVisionError as e:
        log(f"rebuilding: {e}")
    if old is not None and (old.encoding, old.quality) != (encoding, quality):
        log(f"rebuilding: stored as {_storage(old.encoding, old.quality)}, now {_storage(encoding, quality)}")
        old = None
    return old


def _to_decode(files: list[Path], data: Path, old: PixelCache | None, entries: dict[str, dict[str, Any]]
               ) -> list[tuple[str, Path, os.stat_result, str | None]]:
    """The images to decode; the unchanged ones go straight to ``entries`` (same size and time, or same bytes)."""
    todo: list[tuple[str, Path, os.stat_result, str | None]] = []
    for p in files:
        rel, st = p.relative_to(data).as_posix(), p.stat()
        e = old.entries.get(rel) if old else None
        if e is not None and (st.st_size, st.st_mtime_ns) == (e["bytes"], e["mtime_ns"]):
            entries[rel] = e
            continue
        digest = sha256_file(p) if e is not None else None
        if e is not None and digest == e["sha256"]:  # touched, same bytes: keep the pixels, note the new stat
            entries[rel] = {**e, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
            continue
        todo.append((rel, p, st, digest))
    return todo


def _write_index(folder: Path, index: dict[str, Any]) -> set[int]:
    """The new index in place (written aside, then renamed), then the shards it no longer uses removed -> the
    shards it uses."""
    used = {e["shard"] for e in index["entries"].values()}
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".index-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(index, f)
    os.replace(tmp, folder / "index.json")
    for p in folder.glob("shard-*.npy"):
        if int(p.stem.split("-")[1]) not in used:
            p.unlink()
    return used


def _decoded(item: tuple[str, Path, os.stat_result, str | None], size: int, encoding: str, quality: int | None):
    """One image at short side ``size`` -> (name, pixels or (JPEG, h, w), stat, sha256, problem or None)."""
    rel, p, st, digest = item
    try:
        a = decode_at(p, size)
    except ImageDecodeError as e:
        return rel, None, st, None, str(e)
    if encoding == "jpeg":  # kept as (bytes, h, w): the shard stores the JPEG, the entry the decoded size
        a = (np.frombuffer(encode_jpeg(a, quality), np.uint8), a.shape[0], a.shape[1])
    return rel, a, st, digest or sha256_file(p), None


def build(data: str | os.PathLike, size: int = 256, cache_dir=None, threads: int = 0,
          log: Callable[[str], None] = lambda s: None, encoding: str = "pixels",
          quality: int | None = None) -> tuple[PixelCache, dict[str, Any]]:
    """Create or bring up to date the cache of every image under ``data`` at short side ``size``, stored as raw
    pixels or (``encoding="jpeg"``) re-encoded at ``quality`` (default 90)."""
    data = Path(data)
    quality = _checked(data, size, encoding, quality)
    t0 = time.perf_counter()
    folder = PixelCache.folder_for(data, size, cache_dir)
    old = _previous(folder, data, size, encoding, quality, log)
    files = sorted(p for p in data.rglob("*") if p.is_file() and is_image_file(p)
                   and not any(part.startswith(".") for part in p.relative_to(data).parts))
    if not files:
        raise PocketVisionError(f"{data}: no images (.jpg, .png, .webp ...) under it.")
    entries: dict[str, dict[str, Any]] = {}
    todo = _to_decode(files, data, old, entries)
    reused = len(entries)

    # New shards take numbers no shard on disk has: a rebuild (other format, damaged index) must not overwrite a
    # shard the previous index still points at before the new index is in place.
    first = max((int(p.stem.split("-")[1]) for p in folder.glob("shard-*.npy")), default=-1) + 1
    shard_no, problems, written = first, [], []
    folder.mkdir(parents=True, exist_ok=True)
    pending: list[tuple[str, np.ndarray, os.stat_result, str]] = []

    def flush() -> None:
        nonlocal shard_no, pending
        if not pending:
            return
        total = sum(_flat(a).size for _, a, _, _ in pending)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".shard-", suffix=".npy")
        os.close(fd)
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(total,))
        off = 0
        for rel, a, st, digest in pending:
            flat = _flat(a)
            arr[off:off + flat.size] = flat
            h, w = (a[1], a[2]) if isinstance(a, tuple) else a.shape[:2]
            entries[rel] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest, "shard": shard_no,
                            "offset": off, "h": int(h), "w": int(w), **({"n": flat.size} if encoding == "jpeg" else {})}
            off += flat.size
        arr.flush()
        del arr
        os.replace(tmp, folder / f"shard-{shard_no:03d}.npy")
        written.append(shard_no)
        shard_no += 1
        pending = []

    with ThreadPoolExecutor(max_workers=threads or (os.cpu_count() or 1)) as ex:
        size_now = 0
        one = functools.partial(_decoded, size=size, encoding=encoding, quality=quality)
        for k, (rel, a, st, digest, problem) in enumerate(ex.map(one, todo), 1):
            if problem:
                problems.append(problem)
                continue
            pending.append((rel, a, st, digest))
            size_now += _flat(a).size
            if size_now >= SHARD_BYTES:
                flush()
                size_now = 0
            if k % 500 == 0:
                log(f"decoded {k}/{len(todo)}")
        flush()
    # Shards no entry points at any more (every image in them changed or went away) are removed after the new
    # index is in place.
    index = {"format": FORMAT, "source": str(data.resolve()), "size": size, "encoding": encoding,
             "quality": quality, "entries": entries}
    used = _write_index(folder, index)
    nbytes = sum(p.stat().st_size for p in folder.glob("shard-*.npy"))
    stats = {"folder": str(folder), "images": len(entries), "decoded": len(todo) - len(problems),
             "reused": reused, "unreadable": problems,
             "removed": len(set(old.entries) - {p.relative_to(data).as_posix() for p in files}) if old else 0,
             "shards": len(used), "stored_as": _storage(encoding, quality),
             "megabytes": round(nbytes / 2**20, 1), "seconds": round(time.perf_counter() - t0, 2)}
    return PixelCache(folder, index), stats


def _flat(a) -> np.ndarray:
    return a[0] if isinstance(a, tuple) else a.reshape(-1)


def _storage(encoding: str, quality: int | None) -> str:
    return f"JPEG q{quality}" if encoding == "jpeg" else "raw pixels"


__all__ = ["PixelCache", "build", "cache_root", "decode_at", "encode_jpeg", "upright_size"]
