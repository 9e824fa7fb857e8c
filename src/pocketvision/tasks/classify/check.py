"""``pocketvision check DATA``: find what will silently hurt training before spending an hour on it.

Leakage (the same photo in train and val) is the serious case: validation accuracy goes up and means
nothing. Everything else (imbalance, within-split duplicates, tiny, unreadable or stray files) is a
warning. Every problem carries the file paths so the user can go and fix them.

Speed: one read per file for the SHA-256 plus a header parse, and a JPEG *draft* decode (DCT scaled
1/8) to prove the file decodes: it still walks every entropy-coded byte, so truncation is caught, at a
fraction of a full decode. ~1,300 photos take about a second on one core.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFile, ImageFont, UnidentifiedImageError

from ...core import tar_members
from ...core.contract import is_image_file, load_rgb
from ...data import shards
from ...data.augment import Augmenter
from ...data.cache import PixelCache
from ...data.folder import SPLITS, Splits, scan
from ...errors import ImageDecodeError, PocketVisionError

IMBALANCE_WARN = 3.0  # max/min training images per class above which we warn
_GREY_TOL = 4  # max |R-G|, |G-B| (JPEG chroma noise) for an RGB file to count as a grey photo


@dataclass
class DuplicateGroup:
    sha256: str
    paths: list[str]
    splits: list[str]  # one per path
    classes: list[str]  # one per path
    cross_split: bool  # the same bytes in two splits: leakage
    cross_class: bool  # the same bytes under two labels: a labelling conflict


@dataclass
class CheckReport:
    root: str
    classes: list[str]
    explicit_splits: bool  # True: train/ + val/ folders; False: a seeded automatic split
    counts: dict[str, dict[str, int]]  # split -> class -> images
    imbalance: float  # max/min training images per class
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    tiny: list[dict[str, Any]] = field(default_factory=list)  # {path, width, height}
    unreadable: list[dict[str, str]] = field(default_factory=list)  # {path, reason}
    non_images: list[str] = field(default_factory=list)  # stray files in class folders
    non_rgb: list[dict[str, str]] = field(default_factory=list)  # {path, mode}: converted on load
    grayscale: list[str] = field(default_factory=list)  # decodes fine, but has no colour
    tiny_px: int = 64
    seconds: float = 0.0
    pixel_cache: str | None = None  # `pocketvision cache` of this folder, and what changed since

    @property
    def n_images(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    @property
    def leakage(self) -> list[DuplicateGroup]:
        return [g for g in self.duplicates if g.cross_split]

    @property
    def ok(self) -> bool:
        """No problem that invalidates training or validation (warnings may remain)."""
        return not self.leakage and not self.unreadable

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_images"], d["ok"] = self.n_images, self.ok
        return d


@contextmanager
def _strict_decoding():
    # A user script may have set LOAD_TRUNCATED_IMAGES = True globally; the check must still see truncation.
    old, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def _inspect(path: Path) -> dict[str, Any]:
    """Hash, header size/mode, and a proof that the file decodes the way training will load it."""
    info: dict[str, Any] = {"sha256": None, "size": None, "mode": None, "error": None, "grey": False}
    try:
        data = tar_members.read_bytes(path)
    except OSError as e:  # permissions, a file deleted mid-check, a broken cloud-drive placeholder
        info["error"] = f"cannot read ({e.strerror or e})"
        return info
    info["sha256"] = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:  # header only
            info["size"], info["mode"] = im.size, im.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        info["error"] = f"not an image ({e})"
        return info
    try:
        # Same function the loaders use (EXIF, mode conversion); min_size=(1, 1) = smallest JPEG draft.
        rgb = np.asarray(load_rgb(data, min_size=(1, 1)), dtype=np.int16)
    except ImageDecodeError as e:
        # Keep the decoder's reason, drop load_rgb's "<bytes>: not a readable image (...)" wrapper.
        m = re.search(r"not a readable image \((.*)\)\. ", str(e))
        info["error"] = m.group(1) if m else str(e).removeprefix("<bytes>: ")
        return info
    info["grey"] = bool(np.abs(rgb[..., 0] - rgb[..., 1]).max() <= _GREY_TOL
                        and np.abs(rgb[..., 1] - rgb[..., 2]).max() <= _GREY_TOL)
    return info


def _class_folders(splits: Splits) -> list[Path]:
    if splits.explicit:
        return [splits.root / s / c for s in SPLITS for c in splits.classes if (splits.root / s / c).is_dir()]
    return [splits.root / c for c in splits.classes]


def check_dataset(root: str | os.PathLike, val_fraction: float = 0.15, seed: int = 0, tiny: int = 64) -> CheckReport:
    """Inspect an image-folder data set. Raises PocketVisionError only when the layout is unusable."""
    t0 = time.perf_counter()
    if not isinstance(tiny, int) or tiny < 1:
        raise PocketVisionError(f"tiny must be a positive number of pixels. Got {tiny!r}.")
    splits = scan(root, val_fraction=val_fraction, seed=seed)
    counts = splits.counts()
    train = list(counts["train"].values())
    report = CheckReport(root=str(splits.root), classes=list(splits.classes), explicit_splits=splits.explicit,
                         counts=counts, imbalance=round(max(train) / max(1, min(train)), 2), tiny_px=tiny)

    by_hash: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    with _strict_decoding():
        for split in SPLITS:
            for s in getattr(splits, split):
                path, cls = str(s.path), splits.classes[s.label]
                info = _inspect(s.path)
                if info["sha256"]:
                    by_hash[info["sha256"]].append((path, split, cls))
                if info["error"]:
                    report.unreadable.append({"path": path, "reason": info["error"]})
                    continue
                w, h = info["size"]
                if min(w, h) < tiny:
                    report.tiny.append({"path": path, "width": w, "height": h})
                if info["mode"] != "RGB":
                    report.non_rgb.append({"path": path, "mode": info["mode"]})
                if info["grey"]:
                    report.grayscale.append(path)

    for digest, files in by_hash.items():
        if len(files) > 1:
            paths, in_splits, in_classes = (list(t) for t in zip(*sorted(files)))
            report.duplicates.append(DuplicateGroup(digest, paths, in_splits, in_classes,
                                                    cross_split=len(set(in_splits)) > 1,
                                                    cross_class=len(set(in_classes)) > 1))
    report.duplicates.sort(key=lambda g: (not g.cross_split, not g.cross_class, g.paths[0]))
    # Files the loader skips without a word: a README, a .txt label, a .heic the user thinks is included.
    report.non_images = sorted(str(p) for d in _class_folders(splits) for p in d.rglob("*")
                               if p.is_file() and not p.name.startswith(".") and not is_image_file(p))
    pc = PixelCache.find(root, 1)
    report.pixel_cache = pc.describe() if pc else None
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


# -- terminal output ---------------------------------------------------------------------------------
_MAX_LISTED = 10  # paths per warning; the JSON report has all of them


def render_check(report: CheckReport, console: Any = None) -> None:
    """Print the report as rich tables: counts first, then warnings, most serious first."""
    from rich.console import Console
    from rich.markup import escape

    console = console or Console()
    root = Path(report.root)

    def rel(p: str) -> str:  # escaped: a file called "menu[1].jpg" is not rich markup
        try:
            return escape(str(Path(p).relative_to(root)))
        except ValueError:
            return escape(p)

    _render_counts(report, console)
    problems = _render_problems(report, console, rel)
    console.print()
    _render_notes(report, console)
    if not problems:
        console.print("[bold green]No problems found.")
    console.print(f"[dim]Checked in {report.seconds:.1f} s.")


def _render_counts(report: CheckReport, console: Any) -> None:
    """The images per class and split."""
    from rich.markup import escape
    from rich.table import Table

    root = Path(report.root)
    how = ("the shard set's own splits" if shards.is_shard_set(root) else "train/val folders"
           if report.explicit_splits else "automatic seeded split")
    splits = [s for s in SPLITS if s != "test" or sum(report.counts["test"].values())]
    # Titles are printed as lines, not Table(title=...), which would wrap them to the table's width.
    console.print(f"[bold]{escape(report.root)}[/]: {report.n_images} images, {len(report.classes)} classes ({how})")
    t = Table()
    t.add_column("class")
    for s in splits:
        t.add_column(s, justify="right")
    t.add_column("total", justify="right", style="bold")
    for c in report.classes:
        row = [report.counts[s][c] for s in splits]
        t.add_row(escape(c), *map(str, row), str(sum(row)))
    totals = [sum(report.counts[s].values()) for s in splits]
    t.add_section()
    t.add_row("[bold]all", *(f"[bold]{n}" for n in totals), str(sum(totals)))
    console.print(t)
    if report.pixel_cache:
        console.print(escape(report.pixel_cache))


def _render_problems(report: CheckReport, console: Any, rel) -> int:
    """Each kind of problem found, most serious first -> how many kinds."""
    from rich.markup import escape
    from rich.table import Table

    def listing(title: str, style: str, rows: list[tuple[str, ...]], headers: tuple[str, ...]) -> None:
        console.print(f"\n[{style}]{title}")
        table = Table(show_edge=False, header_style="dim")
        for hd in headers:
            table.add_column(hd, overflow="fold")
        for r in rows[:_MAX_LISTED]:
            table.add_row(*r)
        if len(rows) > _MAX_LISTED:
            table.add_row(f"... and {len(rows) - _MAX_LISTED} more (see the JSON report)", *[""] * (len(headers) - 1))
        console.print(table)

    problems = 0
    if report.leakage:
        problems += 1
        rows = [(str(i), s, rel(p)) for i, g in enumerate(report.leakage, 1) for p, s in zip(g.paths, g.splits)]
        conflict = sum(g.cross_class for g in report.leakage)
        note = f" ({conflict} under two labels)" if conflict else ""
        listing(f"LEAKAGE: {len(report.leakage)} group(s) of identical files in more than one split{note}; "
                "validation scores will be optimistic. Keep one copy of each.", "bold red", rows,
                ("group", "split", "file"))
    if report.unreadable:
        problems += 1
        listing(f"Unreadable: {len(report.unreadable)} file(s) do not decode; training skips them. "
                "Re-export or delete them.", "bold red",
                [(rel(u["path"]), escape(u["reason"])) for u in report.unreadable], ("file", "reason"))
    if report.imbalance > IMBALANCE_WARN:
        problems += 1
        tr = {escape(k): v for k, v in report.counts["train"].items()}
        console.print(f"\n[yellow]Class imbalance: {report.imbalance:g}x between the largest "
                      f"({max(tr, key=tr.get)}: {max(tr.values())}) and smallest ({min(tr, key=tr.get)}: "
                      f"{min(tr.values())}) training class. Add images or expect the small class to suffer.")
    within = [g for g in report.duplicates if not g.cross_split]
    if within:
        problems += 1
        rows = [(str(i), escape(c), rel(p)) for i, g in enumerate(within, 1) for p, c in zip(g.paths, g.classes)]
        conflict = sum(g.cross_class for g in within)
        note = f", {conflict} of them under two labels" if conflict else ""
        listing(f"Duplicates: {len(within)} group(s) of identical files within a split{note}; they count "
                "twice in training.", "yellow", rows, ("group", "class", "file"))
    if report.tiny:
        problems += 1
        listing(f"Tiny: {len(report.tiny)} image(s) under {report.tiny_px} px on the short side; they are "
                "upscaled into blur.", "yellow",
                [(rel(t["path"]), f"{t['width']}x{t['height']}") for t in report.tiny], ("file", "size"))
    if report.non_images:
        problems += 1
        listing(f"Not images: {len(report.non_images)} file(s) in class folders are ignored "
                "(jpg/jpeg/png/webp/bmp only).", "yellow", [(rel(p),) for p in report.non_images], ("file",))
    return problems


def _render_notes(report: CheckReport, console: Any) -> None:
    """What is worth knowing but needs no action."""
    info = []
    if report.non_rgb:
        modes: dict[str, int] = defaultdict(int)
        for f in report.non_rgb:
            modes[f["mode"]] += 1
        info.append(f"{len(report.non_rgb)} non-RGB file(s) ({', '.join(f'{n} {m}' for m, n in sorted(modes.items()))}) "
                    "are converted to RGB on load; transparency becomes white.")
    if report.grayscale:
        info.append(f"{len(report.grayscale)} image(s) have no colour (black-and-white photos).")
    for line in info:
        console.print(f"[dim]Note: {line}")


# -- augmentation preview ----------------------------------------------------------------------------
def _pick(splits: Splits, n: int, rng: np.random.Generator) -> list:
    """n training samples, classes taken in turn so that a small class is not missing from the sheet."""
    per_class = [[s for s in splits.train if s.label == i] for i in range(len(splits.classes))]
    per_class = [[c[j] for j in rng.permutation(len(c))] for c in per_class if c]
    picked: list = []
    k = 0
    while len(picked) < n:  # wraps around: small data sets show several augmentations of one photo
        for c in per_class:
            if len(picked) < n:
                picked.append(c[k % len(c)])
        k += 1
    return picked


def write_preview(splits: Splits, out_png: str | os.PathLike, augmenter: Augmenter, n: int = 24, seed: int = 0,
                  cols: int = 6) -> Path:
    """A contact sheet of augmented training samples with their class names, written atomically."""
    if n < 1 or cols < 1:
        raise PocketVisionError(f"preview needs n >= 1 and cols >= 1. Got n={n}, cols={cols}.")
    if not splits.train:
        raise PocketVisionError(f"{splits.root}: no training images to preview.")
    out = Path(out_png)
    rng = np.random.default_rng(seed)
    h, w = augmenter.contract.size
    pad, cap = 4, 16  # gap between tiles, caption band height
    cols = min(cols, n)
    rows = -(-n // cols)
    sheet = Image.new("RGB", (pad + cols * (w + pad), pad + rows * (h + cap + pad)), (30, 30, 30))
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    for i, s in enumerate(_pick(splits, n, rng)):
        x, y = pad + (i % cols) * (w + pad), pad + (i // cols) * (h + cap + pad)
        name = splits.classes[s.label]
        try:
            tile = augmenter(load_rgb(s.path, min_size=augmenter.decode_hint()), rng)
            sheet.paste(Image.fromarray(tile), (x, y))
        except ImageDecodeError:
            name = f"{name} (UNREADABLE)"
        if draw.textlength(name, font=font) > w:  # long class names: cut, keep the sheet's grid
            while len(name) > 1 and draw.textlength(name + "...", font=font) > w:
                name = name[:-1]
            name += "..."
        draw.text((x + (w - draw.textlength(name, font=font)) / 2, y + h + 2), name, fill=(235, 235, 235), font=font)

    out.parent.mkdir(parents=True, exist_ok=True)
    # Temp file in the same folder + os.replace: a viewer or a crash never sees half a PNG.
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            sheet.save(f, format="PNG")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
