"""Verbs about the photos: check, label, import, cache, shards, fetch-shards, info."""

from __future__ import annotations

import argparse
import typing

from ..data.cache import build
from ..data.taught import taught_to_folder
from ..label.server import run
from ..pipeline.options import TaskName
from ..tasks import get_task
from ..tasks.base import detect_task, parse_options, refuse_foreign
from .common import _given, _kv, _print_json, _task_models, add_option_flags


def cmd_cache(a: argparse.Namespace) -> int:
    _, stats = build(a.data, a.size, a.cache_dir, a.threads, log=lambda m: print(m, flush=True), encoding=a.format,
                     quality=a.quality)
    if a.json:
        _print_json(stats)
    else:
        for problem in stats["unreadable"]:
            print(f"skipped unreadable image {problem}")
        print(f"{stats['images']} images at {a.size} px, {stats['stored_as']}, in {stats['folder']} "
              f"({stats['megabytes']} MB, "
              f"{stats['shards']} shard(s)): {stats['decoded']} decoded, {stats['reused']} unchanged, "
              f"{stats['removed']} removed, in {stats['seconds']} s")
    return 0


def cmd_shards(a: argparse.Namespace) -> int:
    from ..api import write_shards
    st = write_shards(a.data, a.out, task=a.task, size=a.size, quality=a.quality, shard_mb=a.shard_mb,
                      val_fraction=a.val_fraction, seed=a.seed, threads=a.threads, log=lambda m: print(m, flush=True))
    if a.json:
        _print_json(st)
    else:
        for problem in st["unreadable"]:
            print(f"skipped unreadable image {problem}")
        counts = ", ".join(f"{k} {v}" for k, v in st["samples"].items())
        print(f"{st['task']} shards in {st['folder']}: {counts} ({st['shards']} shard(s), {st['megabytes']} MB, "
              f"{st['seconds']} s); train on them: pocketvision train {st['folder']}")
    return 0


def cmd_fetch_shards(a: argparse.Namespace) -> int:
    from ..api import fetch_shards
    st = fetch_shards(a.url, a.out, a.threads)
    if a.json:
        _print_json(st)
    else:
        print(f"{st['folder']}: {st['fetched']} shard(s) fetched, {st['kept']} already there and complete "
              f"({st['megabytes']} MB, {st['seconds']} s)")
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    task = get_task(a.task) if a.task != "auto" else detect_task(a.data)
    given = _given(a, [m for _, m in _task_models("CheckOptions")])
    refuse_foreign(task, given, "CheckOptions", "check")
    report, render = task.check(a.data, parse_options(task.CheckOptions, given, "check"))
    if getattr(a, "preview", None):
        report["preview"] = str(a.preview)
    if a.json:
        _print_json(report)
    else:
        from rich.console import Console
        render(Console())
        if getattr(a, "preview", None):
            print(f"preview: {a.preview}")
    return 0


def cmd_label(a: argparse.Namespace) -> int:
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    run(a.dir, split(a.keypoints), split(a.classes), out=a.out, host=a.host, port=a.port,
        open_browser=not a.no_browser, model=a.model, order=a.order, folders=a.folders,
        log=lambda m: print(m, flush=True))  # flushed: scripts read the URL from a pipe
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from ..models import list_models, model_info
    arch, arch_args, side = a.arch, dict(a.arch_args), a.size
    if arch and arch.startswith("searched:"):  # a `pocketvision search` architecture file
        from ..models.searched import load_searched
        loaded, resolution = load_searched(arch.split(":", 1)[1])
        arch, arch_args, side = "searched", {**loaded, **arch_args}, side or resolution
    size = {"size": (side, side)} if side else {}
    names = [arch] if arch else list_models(a.pattern or "*")
    rows = [model_info(n, **size, **(arch_args if arch else {})) for n in names]
    if a.json:
        _print_json(rows[0] if arch else rows)
        return 0
    from rich.console import Console
    from rich.table import Table
    t = Table(title="pocketvision models")
    for col in ("arch", "args", "input", "params", "MACs", "weights (fp32)", "ImageNet weights"):
        t.add_column(col, justify="left" if col in ("arch", "args") else "right")
    blocks = arch_args.pop("blocks", None) if arch else None
    for r in rows:
        shown = ", ".join(f"{k}={v}" for k, v in arch_args.items()) if arch else ""
        t.add_row(r["name"], shown or "defaults", "x".join(map(str, r["size"])),
                  f"{r['params'] / 1e6:.2f} M", f"{r['macs'] / 1e6:.0f} M", f"{r['weight_mb']:.2f} MB",
                  "yes" if r.get("pretrained") else "no")
    Console().print(t)
    if blocks:
        from ..models.searched import check_blocks
        bt = Table(title="blocks")
        for col in ("#", "op", "out", "k", "stride", "expand", "act", "SE", "skip", "BN"):
            bt.add_column(col)
        for i, b in enumerate(check_blocks(blocks)):
            bt.add_row(str(i), b["op"], str(b["out"]), str(b["k"]), str(b["stride"]),
                       str(b["expand"]) if b["op"] == "mbconv" else "-", b["act"], "yes" if b["se"] else "no",
                       "yes" if b["skip"] else "no", b["bn"])
        Console().print(bt)
    return 0


def cmd_import(a: argparse.Namespace) -> int:
    r = taught_to_folder(a.taught, a.into)
    if a.json:
        _print_json(r)
    else:
        n = sum(r["added"].values())
        print(f"added {n} photo{'s' * (n != 1)} of {len(r['added'])} class{'es' * (len(r['added']) != 1)} to "
              f"{r['into']} ({r['already_there']} already there); next: {r['next']}")
    return 0


