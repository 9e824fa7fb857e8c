"""WebDataset shards: a data set as a few large tar files, for data sets larger than RAM and for object storage.

`pocketvision shards DATA --out SHARDS/` writes every image of DATA, resized so its short side is ``--size`` and
re-encoded as JPEG, into standard WebDataset tar shards (written with ``webdataset.TarWriter``, so any WebDataset,
wids or LitData reader can read them too): one sample is ``<key>.jpg`` plus ``<key>.json`` (its annotation, in the
task's words: a class name, points in the stored pixels...), and ``shards.json`` describes the set:

    {"format": "pocketvision-webdataset/1", "task", "meta": {task's own: classes, point names...}, "size", "quality",
     "splits": {"train": [{"url": "train-000000.tar", "nsamples", "bytes", "sha256"}, ...], "val": [...]}}

Training reads shards in place, by index: each tar's member offsets are read once from its headers (what wids
does), and a sample is one seek and one read, so random order per epoch costs no more than a folder of files. A
sample's path is ``SHARDS/train-000000.tar/<key>.jpg``: every reader that opens images by path goes through
``core.tar_members`` when a path crosses a tar file, so the rest of the pipeline (augmentation, reports, held-out
scores, calibration) treats shards like a folder.

`pocketvision fetch-shards URL --out DIR` copies a set from object storage or any HTTP server (``URL`` is the
``shards.json``; shard URLs are relative to it), checks each shard's SHA-256, keeps what is already there and
complete, and writes to temporary names first, so an interrupted fetch resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..core.tar_members import _INDEX, _index
from ..errors import ImageDecodeError, PocketVisionError

FORMAT = "pocketvision-webdataset/1"
DESCRIPTOR = "shards.json"


def is_shard_set(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / DESCRIPTOR).is_file()


def read_descriptor(folder: str | os.PathLike, where: str | None = None) -> dict[str, Any]:
    """``folder``'s shards.json (or ``folder`` itself when it is the file), checked; ``where`` names it in errors."""
    p = Path(folder)
    p = p / DESCRIPTOR if p.is_dir() else p
    where = where or str(p)
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise PocketVisionError(f"{where}: not a readable shard descriptor ({e}); write or fetch the shards "
                                "again.") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("splits"), dict):
        raise PocketVisionError(f"{where}: not a {FORMAT} descriptor; write it with `pocketvision shards`.")
    return d


def shard_task(data: str | os.PathLike) -> str | None:
    """The task a shard set was written for (None: ``data`` is not a shard set)."""
    return read_descriptor(data)["task"] if is_shard_set(data) else None


def samples(folder: str | os.PathLike, split: str) -> list[tuple[Path, dict[str, Any]]]:
    """(image path through its shard, annotation) of every sample of ``split``, in shard order."""
    folder = Path(folder)
    d = read_descriptor(folder)
    out = []
    for shard in d["splits"].get(split, []):
        tar = folder / shard["url"]
        if not tar.is_file():
            raise PocketVisionError(f"{tar}: a shard of {folder / DESCRIPTOR} is missing; fetch or write the set "
                                    "again.")
        index = _index(tar)
        with open(tar, "rb") as f:
            for name, (off, size) in index.items():
                if not name.endswith(".json"):
                    continue
                f.seek(off)
                ann = json.loads(f.read(size))
                image = name[:-len(".json")] + ".jpg"
                if image not in index:
                    raise PocketVisionError(f"{tar}: {name} has no image {image}.")
                out.append((tar / image, ann))
        if shard.get("nsamples") is not None and sum(1 for n in index if n.endswith(".json")) != shard["nsamples"]:
            raise PocketVisionError(f"{tar}: holds a different number of samples than {DESCRIPTOR} says; fetch or "
                                    "write it again.")
    return out


# -- writing ---------------------------------------------------------------------------------------------------
def _key(rel: str) -> str:
    """A WebDataset key: the file's path without its extension. Readers split a member's name at the first dot of
    its base name into key and extension, so dots inside names become underscores."""
    stem = rel.rsplit(".", 1)[0]
    return re.sub(r"[.\s]", "_", stem)


