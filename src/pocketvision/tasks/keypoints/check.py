"""``pocketvision check`` for keypoint data: per-point visibility, points outside the image, unreadable
images, and a preview grid of *augmented* samples with the points and skeleton drawn (each point keeps
its colour, so a mirrored image whose eyes were not swapped shows at a glance).
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ...core import tar_members
from ...core.bundle_file import atomic_write_bytes
from ...core.contract import Contract, load_rgb
from ...errors import ImageDecodeError
from .annotations import KeypointSet, load_keypoints
from .augment import KeypointAugmenter

# Distinct colours per point index (tab10).
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


SUSPECT_Z = 5.0  # robust z-score (in MADs) beyond which a label's placement is reported
MIN_FOR_SUSPECTS = 50


def suspect_labels(samples, z_max: float = SUSPECT_Z) -> list[dict[str, Any]]:
    """Annotations placed unlike the rest: where the labelled points sit in the frame (centroid x, y as a
    fraction of the image) and how spread they are, compared by robust z-scores (median / MAD). In a
    set of crops of one kind of object, a label far from all the others is almost always a labelling or
    conversion error (faces5: 22% of its web faces have every point shifted up onto the hair).
    Reported for review, never dropped silently."""
    have = [s for s in samples if s.size and (s.points[:, 2] > 0).sum() >= 2]
    if len(have) < MIN_FOR_SUSPECTS:
        return []
    p = np.stack([s.points for s in have]).astype(np.float64)
    sz = np.array([s.size for s in have], np.float64)
    lab = p[..., 2] > 0
    c = (p[..., :2] * lab[..., None]).sum(1) / lab.sum(1)[:, None] / sz
    spread = (np.linalg.norm(p[..., :2] / sz[:, None] - c[:, None], axis=2) * lab).sum(1) / lab.sum(1)
    feats = np.c_[c, spread]
    med = np.median(feats, 0)
    mad = 1.4826 * np.median(np.abs(feats - med), 0) + 1e-9
    z = np.abs(feats - med) / mad
    out = []
    for i in np.flatnonzero(z.max(1) > z_max):
        k = int(z[i].argmax())
        what = ("placed off to the side", "placed too high" if feats[i, 1] < med[1] else "placed too low",
                "spread too small" if feats[i, 2] < med[2] else "spread too wide")[k]
        if k == 0:
            what = "placed too far left" if feats[i, 0] < med[0] else "placed too far right"
        out.append({"image": str(have[i].path), "why": what, "z": round(float(z[i, k]), 1)})
    return out


def check_keypoints(source, val_fraction: float = 0.1, seed: int = 0, flip_pairs=None) -> dict[str, Any]:
    ks = load_keypoints(source, val_fraction=val_fraction, seed=seed, flip_pairs=flip_pairs)
    names = ks.schema.names
    rep: dict[str, Any] = {"task": "keypoints", "source": str(ks.source), "points": list(names),
                           "flip_pairs": [[names[a], names[b]] for a, b in ks.schema.flip_pairs],
                           "skeleton": [[names[a], names[b]] for a, b in ks.schema.skeleton],
                           "explicit_splits": ks.explicit, "notes": ks.notes, "splits": {}}
    unreadable = []
    for split in ("train", "val"):
        samples = getattr(ks, split)
        if not samples:
            continue
        pts = np.stack([s.points for s in samples])
        vis = {n: {"not_labelled": int((pts[:, k, 2] == 0).sum()), "hidden": int((pts[:, k, 2] == 1).sum()),
                   "visible": int((pts[:, k, 2] == 2).sum())} for k, n in enumerate(names)}
        outside = {}
        for k, n in enumerate(names):
            bad = [s.path.name for s in samples if s.size and s.points[k, 2] > 0 and not
                   (0 <= s.points[k, 0] <= s.size[0] and 0 <= s.points[k, 1] <= s.size[1])]
            if bad:
                outside[n] = {"count": len(bad), "examples": bad[:5]}
        sus = suspect_labels(samples)
        rep["splits"][split] = {"images": len(samples), "visibility": vis, "outside_image": outside,
                                "suspect_labels": sus}
    for s in ks.train + ks.val:
        try:
            with Image.open(io.BytesIO(tar_members.read_bytes(s.path))) as im:  # a file, or a shard's member
                im.verify()
        except Exception as e:  # noqa: BLE001 - any decoder complaint = unreadable
            unreadable.append(f"{s.path}: {e}")
    rep["unreadable"] = unreadable
    return rep


def render_keypoint_check(rep: dict[str, Any], console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    console.print(f"[bold]{rep['source']}[/]: {len(rep['points'])} points; flip pairs "
                  f"{', '.join(':'.join(p) for p in rep['flip_pairs']) or 'none'}")
    for split, s in rep["splits"].items():
        t = Table(title=f"{split}: {s['images']} images")
        for c in ("point", "visible", "hidden", "not labelled", "outside image"):
            t.add_column(c, justify="left" if c == "point" else "right")
        for n, v in s["visibility"].items():
            t.add_row(n, str(v["visible"]), str(v["hidden"]), str(v["not_labelled"]),
                      str(s["outside_image"].get(n, {}).get("count", 0)))
        console.print(t)
    for split, s in rep["splits"].items():
        sus = s["suspect_labels"]
        if sus:
            console.print(f"[yellow]{split}: {len(sus)} suspect labels[/] (placed unlike the other "
                          f"{s['images'] - len(sus)}; review them, or leave them out with --exclude FILE "
                          "after `check --suspects-out FILE`), e.g.:")
            for x in sus[:5]:
                console.print(f"  {x['image']}: {x['why']} ({x['z']} MADs)")
    for note in rep["notes"]:
        console.print(f"[yellow]note[/] {note}")
    if rep["unreadable"]:
        console.print(f"[red]{len(rep['unreadable'])} unreadable images[/]")
        for u in rep["unreadable"][:10]:
            console.print(f"  {u}")


def draw(img: Image.Image, points: np.ndarray, skeleton=(), r: float = 2.0) -> Image.Image:
    img = img.copy()
    d = ImageDraw.Draw(img)
    for a, b in skeleton:
        if points[a, 2] > 0 and points[b, 2] > 0:
            d.line([tuple(points[a, :2]), tuple(points[b, :2])], fill=(255, 255, 255), width=1)
    for k, (x, y, v) in enumerate(points[:, :3]):
        if v > 0:
            d.ellipse([x - r, y - r, x + r, y + r], fill=PALETTE[k % len(PALETTE)])
    return img


def write_keypoint_preview(ks: KeypointSet, out_png: str | os.PathLike, size: int = 128, n: int = 24,
                           seed: int = 0, augment: dict | None = None) -> None:
    """A grid: each row shows a sample plain, then augmented three times (same colours per point)."""
    rng = np.random.default_rng(seed)
    contract = Contract(size=(size, size), resize="squash")
    aug = KeypointAugmenter(augment or {}, contract, ks.schema.flip_perm)
    plain = KeypointAugmenter({"enabled": False}, contract, ks.schema.flip_perm)
    picks = rng.permutation(len(ks.train))[:max(1, n // 4)]
    cols, rows = 4, len(picks)
    grid = Image.new("RGB", (cols * size, rows * size), (0, 0, 0))
    for r, i in enumerate(picks):
        s = ks.train[int(i)]
        try:
            img = load_rgb(s.path)
        except ImageDecodeError:
            continue
        for c in range(cols):
            x, p = (plain if c == 0 else aug)(img, s.points, rng)
            grid.paste(draw(Image.fromarray(x), p, ks.schema.skeleton), (c * size, r * size))
    import io
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    atomic_write_bytes(out_png, buf.getvalue())