TITLE = "the photos"


def register(verb) -> None:
    s = verb("check", "Check training data: counts, imbalance, duplicates/leakage, tiny and unreadable files "
             "(image folders); per-point visibility, points outside the image, suspect labels (keypoints).", cmd_check)
    s.add_argument("data", help="image folder, or a COCO keypoints .json / keypoints .csv / folder with train.json")
    s.add_argument("--task", choices=typing.get_args(TaskName), default="auto", help="whose check to run "
                   "(auto: from the data)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    add_option_flags(s, _task_models("CheckOptions"))

    s = verb("label", "Label images by hand in the browser: keypoints (one click per point) or classes (number keys); "
             "saved after every image.", cmd_label)
    s.add_argument("dir", help="folder of images to label (only files under it are served)")
    s.add_argument("--keypoints", default=None, help="point names in click order, e.g. left_eye,right_eye,nose "
                   "(names added to an existing labels file are asked for on every image)")
    s.add_argument("--classes", default=None, help="class names; number keys 1..9 assign them")
    s.add_argument("--out", default=None, help="labels file: COCO keypoints .json (default DIR/labels.json) or "
                   "classes .csv (default DIR/labels.csv); an existing file is resumed/edited")
    s.add_argument("--folders", default=None, metavar="OUT_DIR", help="classes: also keep OUT_DIR/<class>/ links "
                   "(the layout `pocketvision train` reads)")
    s.add_argument("--model", default=None, help="bundle or exported model that pre-places points / pre-selects "
                   "the class; Enter accepts")
    s.add_argument("--order", choices=("name", "uncertain"), default="name", help="image order; uncertain = the "
                   "model's least sure first (needs --model)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    s.add_argument("--port", type=int, default=8765, help="port (0 = any free one)")
    s.add_argument("--no-browser", action="store_true", help="do not open a browser (remote boxes, scripts)")

    s = verb("import", "Bring what a teachable web page was taught (its \"download what I taught\" file) into a "
             "data set folder, one class folder per taught class: `pocketvision train` then makes it a bundle.",
             cmd_import)
    s.add_argument("taught", help="the page's taught.json")
    s.add_argument("--into", required=True, help="data set folder to add the photos to (train/<class>/ when it has "
                   "a train split, else <class>/; e.g. the data the page's model was trained on)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")

    s = verb("cache", "Decode every image under DATA once and keep its pixels (memory-mapped .npy shards): "
             "training reads them instead of the files; changed files are decoded again.", cmd_cache)
    s.add_argument("data", help="image folder")
    s.add_argument("--size", type=int, default=256, help="short side kept, in pixels (at least the model side "
                   "x 1.15 for training to use it)")
    s.add_argument("--cache-dir", default=None, help="where caches live (default: $POCKETVISION_CACHE_DIR or "
                   "~/.cache/pocketvision/datasets); give the same to `train --cache-dir`")
    s.add_argument("--format", choices=("pixels", "jpeg"), default="pixels", help="pixels: raw uint8 (fastest to "
                   "read); jpeg: re-encoded at --quality, ~10x smaller, for data sets larger than RAM")
    s.add_argument("--quality", type=int, default=None, help="JPEG quality of --format jpeg (50-100, default 90)")
    s.add_argument("--threads", type=int, default=0, help="decoding threads (default: all cores)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")

    s = verb("shards", "Write a data set as WebDataset tar shards (each image resized and re-encoded as JPEG, with "
             "its annotation) for data sets larger than RAM or kept on object storage; train reads them in place.",
             cmd_shards)
    s.add_argument("data", help="training data (image folder, keypoint annotations...)")
    s.add_argument("--out", required=True, help="new folder for the shards and shards.json")
    s.add_argument("--task", choices=typing.get_args(TaskName), default="auto", help="whose data (default: detected)")
    s.add_argument("--size", type=int, default=256, help="short side kept, in pixels")
    s.add_argument("--quality", type=int, default=90, help="JPEG quality (50-100)")
    s.add_argument("--shard-mb", type=int, default=256, help="shard size (MB of images per tar)")
    s.add_argument("--val-fraction", type=float, default=0.15, help="validation share when DATA has no val split "
                   "(the same split `train` would make with this and --seed)")
    s.add_argument("--seed", type=int, default=0, help="the validation split's seed (as `train --seed`)")
    s.add_argument("--threads", type=int, default=0, help="decoding threads (default: all cores)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")

    s = verb("fetch-shards", "Download a shard set (its shards.json URL: https://, file://, a bucket's HTTPS "
             "endpoint) into a folder, checking each shard's SHA-256; run again to resume.", cmd_fetch_shards)
    s.add_argument("url", help="URL or path of shards.json")
    s.add_argument("--out", required=True, help="folder to fetch into")
    s.add_argument("--threads", type=int, default=4, help="parallel downloads")
    s.add_argument("--json", action="store_true", help="print the result as JSON")

    s = verb("info", "List architectures, or show one: parameters, MACs at a size, weight bytes.", cmd_info)
    s.add_argument("arch", nargs="?", default=None, help="architecture name, or searched:FILE for a `pocketvision "
                   "search` result (omit to list all)")
    s.add_argument("--pattern", default=None, help="glob filter for the list, e.g. 'mobilenet*'")
    s.add_argument("--size", type=int, default=None, help="input side for the MAC count (default: the arch's)")
    s.add_argument("--arch-args", type=_kv, default={}, help="architecture arguments, e.g. alpha=0.5")
    s.add_argument("--json", action="store_true", help="print as JSON")

