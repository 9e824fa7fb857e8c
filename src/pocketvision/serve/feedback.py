"""Users' corrections ("wrong? it is a hot dog"): received on the server, reviewed, exported as training data.

Server side: ``sniff_image`` decides what an uploaded "image" really is from its bytes (a JPEG, PNG or WebP that
decodes, within a pixel cap), whatever its file name or Content-Type say; ``FeedbackStore`` keeps one row per
correction and the photo, content-addressed, in the blob store. Admin side: ``export_feedback`` writes the
confirmed corrections into a data set folder that `pocketvision train` reads, skipping photos it already holds
(by content hash), so exporting twice or into the original training set adds nothing twice.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..data.folder import image_hashes
from ..errors import PocketVisionError
from .store import device_key, feedback, versions

IMAGE_TYPES = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
IMAGE_MIME = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
MAX_PIXELS = 40_000_000  # a 12 MP phone photo is far below; a decompression bomb is far above
STATUSES = ("new", "confirmed", "rejected")
ORDERS = ("received", "teach")


MAX_DECODED_PIXELS = 16_000_000  # a WebP is decoded in full to check it: 48 MB at most
_DECODES = threading.BoundedSemaphore(2)  # image checks decoding at once: memory stays bounded under a burst


def sniff_image(data: bytes) -> str:
    """-> 'jpg' | 'png' | 'webp' for bytes that decode as such an image, else a one-line error. Checked from the
    header first (the pixel cap), then for real at a bounded cost: a JPEG decoded at 1/8 scale, a PNG's chunks and
    compressed stream walked without keeping its pixels, a WebP (no reduced decode) decoded only up to 16 MP, at
    most two at a time."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as im:
            kind = IMAGE_TYPES.get(im.format or "")
            if kind is None:
                raise PocketVisionError(f"image: {im.format or 'unknown'} is not accepted; send a JPEG, PNG or WebP.")
            w, h = im.size
            if w < 1 or h < 1 or w * h > MAX_PIXELS:
                raise PocketVisionError(f"image: {w}x{h} pixels is outside 1..{MAX_PIXELS:,}.")
            if kind == "png":
                _walk_png(data, w, h)
                return kind
            if kind == "webp" and w * h > MAX_DECODED_PIXELS:
                raise PocketVisionError(f"image: a WebP of {w}x{h} pixels is over {MAX_DECODED_PIXELS:,}; send a "
                                        "JPEG.")
            with _DECODES:
                im.draft("RGB", (64, 64))  # decode for real, cheaply (JPEG at 1/8): a truncated file fails here
                im.load()
    except PocketVisionError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError, zlib.error) as e:
        raise PocketVisionError(f"image: not a readable JPEG, PNG or WebP ({type(e).__name__}).") from None
    return kind


def _walk_png(data: bytes, w: int, h: int) -> None:
    """Every chunk's CRC, then the image data inflated 1 MB at a time and thrown away: a truncated or corrupt PNG
    fails, and checking a 40 MP one costs a megabyte, not the 120 MB of its pixels."""
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        im.verify()  # chunk CRCs and the IEND
    at, z, inflated = 8, zlib.decompressobj(), 0
    while at + 8 <= len(data):
        n, kind = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
        if kind == b"IDAT":
            pending = data[at + 8:at + 8 + n]
            while pending:
                inflated += len(z.decompress(pending, 1 << 20))
                pending = z.unconsumed_tail
        at += 12 + n
    if not z.eof or inflated < h:  # at least a filter byte a row; a stream cut short never reaches its end
        raise OSError("image data truncated")


