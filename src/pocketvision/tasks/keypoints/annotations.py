"""Keypoint data sets: COCO keypoints JSON (what CVAT and Label Studio export) and a simple CSV.

A data set is a list of (image path, points) where points is ``(K, 3)`` float32 ``x, y, v`` in the
image's own pixel coordinates (continuous: the top-left corner of the image is 0,0 and a pixel spans
one unit). ``v`` follows COCO: 0 = not labelled, 1 = labelled but hidden, 2 = visible. Loss and
metrics use every *labelled* point (v > 0); a hidden point still has a true position.

Flip pairs (which point becomes which when the image is mirrored) are inferred from the names and
validated, because mirroring a face without swapping the eyes is the classic keypoint bug.

numpy only (plus json/csv): this module is also used by the labelling tool and by checks.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...data import shards
from ...errors import PocketVisionError, did_you_mean

# How far outside the image a labelled point may lie (fraction of the image side) before it is an
# error. Tight face crops put eye corners a few pixels past the edge (MTFL: up to 9%); further out
# is a labelling mistake (swapped x/y, wrong image size, points from another image).
OUTSIDE_MARGIN = 0.1

_SIDE = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}


def mirror_name(name: str) -> str | None:
    """The name of the point a mirror image turns ``name`` into, by convention, or None.

    ``left_eye``/``right_eye``, ``eye_left``, ``LeftEye``; ``eye_l``/``eye_r``; ``l_eye``/``r_eye``;
    ``LEye``/``REye`` (OpenPose style).
    """
    swapped = re.sub(r"left|right|Left|Right|LEFT|RIGHT", lambda m: _SIDE[m.group(0)], name)
    if swapped != name:
        return swapped
    for pat, fn in ((r"^(.+[_\-. ])([lrLR])$", lambda m: m.group(1) + {"l": "r", "r": "l", "L": "R", "R": "L"}[m.group(2)]),
                    (r"^([lrLR])([_\-. ].+)$", lambda m: {"l": "r", "r": "l", "L": "R", "R": "L"}[m.group(1)] + m.group(2)),
                    (r"^([LR])([A-Z].*)$", lambda m: {"L": "R", "R": "L"}[m.group(1)] + m.group(2))):
        m = re.match(pat, name)
        if m:
            return fn(m)
    return None


@dataclass(frozen=True)
class KeypointSchema:
    """Point names, optional skeleton (index pairs to draw) and flip pairs (index pairs to swap)."""

    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()

    @property
    def flip_perm(self) -> np.ndarray:
        """Index permutation applied to the points of a mirrored image."""
        perm = np.arange(len(self.names))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    def index(self, name: str, what: str = "point") -> int:
        if name not in self.names:
            raise PocketVisionError(f"unknown {what} {name!r}; the points are {list(self.names)}."
                                    f"{did_you_mean(name, self.names)}")
        return self.names.index(name)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "flip_pairs": [list(p) for p in self.flip_pairs],
                "skeleton": [list(p) for p in self.skeleton]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KeypointSchema:
        return cls(tuple(d["names"]), tuple(tuple(p) for p in d.get("flip_pairs", [])),
                   tuple(tuple(p) for p in d.get("skeleton", [])))


def infer_flip_pairs(names: list[str] | tuple[str, ...]) -> list[tuple[int, int]]:
    """Pairs from naming conventions (see :func:`mirror_name`); a name whose mirror is absent has none."""
    pos = {n: i for i, n in enumerate(names)}
    pairs = []
    for i, n in enumerate(names):
        j = pos.get(mirror_name(n) or "")
        if j is not None and i < j:
            pairs.append((i, j))
    return pairs


def parse_flip_pairs(spec: str | list | None, names: tuple[str, ...]) -> list[tuple[int, int]] | None:
    """User override: ``"left_eye:right_eye,left_mouth:right_mouth"``, ``"a,b:c,d"`` (two lists whose
    lengths must match), a list of name pairs, or ``"none"``. -> index pairs, or None for 'infer'."""
    if spec is None:
        return None
    if isinstance(spec, str):
        s = spec.strip()
        if s.lower() in ("", "none"):
            return []
        if s.count(":") == 1 and "," in s.split(":")[0]:
            left, right = (part.split(",") for part in s.split(":"))
            if len(left) != len(right):
                raise PocketVisionError(f"flip pairs {spec!r}: the two lists have different lengths "
                                        f"({len(left)} vs {len(right)}); list each left point with its right one.")
            pairs = list(zip(left, right))
        else:
            pairs = [tuple(p.split(":")) for p in s.split(",")]
    else:
        pairs = [tuple(p) for p in spec]
    out = []
    for p in pairs:
        if len(p) != 2:
            raise PocketVisionError(f"flip pair {':'.join(p)!r} must name exactly two points (left:right).")
        a, b = (x.strip() for x in p)
        for x in (a, b):
            if x not in names:
                raise PocketVisionError(f"flip pair {a}:{b}: no point named {x!r} (points: {list(names)})."
                                        f"{did_you_mean(x, names)}")
        out.append((names.index(a), names.index(b)))
    return out


def validate_flip_pairs(pairs: list[tuple[int, int]], names: tuple[str, ...]) -> None:
    """A pair joins two different points, no point is in two pairs, and a pair does not contradict
    its names (``left_eye`` swapped with ``right_mouth`` is a typo)."""
    seen: dict[int, tuple[int, int]] = {}
    for a, b in pairs:
        if a == b:
            raise PocketVisionError(f"flip pair {names[a]}:{names[b]} pairs a point with itself.")
        for x in (a, b):
            if x in seen:
                raise PocketVisionError(f"point {names[x]!r} is in two flip pairs ({names[seen[x][0]]}:"
                                        f"{names[seen[x][1]]} and {names[a]}:{names[b]}).")
            seen[x] = (a, b)
    inferred = {frozenset(p) for p in infer_flip_pairs(names)}
    for a, b in pairs:
        for x in (a, b):
            want = next((p for p in inferred if x in p), None)
            if want is not None and frozenset((a, b)) != want:
                other = next(iter(want - {x}))
                raise PocketVisionError(f"flip pair {names[a]}:{names[b]} does not match the names: "
                                        f"{names[x]!r} mirrors to {names[other]!r}. Fix --flip-pairs.")


def make_schema(names: list[str], skeleton=(), flip_pairs: str | list | None = None) -> KeypointSchema:
    names_t = tuple(names)
    if len(set(names_t)) != len(names_t):
        dup = sorted({n for n in names_t if names_t.count(n) > 1})
        raise PocketVisionError(f"keypoint names must be unique; repeated: {dup}.")
    pairs = parse_flip_pairs(flip_pairs, names_t)
    if pairs is None:
        pairs = infer_flip_pairs(names_t)
    validate_flip_pairs(pairs, names_t)
    sk = tuple((int(a), int(b)) for a, b in skeleton)
    for a, b in sk:
        if not (0 <= a < len(names_t) and 0 <= b < len(names_t)):
            raise PocketVisionError(f"skeleton edge {[a, b]} refers to a point that does not exist "
                                    f"({len(names_t)} points).")
    return KeypointSchema(names_t, tuple(pairs), sk)


@dataclass(frozen=True)
class KpSample:
    path: Path
    points: np.ndarray  # (K, 3) float32: x, y, v
    size: tuple[int, int] | None = None  # (width, height) as annotated, when the file says


@dataclass
class KeypointSet:
    source: Path
    schema: KeypointSchema
    train: list[KpSample] = field(default_factory=list)
    val: list[KpSample] = field(default_factory=list)
    explicit: bool = False
    notes: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # file names left out by an exclude list

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for split in ("train", "val"):
            for s in getattr(self, split):
                h.update(f"{split}|{s.path.name}|{s.points.round(2).tobytes().hex()}\n".encode())
        return h.hexdigest()[:16]


# -- readers ---------------------------------------------------------------------------------------

def _resolve_image(base: Path, name: str) -> Path:
    p = Path(name)
    if p.is_absolute():
        return p
    cand = base / p
    if not cand.exists() and (base / "images" / p.name).exists():  # CVAT/Label Studio exports: images/
        return base / "images" / p.name
    return cand


def _check_points(pts: np.ndarray, where: str, size: tuple[int, int] | None) -> None:
    if not np.all(np.isfinite(pts[:, :2])):
        raise PocketVisionError(f"{where}: keypoint coordinates must be finite numbers.")
    if size is None:
        return
    w, h = size
    lab = pts[:, 2] > 0
    mx, my = OUTSIDE_MARGIN * w, OUTSIDE_MARGIN * h
    bad = lab & ((pts[:, 0] < -mx) | (pts[:, 0] > w + mx) | (pts[:, 1] < -my) | (pts[:, 1] > h + my))
    if bad.any():
        i = int(np.argmax(bad))
        raise PocketVisionError(f"{where}: point {i} at ({pts[i, 0]:.1f}, {pts[i, 1]:.1f}) is outside the "
                                f"{w}x{h} image (more than {OUTSIDE_MARGIN:.0%} past the edge). Fix the label or "
                                "mark it not labelled (v=0).")


def read_coco(path: str | Path, flip_pairs: str | list | None = None) -> tuple[KeypointSchema, list[KpSample], list[str]]:
    """One COCO keypoints file -> (schema, samples, notes). One object per image: an image with several
    annotations uses the one with the most labelled points (reported in the notes)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise PocketVisionError(f"{path}: file not found.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PocketVisionError(f"{path}: not valid JSON ({e}).") from None
    if not isinstance(d, dict) or not all(k in d for k in ("images", "annotations", "categories")):
        raise PocketVisionError(f"{path}: not a COCO file (needs 'images', 'annotations' and 'categories').")
    cats = [c for c in d["categories"] if c.get("keypoints")]
    if not cats:
        raise PocketVisionError(f"{path}: no category has 'keypoints' names; this is not a keypoints file.")
    if len(cats) > 1:
        raise PocketVisionError(f"{path}: {len(cats)} keypoint categories ({[c.get('name') for c in cats]}); "
                                "train one category per model (split the file).")
    cat = cats[0]
    names = list(cat["keypoints"])
    # COCO skeletons are 1-based.
    schema = make_schema(names, [(a - 1, b - 1) for a, b in cat.get("skeleton", [])], flip_pairs)
    k = len(names)
    images = {im["id"]: im for im in d["images"]}
    best: dict[Any, tuple[int, np.ndarray]] = {}
    several = 0
    for ann in d["annotations"]:
        if ann.get("category_id") != cat["id"]:
            continue
        kp = ann.get("keypoints")
        aid = ann.get("id", "?")
        if not isinstance(kp, list) or len(kp) != 3 * k:
            n = len(kp) // 3 if isinstance(kp, list) else 0
            raise PocketVisionError(f"{path}: annotation {aid} has {n} keypoints but the category names {k} "
                                    f"({names}); every annotation needs x, y, v for each point.")
        if ann.get("image_id") not in images:
            raise PocketVisionError(f"{path}: annotation {aid} refers to image_id {ann.get('image_id')} "
                                    "which is not in 'images'.")
        pts = np.asarray(kp, dtype=np.float32).reshape(k, 3)
        im = images[ann["image_id"]]
        size = (int(im["width"]), int(im["height"])) if "width" in im and "height" in im else None
        _check_points(pts, f"{path}: annotation {aid} ({im.get('file_name')})", size)
        n_lab = int((pts[:, 2] > 0).sum())
        if ann["image_id"] in best:
            several += 1
            if n_lab <= best[ann["image_id"]][0]:
                continue
        best[ann["image_id"]] = (n_lab, pts)
    base = path.parent
    samples, missing = [], []
    for iid, (_, pts) in best.items():
        im = images[iid]
        p = _resolve_image(base, im["file_name"])
        if not p.exists():
            missing.append(im["file_name"])
            continue
        size = (int(im["width"]), int(im["height"])) if "width" in im and "height" in im else None
        samples.append(KpSample(p, pts, size))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise PocketVisionError(f"{path}: {len(missing)} of {len(best)} annotated images are missing "
                                f"(looked under {base}): {shown}.")
    notes = []
    if several:
        notes.append(f"{several} extra annotations on images with several objects were not used")
    unannotated = len(images) - len(best)
    if unannotated:
        notes.append(f"{unannotated} images have no keypoint annotation")
    if not samples:
        raise PocketVisionError(f"{path}: no annotated images.")
    samples.sort(key=lambda s: str(s.path))
    return schema, samples, notes


def read_csv(path: str | Path, flip_pairs: str | list | None = None) -> tuple[KeypointSchema, list[KpSample], list[str]]:
    """``image,left_eye_x,left_eye_y,...`` (optional ``<name>_v`` columns); empty cells = not labelled.
    Image paths are relative to the CSV's folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PocketVisionError(f"{path}: file not found.") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows or not rows[0] or rows[0][0].strip().lower() not in ("image", "file", "file_name", "path"):
        raise PocketVisionError(f"{path}: the header must start with 'image' then <name>_x,<name>_y per point.")
    header = [h.strip() for h in rows[0]]
    names: list[str] = []
    cols: dict[str, dict[str, int]] = {}
    for j, h in enumerate(header[1:], 1):
        m = re.match(r"^(.+)_([xyv])$", h)
        if not m:
            raise PocketVisionError(f"{path}: header column {h!r} is not <name>_x, <name>_y or <name>_v.")
        name, axis = m.groups()
        if name not in cols:
            names.append(name)
            cols[name] = {}
        cols[name][axis] = j
    for n in names:
        if "x" not in cols[n] or "y" not in cols[n]:
            raise PocketVisionError(f"{path}: point {n!r} needs both {n}_x and {n}_y columns.")
    schema = make_schema(names, (), flip_pairs)
    samples, missing = [], []
    for ln, row in enumerate(rows[1:], 2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise PocketVisionError(f"{path}:{ln}: {len(row)} values but the header has {len(header)} columns.")
        pts = np.zeros((len(names), 3), np.float32)
        for i, n in enumerate(names):
            xs, ys = row[cols[n]["x"]].strip(), row[cols[n]["y"]].strip()
            if not xs and not ys:
                continue
            try:
                pts[i, 0], pts[i, 1] = float(xs), float(ys)
                pts[i, 2] = float(row[cols[n]["v"]]) if "v" in cols[n] and row[cols[n]["v"]].strip() else 2.0
            except ValueError:
                raise PocketVisionError(f"{path}:{ln}: point {n!r} has a non-numeric value ({xs!r}, {ys!r}).") from None
        p = _resolve_image(path.parent, row[0].strip())
        if not p.exists():
            missing.append(row[0].strip())
            continue
        from PIL import Image
        try:
            with Image.open(p) as im:
                size = im.size
        except OSError:
            size = None
        _check_points(pts, f"{path}:{ln} ({row[0].strip()})", size)
        samples.append(KpSample(p, pts, size))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise PocketVisionError(f"{path}: {len(missing)} images listed are missing: {shown}.")
    if not samples:
        raise PocketVisionError(f"{path}: no rows with images.")
    return schema, samples, []


def read_annotations(p: Path, flip_pairs) -> tuple[KeypointSchema, list[KpSample], list[str]]:
    """One annotation file, COCO JSON or CSV by its suffix -> (schema, samples, notes)."""
    if p.suffix.lower() == ".csv":
        return read_csv(p, flip_pairs)
    return read_coco(p, flip_pairs)


def is_keypoint_source(path: str | Path) -> bool:
    """A COCO keypoints JSON, a keypoints CSV, or a folder holding train.json/train.csv."""
    p = Path(path)
    if p.is_dir():
        return any((p / f"train{s}").exists() for s in (".json", ".csv"))
    return p.suffix.lower() in (".json", ".csv") and p.is_file()


def read_exclude(path: str | Path | None) -> set[str]:
    """A text file of images to leave out (one path or file name per line, ``#`` comments), e.g. the
    suspect labels ``pocketvision check --suspects-out`` lists."""
    if not path:
        return set()
    p = Path(path)
    if not p.exists():
        raise PocketVisionError(f"{p}: exclude list not found.")
    names = {ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
    # `check` writes paths relative to where it ran: resolve them against the working directory or the list's own
    # folder, and where neither finds the file (run from elsewhere), fall back to its file name.
    resolved = set()
    for n in names:
        q = Path(n)
        if not q.is_absolute():
            q = q if q.exists() or not (p.parent / q).exists() else p.parent / q
        resolved.add(str(q.resolve()) if q.exists() else q.name)
    return names | resolved


def drop_images(samples: list[KpSample], exclude: set[str]) -> list[KpSample]:
    """``samples`` without the images named in ``exclude`` (by file name, path as given, or resolved path)."""
    return [s for s in samples
            if s.path.name not in exclude and str(s.path) not in exclude and str(s.path.resolve()) not in exclude]


def load_keypoints(path: str | Path, *, val_fraction: float = 0.1, seed: int = 0,
                   flip_pairs: str | list | None = None, exclude: set[str] | None = None) -> KeypointSet:
    """A folder with ``train.json`` + ``val.json`` (or .csv) uses those splits; a single file gets a
    seeded random split. Images named in ``exclude`` are left out of both splits (counted in the notes)."""
    ks = _load_keypoints(path, val_fraction=val_fraction, seed=seed, flip_pairs=flip_pairs)
    if exclude:
        before = ks.train + ks.val
        ks.train, ks.val = drop_images(ks.train, exclude), drop_images(ks.val, exclude)
        kept = {s.path for s in ks.train + ks.val}
        ks.excluded = sorted(s.path.name for s in before if s.path not in kept)
        if not ks.excluded:
            raise PocketVisionError(f"{path}: none of the exclude list's entries names an image of this data set "
                                    "(list file names, or paths relative to where you run or to the list).")
        ks.notes.append(f"{len(ks.excluded)} images left out by the exclude list")
        if not ks.train or not ks.val:
            raise PocketVisionError(f"{path}: the exclude list leaves no {'train' if not ks.train else 'val'} images.")
    return ks


def _load_keypoints(path: str | Path, *, val_fraction: float, seed: int, flip_pairs) -> KeypointSet:
    p = Path(path)
    if not p.exists():
        raise PocketVisionError(f"{p}: no such file or folder.")
    if shards.is_shard_set(p):
        return _read_shards(p, flip_pairs)
    if p.is_dir():
        for suf in (".json", ".csv"):
            tr, va = p / f"train{suf}", p / f"val{suf}"
            if tr.exists():
                schema, train, notes = read_annotations(tr, flip_pairs)
                if va.exists():
                    vschema, val, vnotes = read_annotations(va, flip_pairs)
                    if vschema.names != schema.names:
                        raise PocketVisionError(f"{va}: points {list(vschema.names)} differ from {tr}'s "
                                                f"{list(schema.names)}.")
                    return KeypointSet(p, schema, train, val, True, notes + vnotes)
                return _split(p, schema, train, notes, val_fraction, seed)
        raise PocketVisionError(f"{p}: no train.json or train.csv inside (or pass the annotation file itself).")
    schema, samples, notes = read_annotations(p, flip_pairs)
    return _split(p, schema, samples, notes, val_fraction, seed)


def _read_shards(p: Path, flip_pairs) -> KeypointSet:
    """A shard set written by `pocketvision shards` from keypoint data: points and sizes in the stored pixels."""
    desc = shards.read_descriptor(p)
    try:
        saved = KeypointSchema.from_dict(desc["meta"]["schema"])
    except (KeyError, TypeError, ValueError):
        raise PocketVisionError(f"{p / shards.DESCRIPTOR}: a {desc.get('task')} shard set, not keypoints (no point "
                                f"schema); train it with --task {desc.get('task')}.") from None
    schema = make_schema(list(saved.names), saved.skeleton, flip_pairs) if flip_pairs is not None else saved
    out = KeypointSet(p, schema, explicit=True)
    for split in ("train", "val"):
        for path, ann in shards.samples(p, split):
            try:
                pts, size = np.asarray(ann["points"], np.float32), tuple(int(v) for v in ann["size"])
            except (KeyError, TypeError, ValueError):
                raise PocketVisionError(f"{path}: its annotation has no points and size.") from None
            if pts.shape != (len(schema.names), 3):
                raise PocketVisionError(f"{path}: {pts.shape[0]} points, the set has {len(schema.names)}.")
            getattr(out, split).append(KpSample(path, pts, size))
    if not out.train or not out.val:
        raise PocketVisionError(f"{p}: the shard set has no {'train' if not out.train else 'val'} samples.")
    return out


def _split(p: Path, schema, samples, notes, val_fraction, seed) -> KeypointSet:
    if len(samples) < 2:
        raise PocketVisionError(f"{p}: needs at least 2 annotated images to hold some out for validation.")
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(val_fraction * len(samples)))
    val = sorted(order[:n_val])
    val_set = set(val)
    return KeypointSet(p, schema, [samples[i] for i in order if i not in val_set], [samples[i] for i in val],
                       False, notes)
