"""What a teachable web page was taught (its "download what I taught" file) -> photos in a class-folder data set,
so ``pocketvision train`` makes a bundle of it: trained further, compressed, exported to every target, published.

The file is untrusted input (a user's download, possibly edited): its size, kind, version, every class name and
every example's shape are checked before anything is written; each photo lands through a temp file and a rename,
lossless (PNG) at the model's input size, and photos the data set already holds (same bytes) are skipped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import PocketVisionError
from .folder import image_hashes

MAX_FILE_BYTES = 512 << 20  # the page keeps at most 2,000 examples: ~400 MB of base64 at 224 px
MAX_SIDE = 4096
KIND = "pocketvision.taught"


def read_taught(path: str | os.PathLike) -> dict[str, Any]:
    """The checked content of a taught file: ``{"model": {...}, "examples": [(name, uint8 HxWx3), ...]}``."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise PocketVisionError(f"{p}: cannot read it ({e.strerror or e}).") from None
    if size > MAX_FILE_BYTES:
        raise PocketVisionError(f"{p}: {size / 1e6:.0f} MB is more than a taught page's download ({MAX_FILE_BYTES / 1e6:.0f}"
                                " MB at most); download it from the page again.")
    try:
        doc = json.loads(p.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise PocketVisionError(f"{p}: not JSON ({e}); give the file the page's \"download what I taught\" "
                                "saved.") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND or doc.get("version") != 1:
        raise PocketVisionError(f"{p}: not a taught page's file (kind {KIND!r}, version 1); give the file the "
                                "page's \"download what I taught\" saved.")
    rows = doc.get("examples")
    if not isinstance(rows, list) or not rows:
        raise PocketVisionError(f"{p}: it holds no examples; teach the page a class first.")
    examples = []
    for i, r in enumerate(rows):
        try:
            name, h, w = r["name"], int(r["h"]), int(r["w"])
            if not 1 <= h <= MAX_SIDE or not 1 <= w <= MAX_SIDE:
                raise ValueError(f"size {h}x{w}")
            px = np.frombuffer(base64.b64decode(r["rgb_b64"], validate=True), np.uint8)
            if px.size != h * w * 3:
                raise ValueError(f"{px.size} bytes for a {h}x{w} RGB photo")
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise PocketVisionError(f"{p}: example {i} is not readable ({e}); download it from the page again.") \
                from None
        examples.append((_folder_name(p, name), px.reshape(h, w, 3)))
    return {"model": doc.get("model") if isinstance(doc.get("model"), dict) else {}, "examples": examples}


def _folder_name(p: Path, name: Any) -> str:
    """A class name that is safe as one folder name (no path, no hidden or control characters)."""
    if (not isinstance(name, str) or not name.strip() or len(name) > 100 or name.strip() in (".", "..")
            or any(c in name for c in "/\\:") or name.startswith(".") or any(ord(c) < 32 for c in name)):
        raise PocketVisionError(f"{p}: class name {name!r} cannot be a folder name; rename the class in the page.")
    return name.strip()


def taught_to_folder(path: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """The examples of taught file ``path`` -> PNGs in ``out/train/<class>/`` (``out/<class>/`` when ``out`` has
    no train split), skipping photos already there. -> counts and what to run next."""
    taught = read_taught(path)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PocketVisionError(f"{out}: not a folder; --into is a data set folder (class folders, or train/ and "
                                "val/ with class folders).")
    base = out / "train" if (out / "train").is_dir() else out
    have = image_hashes(out)
    added, already = {}, 0
    for name, px in taught["examples"]:
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="PNG")
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        if sha in have:
            already += 1
            continue
        dest = base / name / f"taught-{sha[:16]}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".taught-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise PocketVisionError(f"{dest}: could not write it ({e.strerror or e}); the photos written before "
                                    "it are complete, run the import again to add the rest.") from None
        have.add(sha)
        added[name] = added.get(name, 0) + 1
    return {"into": str(base), "added": added, "already_there": already,
            "model": {k: taught["model"].get(k) for k in ("title", "labels", "sha256")},
            "next": f"pocketvision train {out}"}