class FeedbackStore:
    def __init__(self, registry):
        self.reg = registry

    def labels(self, conn: sa.Connection, model: str) -> list[str]:
        row = conn.execute(sa.select(versions.c.info).where(versions.c.model == model)
                           .order_by(versions.c.version.desc()).limit(1)).first()
        if row is None:
            raise PocketVisionError(f"no model named {model!r} on this server.")
        import json
        return list(json.loads(row.info).get("labels") or [])

    def add(self, model: str, device_id: str, version: int | None, predicted: str, corrected: str,
            image: bytes | None, confidence: float | None = None, unfamiliar: float | None = None
            ) -> dict[str, Any]:
        with self.reg.store.reader() as c:
            labels = self.labels(c, model)
        for field, value in (("predicted", predicted), ("corrected", corrected)):
            if labels and value not in labels:
                raise PocketVisionError(f"{field} {value[:80]!r}: not a label of {model} ({', '.join(labels)}).")
        sha = kind = None
        if image is not None:
            kind = sniff_image(image)
            sha, _ = self.reg.blobs.put_bytes(image)
        with self.reg.store.writer() as c:
            fid = c.execute(feedback.insert().values(
                model=model, version=version, device=device_key(device_id), predicted=predicted, corrected=corrected,
                image_sha256=sha, image_type=kind, created=time.time(), status="new", label=None,
                confidence=confidence, unfamiliar=unfamiliar)
            ).inserted_primary_key[0]
        return {"id": fid, "image": kind}

    def list(self, model: str, status: str | None = None, order: str = "received") -> list[dict[str, Any]]:
        """``order``: "received" (oldest first) or "teach": what teaches most first -- the answers the model was
        least sure of (in bands of 5%), and among those the photos that looked least familiar to it; a correction of
        a confident answer comes after, one without a confidence last."""
        if order not in ORDERS:
            raise PocketVisionError(f"order {order!r}: expected one of {', '.join(ORDERS)}.")
        q = sa.select(feedback).where(feedback.c.model == model).order_by(feedback.c.id)
        if status is not None:
            q = q.where(feedback.c.status == status)
        with self.reg.store.reader() as c:
            items = [{**dict(r._mapping), "label": r.label or r.corrected} for r in c.execute(q)]
        if order == "teach":
            items.sort(key=lambda it: (it["confidence"] is None, round((it["confidence"] or 0.0) * 20),
                                       -(it["unfamiliar"] or 0.0), it["id"]))
        return items

    def review(self, fid: int, status: str, label: str | None = None) -> dict[str, Any]:
        return self.review_all([(fid, status, label)])[0]

    def review_all(self, decisions: list[tuple[int, str, str | None]], model: str | None = None
                   ) -> list[dict[str, Any]]:
        """(id, status, label) decisions, all or none: every one is checked before any is written, in one
        transaction. ``model``: each id must be a correction to that model."""
        with self.reg.store.writer() as c:
            rows = []
            for fid, status, label in decisions:
                if status not in STATUSES:
                    raise PocketVisionError(f"status {status!r}: expected one of {', '.join(STATUSES)}; nothing "
                                            "was changed.")
                row = c.execute(sa.select(feedback).where(feedback.c.id == fid)).first()
                if row is None or (model is not None and row.model != model):
                    raise PocketVisionError(f"no feedback with id {fid}" + (f" for {model}" if model else "")
                                            + "; nothing was changed.")
                if label is not None:
                    labels = self.labels(c, row.model)
                    if labels and label not in labels:
                        raise PocketVisionError(f"label {label!r}: not a label of {row.model} ({', '.join(labels)});"
                                                " nothing was changed.")
                rows.append(row)
            for (fid, status, label), row in zip(decisions, rows):
                c.execute(feedback.update().where(feedback.c.id == fid).values(status=status,
                                                                              label=label or row.label))
        return [{"id": fid, "status": status, "label": label or row.label or row.corrected}
                for (fid, status, label), row in zip(decisions, rows)]

    def image(self, fid: int) -> tuple[bytes, str]:
        with self.reg.store.reader() as c:
            row = c.execute(sa.select(feedback.c.image_sha256, feedback.c.image_type).where(feedback.c.id == fid)).first()
        if row is None or row.image_sha256 is None:
            raise PocketVisionError(f"feedback {fid} has no photo (not found, or the user kept it private).")
        local = self.reg.blobs.local_path(row.image_sha256)
        if local is not None:
            return local.read_bytes(), row.image_type
        chunks, _ = self.reg.blobs.read(row.image_sha256)
        return b"".join(chunks), row.image_type


# -- admin side: into a data set ----------------------------------------------------------------------------
def export_feedback(client, model: str, out: str | os.PathLike) -> dict[str, Any]:
    """Confirmed corrections of ``model`` -> image files in ``out`` (``out/train/<label>/`` when ``out`` has a train
    split, else ``out/<label>/``), skipping photos ``out`` already holds anywhere (same bytes)."""
    out = Path(out)
    base = out / "train" if (out / "train").is_dir() else out
    items = client.call("GET", f"/v1/models/{model}/feedback?status=confirmed")["items"]
    have = image_hashes(out)
    added, dup, private = [], 0, 0
    for it in items:
        if not it["image_sha256"]:
            private += 1
            continue
        if it["image_sha256"] in have:
            dup += 1
            continue
        label = it["label"]
        if not label or "/" in label or "\\" in label or label.startswith("."):
            raise PocketVisionError(f"feedback {it['id']}: label {label!r} cannot be a folder name.")
        data = client.raw("GET", f"/v1/feedback/{it['id']}/image")
        if hashlib.sha256(data).hexdigest() != it["image_sha256"]:
            raise PocketVisionError(f"feedback {it['id']}: the photo does not match its recorded hash; nothing "
                                    "was written for it.")
        dest = base / label / f"feedback-{it['image_sha256'][:16]}.{it['image_type']}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".fb-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
        have.add(it["image_sha256"])
        added.append(str(dest))
    return {"model": model, "out": str(out), "added": len(added), "already_there": dup, "without_photo": private,
            "files": added}
