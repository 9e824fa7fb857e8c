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
from collections.abc import Iterator
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

    def size(self, sha: str) -> int | None:
        p = self.path(sha)
        return p.stat().st_size if p.is_file() else None

    def local_path(self, sha: str) -> Path | None:
        return self.path(sha)

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


class S3Blobs:
    """The same store in an S3-compatible bucket (AWS, MinIO, moto...), for several server instances.

    The blob is hashed into a local temp file first (its name is its hash), then uploaded; an S3 PUT is atomic, so
    a reader never sees a half object. The endpoint comes from boto3's own configuration (``AWS_ENDPOINT_URL``,
    credentials from the usual AWS variables or files).
    """

    def __init__(self, bucket: str, prefix: str = ""):
        import boto3
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.s3 = boto3.client("s3")
        try:
            self.s3.head_bucket(Bucket=bucket)
        except Exception as e:  # noqa: BLE001 - botocore's errors: no bucket, no endpoint, no credentials
            raise PocketVisionError(f"--blobs s3://{bucket}: cannot reach the bucket ({e}); set AWS_ENDPOINT_URL "
                                    "and credentials, and create the bucket first.") from None

    def key(self, sha: str) -> str:
        if not SHA256.fullmatch(sha):
            raise PocketVisionError(f"not a sha256: {sha[:80]!r}")
        return f"{self.prefix}/{sha[:2]}/{sha}" if self.prefix else f"{sha[:2]}/{sha}"

    def size(self, sha: str) -> int | None:
        from botocore.exceptions import ClientError
        try:
            return int(self.s3.head_object(Bucket=self.bucket, Key=self.key(sha))["ContentLength"])
        except ClientError:
            return None

    def exists(self, sha: str) -> bool:
        return self.size(sha) is not None

    def local_path(self, sha: str) -> Path | None:
        return None

    def read(self, sha: str, start: int = 0, end: int | None = None) -> tuple[Iterator[bytes], int]:
        rng = f"bytes={start}-" + ("" if end is None else str(end))
        obj = self.s3.get_object(Bucket=self.bucket, Key=self.key(sha), Range=rng)
        body = obj["Body"]
        return body.iter_chunks(CHUNK), int(obj["ContentLength"])

    def put(self, src: BinaryIO, max_bytes: int) -> tuple[str, int]:
        with tempfile.TemporaryDirectory(prefix="pv-upload-") as tmp:
            local = LocalBlobs(Path(tmp))
            sha, n = local.put(src, max_bytes)
            if not self.exists(sha):
                self.s3.upload_file(str(local.path(sha)), self.bucket, self.key(sha))
        return sha, n

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        import io
        return self.put(io.BytesIO(data), len(data))

    def clean_partial(self) -> int:
        return 0  # nothing is ever half-visible in S3


def open_blobs(url: str | None, store: Path) -> LocalBlobs | S3Blobs:
    if url is None:
        return LocalBlobs(store / "blobs")
    if url.startswith("file://"):
        return LocalBlobs(Path(url[len("file://"):]))
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise PocketVisionError(f"--blobs {url!r}: expected s3://BUCKET[/PREFIX].")
        return S3Blobs(bucket, prefix)
    raise PocketVisionError(f"--blobs {url!r}: expected file:///PATH or s3://BUCKET[/PREFIX].")