def _write_split(ex: ThreadPoolExecutor, tar_writer, tmp: Path, split: str, items: list[tuple[Path, str, Any]],
                 encode: Callable[[Path, Any], tuple[bytes, Any]], shard_mb: int, problems: list[str],
                 log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One split's shards in ``tmp`` (images encoded on ``ex``'s threads, written in order) -> their entries."""
    shards: list[dict[str, Any]] = []
    writer = f = None
    seen: set[str] = set()

    def close() -> None:
        nonlocal writer, f
        if writer is not None:
            writer.close()
            f.close()
            p = tmp / shards[-1]["url"]
            shards[-1].update(bytes=p.stat().st_size, sha256=_sha256(p))
            writer = f = None

    def one(item):
        path, rel, ann = item
        try:
            return rel, *encode(path, ann), None
        except ImageDecodeError as e:
            return rel, None, None, str(e)

    for k, (rel, jpeg, ann, problem) in enumerate(ex.map(one, items), 1):
        if problem:
            problems.append(problem)
            continue
        key = _key(rel)
        if key in seen:
            raise PocketVisionError(f"{rel}: another image of {split} has the same key {key}; rename one of them.")
        seen.add(key)
        if writer is None or shards[-1]["bytes_so_far"] >= shard_mb << 20:
            close()
            shards.append({"url": f"{split}-{len(shards):06d}.tar", "nsamples": 0, "bytes_so_far": 0})
            f = open(tmp / shards[-1]["url"], "wb")
            writer = tar_writer(f, mtime=0)  # fixed times: the same data gives the same bytes
        writer.write({"__key__": key, "jpg": jpeg, "json": json.dumps(ann).encode()})
        shards[-1]["nsamples"] += 1
        shards[-1]["bytes_so_far"] += len(jpeg)
        if k % 1000 == 0:
            log(f"{split}: {k}/{len(items)}")
    close()
    for s in shards:
        s.pop("bytes_so_far")
    return shards


def write(out: str | os.PathLike, task: str, meta: dict[str, Any], splits: dict[str, list[tuple[Path, str, Any]]],
          encode: Callable[[Path, Any], tuple[bytes, Any]], size: int, quality: int, shard_mb: int = 256,
          threads: int = 0, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Write ``splits`` ({split: [(image path, relative name, annotation)]}) as shards in the new folder ``out``.

    ``encode(path, annotation) -> (JPEG bytes, annotation in the stored pixels)``; an image it cannot decode is
    skipped and reported. Everything goes to a temporary folder beside ``out`` that is renamed at the end."""
    try:
        import webdataset as wds
    except ImportError:
        raise PocketVisionError("writing shards needs the webdataset package: pip install "
                                "'pocketvision[shards]'.") from None
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PocketVisionError(f"{out}: exists and is not empty; give --out a new folder.")
    if not 1 <= shard_mb <= 65536:
        raise PocketVisionError(f"--shard-mb {shard_mb}: between 1 and 65536.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    t0 = time.perf_counter()
    problems: list[str] = []
    desc: dict[str, Any] = {"format": FORMAT, "task": task, "meta": meta, "size": size, "quality": quality,
                            "splits": {}}
    try:
        with ThreadPoolExecutor(max_workers=threads or (os.cpu_count() or 1)) as ex:
            for split, items in splits.items():
                desc["splits"][split] = _write_split(ex, wds.TarWriter, tmp, split, items, encode, shard_mb,
                                                      problems, log)
        (tmp / DESCRIPTOR).write_text(json.dumps(desc, indent=1))
        if out.exists():  # an empty folder: replaced by the finished one
            out.rmdir()
        tmp.chmod(0o755)  # mkdtemp makes it private; a data set is for others to read
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts = {s: sum(x["nsamples"] for x in v) for s, v in desc["splits"].items()}
    return {"folder": str(out), "samples": counts, "shards": sum(len(v) for v in desc["splits"].values()),
            "megabytes": round(sum(x["bytes"] for v in desc["splits"].values() for x in v) / 2**20, 1),
            "unreadable": problems, "seconds": round(time.perf_counter() - t0, 2)}


def _sha256(p: Path) -> str:
    with open(p, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# -- fetching --------------------------------------------------------------------------------------------------
def fetch(url: str, out: str | os.PathLike, threads: int = 4,
          log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Copy the shard set whose descriptor is at ``url`` (http(s):// or file://, or a local path) into ``out``."""
    out = Path(out)
    if not re.match(r"^(https?|file)://", url):
        url = Path(url).resolve().as_uri()
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            raw = r.read()
    except (OSError, ValueError) as e:
        raise PocketVisionError(f"{url}: cannot read the shard descriptor ({e}).") from None
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{DESCRIPTOR}.part"
    tmp.write_bytes(raw)
    try:
        desc = read_descriptor(tmp, url)
    except PocketVisionError:
        tmp.unlink()
        raise
    shards = [s for v in desc["splits"].values() for s in v]
    for s in shards:
        if not isinstance(s.get("url"), str) or "/" in s["url"] or s["url"].startswith(".") or \
                not isinstance(s.get("bytes"), int) or not isinstance(s.get("sha256"), str):
            tmp.unlink()
            raise PocketVisionError(f"{url}: shard entry {s.get('url')!r} needs a plain file name, bytes and "
                                    "sha256; refusing it.")

    def one(s: dict[str, Any]) -> str:
        dest = out / s["url"]
        if dest.is_file() and dest.stat().st_size == s["bytes"] and _sha256(dest) == s["sha256"]:
            return "kept"
        part = out / f".{s['url']}.part"
        try:
            with urllib.request.urlopen(urllib.parse.urljoin(url, s["url"]), timeout=60) as r, open(part, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
        except (OSError, ValueError) as e:
            raise PocketVisionError(f"{urllib.parse.urljoin(url, s['url'])}: download failed ({e}); run the "
                                    "same command again to resume.") from None
        if part.stat().st_size != s["bytes"] or _sha256(part) != s["sha256"]:
            part.unlink()
            raise PocketVisionError(f"{s['url']}: its bytes differ from the SHA-256 in {DESCRIPTOR}; the copy was "
                                    "deleted (a changed or damaged source).")
        os.replace(part, dest)
        return "fetched"

    try:
        with ThreadPoolExecutor(max_workers=threads) as ex:
            states = list(ex.map(one, shards))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out / DESCRIPTOR)  # last: a folder with a descriptor has every shard it names
    _INDEX.clear()  # member offsets of replaced shards
    log(f"{states.count('fetched')} fetched, {states.count('kept')} already there")
    return {"folder": str(out), "fetched": states.count("fetched"), "kept": states.count("kept"),
            "megabytes": round(sum(s["bytes"] for s in shards) / 2**20, 1),
            "seconds": round(time.perf_counter() - t0, 2)}


__all__ = ["DESCRIPTOR", "FORMAT", "fetch", "is_shard_set", "read_descriptor", "samples", "shard_task", "write"]
