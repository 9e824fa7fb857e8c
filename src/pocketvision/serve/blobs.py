"""Content-addressed artifact storage: a blob's name is its sha256, so a stored blob never changes.

A blob is streamed to a temporary file beside its final place, hashed on the way, and renamed into place
only when complete: a server killed mid-upload leaves a temp file, never a half blob under a real name.
Blobs are written before the publish transaction that names them, so a committed version always finds
its files (a blob no version names is harmless and reclaimable).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO

from ..errors import PocketVisionError

SHA256 = re.compile(r"[0-9a-f]{64}")
CHUNK = 1 << 20


class TooLarge(PocketVisionError):
    pass


class LocalBlobs:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def clean_partial(self) -> int:
        """Remove uploads a killed server left half-written (call at server start: none is in flight then)."""
        n = 0
        for p in self.root.glob(".upload-*"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    def path(self, sha: str) -> Path:
        if not SHA256.fullmatch(sha):  # the only name ever joined to the root: no traversal possible
            raise PocketVisionError(f"not a sha256: {sha[:80]!r}")
        return self.root / sha[:2] / sha

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def put(self, src: BinaryIO, max_bytes: int) -> tuple[str, int]:
        """Store the stream (at most ``max_bytes``) -> (sha256, length)."""
        h, n = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                while chunk := src.read(CHUNK):
                    n += len(chunk)
                    if n > max_bytes:
                        raise TooLarge(f"upload over the limit of {max_bytes:,} bytes")
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            sha = h.hexdigest()
            dest = self.path(sha)
            dest.parent.mkdir(exist_ok=True)
            os.replace(tmp, dest)
            return sha, n
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        import io
        return self.put(io.BytesIO(data), len(data))


def open_blobs(url: str | None, store: Path) -> LocalBlobs:
    if url is None:
        return LocalBlobs(store / "blobs")
    if url.startswith("file://"):
        return LocalBlobs(Path(url[len("file://"):]))
    raise PocketVisionError(f"--blobs {url!r}: expected file:///PATH (S3-compatible storage is not built yet).")
