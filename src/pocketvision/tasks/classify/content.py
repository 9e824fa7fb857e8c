"""What a folder of classes holds, seen by a pretrained network, and what it cannot teach (``pocketvision check``).

A model learns whatever separates the classes in the photos it is given. When one class's photos are all dishes and
the other's are birds and buildings, "food or not" separates them as well as "hot dog or not", and the model learns
the easier one; it then calls every burger a hot dog. No training option repairs that: the photos that would teach
the difference are missing. So before training, the ImageNet-pretrained network reads every class:

- what each class holds: its photos' most common ImageNet categories and broad groups (animals, food, ...), and a few
  clusters of its photos in the network's feature space, each with example photos (``--content-sheet`` draws them);
- what is missing: for a class that anchors to ImageNet categories (``models/imagenet_head.py``), the other classes
  should hold some photos that look like it (ImageNet's nearest categories to its own). Too few, and the report
  says which photos to add, in one sentence.

Imports torch (the network) inside its functions only; the check's other parts stay torch-free.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...core.bundle_file import atomic_write_bytes
from ...core.contract import Contract, load_rgb
from ...errors import ImageDecodeError, PocketVisionError

NEIGHBOURS = 20  # ImageNet categories nearest a class's own (cosine of the head's weights): its look-alikes
# A photo looks like a class when one of the class's categories or their neighbours is in its top 5. The other
# classes should hold at least one such photo for every five of the class's own: fewer, and nothing in the data
# tells the class from its look-alikes (hot dog set: about 1 in 6.7; with the food-shift pool's dishes added, 1 in 3.2).
LOOKALIKE_RATIO = 0.2
GROUP_SHARE = 0.6  # a class "is" a broad group when this share of its photos fall in it
# ImageNet-1k's categories come in WordNet order, so contiguous ranges are its broad groups.
GROUPS = (("animals", range(0, 398)), ("objects", range(398, 923)), ("food", range(923, 970)),
          ("landscapes", range(970, 981)), ("people", range(981, 984)), ("plants", range(984, 999)))
GROUP_OF = np.full(1000, "objects", dtype=object)
for _name, _r in GROUPS:
    GROUP_OF[list(_r)] = _name
GROUP_OF[958] = "plants"  # hay, inside the food range


@dataclass
class ClassContent:
    name: str
    photos: int  # photos read (at most ``max_per_class`` of the class's training photos)
    total: int  # the class's training photos
    categories: list[dict[str, Any]]  # top ImageNet categories: {name, index, photos, share}
    groups: dict[str, float]  # broad group -> share of the photos
    anchors: list[str] | str | None  # its ImageNet categories (names), "rest", or None
    clusters: list[dict[str, Any]] = field(default_factory=list)  # {photos, category, examples: [paths]}


@dataclass
class Gap:
    """``missing_in`` holds too few photos that look like ``like``."""

    missing_in: str
    like: str
    lookalikes: int  # estimated over all of ``missing_in``'s training photos
    needed: int
    group: str | None  # the broad group ``like`` belongs to, when it has one
    group_share: float | None  # share of ``missing_in``'s photos in that group
    like_group_share: float | None
    neighbours: list[str]  # ImageNet's nearest categories to ``like``'s own
    sentence: str


@dataclass
class ContentReport:
    arch: str
    classes: list[ClassContent]
    gaps: list[Gap]
    seconds: float
    sheet: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gap_sentence(g: Gap) -> str:
    names = ", ".join(g.neighbours[:4])
    if g.group is not None and g.group_share is not None and g.like_group_share is not None:
        return (f"{g.missing_in} has few {g.group} photos ({g.group_share:.0%}, against {g.like_group_share:.0%} of "
                f"{g.like}), so a model may learn \"{g.group} or not {g.group}\" instead of {g.like}: add photos of "
                f"other {g.group} to {g.missing_in}, most of all the kind that looks like {g.like} ({names}).")
    return (f"{g.missing_in} has few photos that look like {g.like} (about {g.lookalikes}; {g.needed} would be one for "
            f"every five), so a model may learn what sets these photos apart rather than {g.like}: add photos of "
            f"{names} to {g.missing_in}.")


def analyse(samples_by_class: dict[str, list[Path]], arch: str = "efficientnet_lite0", max_per_class: int = 300,
            clusters: int = 4, seed: int = 0, console: Any = None) -> ContentReport:
    """Read each class's training photos (at most ``max_per_class``, drawn with ``seed``) with the pretrained
    network -> what each class holds and what is missing. Unreadable photos are skipped (the check lists them)."""
    import time

    import torch

    from ...models import build_model, model_entry
    from ...models.imagenet_head import anchor_classes, imagenet_names

    t0 = time.perf_counter()
    entry = model_entry(arch)
    if not entry.pretrained or "imagenet_classes" not in entry.default_args:
        raise PocketVisionError(f"the content check reads photos with an ImageNet-pretrained network; {arch} is "
                                "not one. Use efficientnet_lite0.")
    contract = Contract.from_dict(entry.default_contract)
    net = build_model({"name": arch, "args": {"num_classes": 1000}}, pretrained=True).eval()
    names = imagenet_names()
    rng = np.random.default_rng(seed)
    labels = list(samples_by_class)
    picked: dict[str, list[Path]] = {}
    for c in labels:
        paths = list(samples_by_class[c])
        picked[c] = [paths[i] for i in sorted(rng.permutation(len(paths))[:max_per_class])]
    pixels, feats, logits, ys, kept = [], [], [], [], []
    for ci, c in enumerate(labels):
        for p in picked[c]:
            try:
                pixels.append(contract.load(p))
            except ImageDecodeError:
                continue
            ys.append(ci), kept.append(p)
    if not kept:
        raise PocketVisionError("no readable training photos to read.")
    px = np.stack(pixels)
    with torch.no_grad():
        for i in range(0, len(px), 64):
            f = net.forward_features(torch.from_numpy(contract.normalize(px[i:i + 64])))
            feats.append(f.numpy()), logits.append(net.classifier(f).numpy())
    f_all, z_all, y = np.concatenate(feats), np.concatenate(logits), np.array(ys)
    top1, top5 = z_all.argmax(1), np.argsort(-z_all, 1)[:, :5]
    anchor = anchor_classes(top1, y, len(labels))
    w = net.classifier.weight.detach()
    w = (w / w.norm(dim=1, keepdim=True)).numpy()

    contents = []
    for ci, c in enumerate(labels):
        mine = top1[y == ci]
        n = len(mine)
        cats, counts = np.unique(mine, return_counts=True) if n else (np.array([], int), np.array([], int))
        order = np.argsort(-counts)[:5]
        groups: dict[str, float] = {}
        for g in GROUP_OF[mine]:
            groups[g] = groups.get(g, 0) + 1 / max(1, n)
        a = anchor.classes[ci]
        contents.append(ClassContent(
            c, n, len(samples_by_class[c]),
            [{"name": names[int(cats[k])], "index": int(cats[k]), "photos": int(counts[k]),
              "share": float(counts[k] / n)} for k in order],
            dict(sorted(groups.items(), key=lambda t: -t[1])),
            a if a in (None, "rest") else [names[k] for k in a],
            _clusters(f_all[y == ci], mine, [p for p, yy in zip(kept, ys) if yy == ci], clusters, seed, names)))

    gaps = _gaps(labels, anchor, contents, w, top5, y, names)
    report = ContentReport(arch, contents, gaps, time.perf_counter() - t0)
    return report


def _gaps(labels: list[str], anchor, contents: list[ClassContent], w: np.ndarray, top5: np.ndarray, y: np.ndarray,
          names: list[str]) -> list[Gap]:
    """For each anchored class, the other classes with too few photos from its ImageNet neighbourhood."""
    gaps = []
    for ci, c in enumerate(labels):
        own = anchor.classes[ci]
        if not isinstance(own, list):
            continue  # a class that does not anchor has no ImageNet neighbourhood to measure against
        sim = (w @ w[own].T).max(1)
        sim[own] = -np.inf
        near = [int(k) for k in np.argsort(-sim)[:NEIGHBOURS]]
        lookalike = np.isin(top5, near + list(own)).any(1)
        own_group = max(contents[ci].groups.items(), key=lambda t: t[1], default=(None, 0.0))
        group = own_group[0] if own_group[1] >= GROUP_SHARE else None
        needed = max(5, int(np.ceil(LOOKALIKE_RATIO * contents[ci].total)))
        for oi, o in enumerate(labels):
            if oi == ci or not contents[oi].photos:
                continue
            share = float(lookalike[y == oi].mean())
            estimate = int(round(share * contents[oi].total))
            if estimate >= needed:
                continue
            g = Gap(o, c, estimate, needed, group, contents[oi].groups.get(group, 0.0) if group else None,
                    own_group[1] if group else None, [names[k] for k in near], "")
            g.sentence = _gap_sentence(g)
            gaps.append(g)
    return gaps


def _clusters(f: np.ndarray, top1: np.ndarray, paths: list[Path], k: int, seed: int, names: list[str]
              ) -> list[dict[str, Any]]:
    """k-means on the class's L2-normalised features: each cluster's size, its most common ImageNet category and the
    photos nearest its centre."""
    if len(f) < 2 or k < 1:
        return []
    from sklearn.cluster import KMeans
    x = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-9)
    k = min(k, max(1, len(f) // 10))
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
    out = []
    for j in np.argsort(-np.bincount(km.labels_, minlength=k)):
        idx = np.flatnonzero(km.labels_ == j)
        cats, counts = np.unique(top1[idx], return_counts=True)
        near = idx[np.argsort(((x[idx] - km.cluster_centers_[j]) ** 2).sum(1))[:6]]
        gs, gc = np.unique(GROUP_OF[top1[idx]].astype(str), return_counts=True)
        out.append({"photos": int(len(idx)), "group": str(gs[gc.argmax()]), "group_share": float(gc.max() / len(idx)),
                    "category": names[int(cats[counts.argmax()])], "category_share": float(counts.max() / len(idx)),
                    "examples": [str(paths[i]) for i in near]})
    return out


def render(report: ContentReport, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table
    console.print(f"\n[bold]What each class holds[/] (ImageNet {report.arch}, {report.seconds:.0f} s)")
    t = Table(show_edge=False, header_style="dim")
    for h in ("class", "photos read", "broad groups", "top ImageNet categories",
              "clusters (photos: broad group, commonest category)"):
        t.add_column(h, overflow="fold")
    for c in report.classes:
        groups = ", ".join(f"{g} {s:.0%}" for g, s in list(c.groups.items())[:3])
        cats = ", ".join(f"{d['name']} {d['share']:.0%}" for d in c.categories[:4])
        cl = "; ".join(f"{d['photos']}: {d['group']} {d['group_share']:.0%} ({d['category']})" for d in c.clusters)
        t.add_row(escape(c.name), f"{c.photos} of {c.total}", groups, escape(cats), escape(cl))
    console.print(t)
    for g in report.gaps:
        console.print(f"[bold yellow]What the data cannot teach:[/] {escape(g.sentence)}")
    if not report.gaps:
        console.print("[green]Each class that maps to ImageNet categories has look-alikes among the other classes' "
                      "photos.[/]" if any(isinstance(c.anchors, list) for c in report.classes) else
                      "[dim]No class maps to ImageNet categories, so look-alikes were not measured.[/]")
    if report.sheet:
        console.print(f"[dim]clusters with example photos: {escape(report.sheet)}[/]")


def write_sheet(report: ContentReport, out_png: str | os.PathLike, tile: int = 96) -> Path:
    """A PNG with one row per cluster of each class: its caption and its example photos, written atomically."""
    from PIL import Image, ImageDraw, ImageFont

    rows = [(c.name, d) for c in report.classes for d in c.clusters]
    if not rows:
        raise PocketVisionError("no clusters to draw (too few photos per class).")
    pad, cap, per = 4, 14, 6
    sheet = Image.new("RGB", (pad + per * (tile + pad), pad + len(rows) * (tile + cap + pad)), (30, 30, 30))
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    for r, (name, d) in enumerate(rows):
        y = pad + r * (tile + cap + pad)
        caption = f"{name}: {d['photos']} photos, {d['group_share']:.0%} {d['group']}, commonest {d['category']}"
        draw.text((pad, y), caption, fill=(235, 235, 235), font=font)
        for i, p in enumerate(d["examples"][:per]):
            try:
                im = load_rgb(p, min_size=(tile, tile))
            except ImageDecodeError:
                continue
            im.thumbnail((tile, tile))
            sheet.paste(im, (pad + i * (tile + pad), y + cap))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    out = atomic_write_bytes(out_png, buf.getvalue())
    report.sheet = str(out)
    return out
