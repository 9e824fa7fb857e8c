"""What the labelling tool reads and writes: the images under DIR and the labels file, saved atomically.

Keypoints go to COCO keypoints JSON (what training reads). Each image record carries ``pv_status``
(``done``/``skipped``) and each annotation ``pv_asked``: the points the person has answered (placed, or
marked not visible), so a point added to an already labelled set is asked for on every image while
the old ones are kept. Classes go to a CSV ``image,label`` (and, optionally, an image-folder layout of
relative symlinks). Every change is written to a temporary file and renamed: killing the server at any
moment loses at most the image being labelled.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..core.bundle_file import atomic_write_bytes
from ..core.contract import is_image_file
from ..errors import PocketVisionError


def list_images(root: Path) -> list[str]:
    """Image files under ``root`` as relative posix paths; links that resolve outside ``root`` are left out
    (they would let the server read files elsewhere)."""
    real_root = root.resolve()
    out = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or not is_image_file(p):
            continue
        try:
            p.resolve().relative_to(real_root)
        except ValueError:
            continue  # symlink escape
        if any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        out.append(p.relative_to(root).as_posix())
    return out


class SchemaError(PocketVisionError):
    """A write that does not match the labels' schema (the server answers 400)."""


@dataclass
class LabelStore:
    root: Path
    out: Path
    mode: str  # "keypoints" or "classes"
    names: list[str] = field(default_factory=list)  # keypoint names or class names
    folders: Path | None = None  # classes: also mirror as out/<class>/<image> symlinks
    images: list[str] = field(default_factory=list)
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)  # image -> {points, asked, status, class}
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    skeleton: list[list[int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, root: str | Path, out: str | Path | None, mode: str, names: list[str],
             folders: str | Path | None = None) -> LabelStore:
        root = Path(root)
        if not root.is_dir():
            raise PocketVisionError(f"{root}: not a folder of images.")
        if mode not in ("keypoints", "classes"):
            raise PocketVisionError("label: pass --keypoints a,b,c or --classes x,y.")
        if not names or len(set(names)) != len(names) or any(not n.strip() for n in names):
            raise PocketVisionError(f"label: the {'points' if mode == 'keypoints' else 'classes'} must be unique, "
                                    f"non-empty names (got {names}).")
        out = Path(out) if out else root / ("labels.json" if mode == "keypoints" else "labels.csv")
        st = cls(root=root, out=out, mode=mode, names=list(names), folders=Path(folders) if folders else None)
        st.images = list_images(root)
        if not st.images:
            raise PocketVisionError(f"{root}: no images (jpg/png/webp/bmp) to label.")
        if out.exists():
            st._load_existing()
        return st

    # -- existing labels (resume, edit, add a point) -------------------------------------------------
    def _load_existing(self) -> None:
        if self.mode == "classes":
            rows = list(csv.reader(self.out.read_text().splitlines()))
            for r in rows[1:]:
                if len(r) >= 2 and r[0] in self.images:
                    self.labels[r[0]] = {"class": r[1] or None, "status": "skipped" if not r[1] else "done"}
            return
        try:
            d = json.loads(self.out.read_text())
            cat = d["categories"][0]
            old = list(cat["keypoints"])
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
            raise PocketVisionError(f"{self.out}: not a COCO keypoints file this tool wrote ({e}); pass another "
                                    "--out.") from None
        missing = [n for n in old if n not in self.names]
        if missing:
            raise PocketVisionError(f"{self.out}: has points {old}; --keypoints must keep all of them (missing "
                                    f"{missing}) — new points go at the end.")
        # Old points keep their order; new ones are appended (and asked for on every image).
        self.names = old + [n for n in self.names if n not in old]
        self.skeleton = cat.get("skeleton", [])
        base = self.out.parent
        by_id = {im["id"]: im for im in d.get("images", [])}
        for ann in d.get("annotations", []):
            im = by_id.get(ann.get("image_id"))
            if im is None:
                continue
            rel = self._rel_from_out(base, im["file_name"])
            if rel not in self.images:
                continue
            kp = ann.get("keypoints", [])
            pts = [kp[3 * i:3 * i + 3] if kp[3 * i + 2] > 0 else None for i in range(len(old))]
            pts += [None] * (len(self.names) - len(old))
            self.labels[rel] = {"points": pts, "asked": [n for n in ann.get("pv_asked", old) if n in self.names],
                                "status": im.get("pv_status", "done")}
            self.sizes[rel] = (im["width"], im["height"])
        for im in by_id.values():  # skipped images have no annotation
            rel = self._rel_from_out(base, im["file_name"])
            if rel in self.images and rel not in self.labels and im.get("pv_status") == "skipped":
                self.labels[rel] = {"points": [None] * len(self.names), "asked": [], "status": "skipped"}

    def _rel_from_out(self, base: Path, file_name: str) -> str:
        p = Path(file_name)
        p = p if p.is_absolute() else base / p
        try:
            return Path(os.path.relpath(p.resolve(), self.root.resolve())).as_posix()
        except ValueError:
            return file_name

    # -- state -------------------------------------------------------------------------------------
    def complete(self, image: str) -> bool:
        lab = self.labels.get(image)
        if not lab:
            return False
        if lab["status"] == "skipped":
            return True
        if self.mode == "classes":
            return bool(lab.get("class"))
        return set(self.names) <= set(lab.get("asked", []))

    def first_open(self, order: list[str] | None = None) -> int:
        seq = order or self.images
        for name in seq:
            if not self.complete(name):
                return self.images.index(name)
        return len(self.images) - 1

    def size(self, image: str) -> tuple[int, int]:
        if image not in self.sizes:
            with Image.open(self.path(image)) as im:
                w, h = im.size
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # shown upright by the browser
                    w, h = h, w
            self.sizes[image] = (w, h)
        return self.sizes[image]

    def path(self, image: str) -> Path:
        return self.root / image

    def state(self) -> dict[str, Any]:
        return {"mode": self.mode, "names": self.names, "images": self.images, "out": str(self.out),
                "labels": self.labels, "done": sum(self.complete(i) for i in self.images)}

    # -- writes ------------------------------------------------------------------------------------
    def put(self, body: Any) -> dict[str, Any]:
        """Validate one image's labels and save. Anything off-schema is refused, nothing written."""
        if not isinstance(body, dict) or not isinstance(body.get("image"), str):
            raise SchemaError("body must be a JSON object with 'image'.")
        image = body["image"]
        if image not in self.images:
            raise SchemaError(f"unknown image {image!r}.")
        allowed = {"image", "skip"} | ({"class"} if self.mode == "classes" else {"points", "asked"})
        extra = set(body) - allowed
        if extra:
            raise SchemaError(f"unknown field(s) {sorted(extra)}.")
        if body.get("skip") is True:
            rec = {"points": [None] * len(self.names), "asked": [], "status": "skipped"} if self.mode == "keypoints" \
                else {"class": None, "status": "skipped"}
        elif self.mode == "classes":
            if body.get("class") not in self.names:
                raise SchemaError(f"class must be one of {self.names}.")
            rec = {"class": body["class"], "status": "done"}
        else:
            rec = self._points(image, body)
        with self._lock:
            self.labels[image] = rec
            self.save()
        return {"ok": True, "done": sum(self.complete(i) for i in self.images)}

    def _points(self, image: str, body: dict) -> dict[str, Any]:
        pts, asked = body.get("points"), body.get("asked")
        if not isinstance(pts, list) or len(pts) != len(self.names):
            raise SchemaError(f"points must be a list of {len(self.names)} entries ({self.names}).")
        if not isinstance(asked, list) or not all(isinstance(a, str) and a in self.names for a in asked):
            raise SchemaError(f"asked must list point names from {self.names}.")
        w, h = self.size(image)
        clean = []
        for name, p in zip(self.names, pts):
            if p is None:
                clean.append(None)
                continue
            if (not isinstance(p, list) or len(p) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                                                  for v in p)):
                raise SchemaError(f"point {name!r} must be [x, y, v] numbers or null.")
            x, y, v = (float(q) for q in p)
            if not (0 <= x <= w and 0 <= y <= h) or v not in (1.0, 2.0):
                raise SchemaError(f"point {name!r} at ({x}, {y}) v={v} is outside the {w}x{h} image or v is not 1/2.")
            clean.append([round(x, 2), round(y, 2), int(v)])
        return {"points": clean, "asked": sorted(set(asked), key=self.names.index), "status": "done"}

    def save(self) -> None:
        if self.mode == "classes":
            self._save_csv()
        else:
            self._save_coco()

    def _save_coco(self) -> None:
        base = self.out.parent
        images, anns = [], []
        for i, name in enumerate(self.images, 1):
            lab = self.labels.get(name)
            if not lab:
                continue
            w, h = self.size(name)
            fname = os.path.relpath(self.path(name).resolve(), base.resolve())
            images.append({"id": i, "file_name": Path(fname).as_posix(), "width": w, "height": h,
                           "pv_status": lab["status"]})
            if lab["status"] == "skipped":
                continue
            kp: list[float] = []
            for p in lab["points"]:
                kp += p if p else [0, 0, 0]
            n = sum(1 for p in lab["points"] if p)
            anns.append({"id": i, "image_id": i, "category_id": 1, "keypoints": kp, "num_keypoints": n,
                         "bbox": [0, 0, w, h], "area": w * h, "iscrowd": 0, "pv_asked": lab["asked"]})
        doc = {"info": {"description": "pocketvision label", "keypoints": self.names}, "images": images,
               "annotations": anns,
               "categories": [{"id": 1, "name": "object", "keypoints": self.names, "skeleton": self.skeleton}]}
        atomic_write_bytes(self.out, json.dumps(doc, indent=1).encode())

    def _save_csv(self) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["image", "label"])
        for name in self.images:
            lab = self.labels.get(name)
            if lab:
                w.writerow([name, lab.get("class") or ""])
        atomic_write_bytes(self.out, buf.getvalue().encode())
        if self.folders:
            self._sync_folders()

    def _sync_folders(self) -> None:
        """out/<class>/<image name> -> the image (relative symlinks), the layout `pocketvision train` reads."""
        for name, lab in self.labels.items():
            flat = name.replace("/", "__")
            for c in self.names:
                link = self.folders / c / flat
                want = lab.get("class") == c
                if link.is_symlink() and not want:
                    link.unlink()
                elif want and not link.is_symlink():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(os.path.relpath(self.path(name).resolve(), link.parent.resolve()))
