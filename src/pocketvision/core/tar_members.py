"""Images inside tar files, read by path: ``SHARD.tar/member`` names a member of a WebDataset shard.

Every reader that opens an image by path (``contract.load_rgb``, the data checks, the loaders) comes here when the
path crosses a tar file, so the rest of the pipeline treats a shard set like a folder. The index of a tar's members
is read once per process from its headers (what wids does); a member is then one seek and one read.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from ..errors import ImageDecodeError

_INDEX: dict[Path, dict[str, tuple[int, int]]] = {}  # per process: tar -> member name -> (offset, size)


def _tar_of(path: Path) -> tuple[Path, str] | None:
    """(the tar file a path crosses, the member name inside it), or None."""
    for parent in path.parents:
        if parent.suffix == ".tar" and parent.is_file():
            return parent, path.relative_to(parent).as_posix()
    return None


def _index(tar: Path) -> dict[str, tuple[int, int]]:
    if tar not in _INDEX:
        try:
            with tarfile.open(tar, "r:") as tf:  # headers only: one 512-byte read per member
                _INDEX[tar] = {m.name: (m.offset_data, m.size) for m in tf if m.isfile()}
        except (OSError, tarfile.TarError) as e:
            raise ImageDecodeError(f"{tar}: not a readable tar shard ({e}); fetch or write it again.") from None
    return _INDEX[tar]


def read_member(path: str | os.PathLike) -> bytes | None:
    """The bytes of ``SHARD.tar/member`` (None when ``path`` does not cross a tar file)."""
    found = _tar_of(Path(path))
    if found is None:
        return None
    tar, name = found
    entry = _index(tar).get(name)
    if entry is None:
        raise ImageDecodeError(f"{path}: no member {name} in {tar}.")
    with open(tar, "rb") as f:
        f.seek(entry[0])
        return f.read(entry[1])


def read_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes, or a shard member's (``SHARD.tar/member``)."""
    try:
        return Path(path).read_bytes()
    except NotADirectoryError:
        data = read_member(path)
        if data is None:
            raise
        return data


def member_size(path: str | os.PathLike) -> int | None:
    found = _tar_of(Path(path))
    if found is None:
        return None
    entry = _index(found[0]).get(found[1])
    return entry[1] if entry else None
