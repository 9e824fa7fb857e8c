"""Command line: argument parsing only; every verb calls the Python API.

Imports are local to each verb so ``pocketvision predict model.onnx`` never loads torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import PocketVisionError

EPILOG = "Docs: README.md. Every verb that prints results accepts --json."


class _Fmt(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str, allow_nan=True))


def _console():
    from rich.console import Console
    return Console(stderr=True)


def _csv_floats(s: str) -> list[float]:
    try:
        return [float(x) for x in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def _kv(s: str) -> dict[str, Any]:
    """'alpha=0.5,act=relu' -> {'alpha': 0.5, 'act': 'relu'} (JSON values where they parse)."""
    out: dict[str, Any] = {}
    import re
    for part in filter(None, re.split(r",(?![^\[]*\])", s)):  # commas inside [..] belong to the value
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"expected key=value, got {part!r}")
        k, v = part.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v.strip()
    return out


# -- verbs -------------------------------------------------------------------------------------------
def cmd_train(a: argparse.Namespace) -> int:
    import pocketvision as pv

    opts: dict[str, Any] = {k: v for k, v in dict(
        arch=a.arch, arch_args=a.arch_args, pretrained=not a.scratch, size=a.size, epochs=a.epochs,
        batch_size=a.batch_size, optimizer=a.optimizer, lr=a.lr, weight_decay=a.weight_decay, schedule=a.schedule,
        clr_cycle_epochs=a.clr_cycle_epochs, label_smoothing=a.label_smoothing,
        class_weights=a.class_weights if a.class_weights in ("auto", "none") else _csv_floats(a.class_weights),
        linear_probe=a.linear_probe, finetune=a.finetune, top_blocks=a.top_blocks, freeze_epochs=a.freeze_epochs, backbone_lr_mult=a.backbone_lr_mult,
        early_stopping=a.early_stopping, augment=a.augment, mixup=a.mixup, ema=a.ema, progressive=a.progressive, progressive_until=a.progressive_until, distill=a.distill,
        distill_alpha=a.distill_alpha, distill_t=a.distill_t, amp=a.amp, channels_last=a.channels_last, device=a.device,
        workers=a.workers, seed=a.seed, val_fraction=a.val_fraction, target_precision=a.target_precision,
        run_dir=a.run_dir, tensorboard=not a.no_tensorboard, progress=not a.json, task=a.task, head=a.head,
        kp_loss=a.kp_loss, head_args=a.head_args, exclude=a.exclude, output_stride=a.output_stride, flip_pairs=a.flip_pairs, normalize=a.normalize).items()}
    if a.find_lr:
        from .api import find_lr
        r = find_lr(a.data, **opts)
        if a.json:
            _print_json({k: r[k] for k in ("suggested_lr", "plot")})
        else:
            print(f"suggested lr: {r['suggested_lr']:.2e}  (plot: {r['plot']})")
        return 0
    try:
        b = pv.train(a.data, out=a.out, resume=a.resume, console=_console(), **opts)
    except KeyboardInterrupt:
        return 130
    if a.json:
        _print_json({"bundle": str(b.path), "metrics": _brief(b.metrics), "report": b.meta.get("report")})
    else:
        _render(b.metrics)
        print(f"bundle: {b.path}\nreport: {b.meta.get('report')}")
    return 0


def _brief(m: dict) -> dict:
    """Keypoint metrics without the per-image lists (they stay in the bundle and the report)."""
    return {k: v for k, v in m.items() if k not in ("per_image_nme", "image_index")}


def _render(m: dict) -> None:
    if m.get("task") == "keypoints":
        from .evaluate.keypoint_report import render_keypoint_table
        render_keypoint_table(m, _console())
    else:
        from .evaluate import render_table
        render_table(m)


def cmd_eval(a: argparse.Namespace) -> int:
    from .data.keypoints import read_exclude
    extra = {"exclude": read_exclude(a.exclude)} if a.exclude else {}
    m = _load_any(a.model).evaluate(a.data, split=a.split, report_dir=a.report, threshold=a.threshold, **extra)
    if a.json:
        _print_json(_brief(m))
    else:
        _render(m)
        if m.get("report"):
            print(f"report: {m['report']}")
    return 0


def _load_any(path: str):
    """A bundle, or an exported .onnx wrapped to offer the same evaluate/predict surface."""
    from .runtime.artifact import Artifact, is_artifact
    if is_artifact(path):
        return Artifact(path)
    import pocketvision as pv
    return pv.load(path)


def _image_args(items: list[str]) -> list[Path]:
    from .contract import is_image_file
    out: list[Path] = []
    for s in items:
        p = Path(s)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and is_image_file(q))
            if not found:
                raise PocketVisionError(f"{p}: no images (jpg/png/webp/bmp) in this folder.")
            out += found
        elif p.exists():
            out.append(p)
        else:
            raise PocketVisionError(f"{p}: no such file or folder.")
    return out


def cmd_predict(a: argparse.Namespace) -> int:
    from .errors import ImageDecodeError
    model = _load_any(a.model)
    rows, failed = [], 0
    for p in _image_args(a.images):
        try:
            r = model.predict([p])[0]
        except ImageDecodeError as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
            continue
        rows.append({"image": str(p), **r})
        if not a.json and "keypoints" in r:
            pts = "  ".join(f"{n} ({v['x']:.1f}, {v['y']:.1f})" for n, v in r["keypoints"].items())
            print(f"{p}\t{pts}")
        elif not a.json:
            print(f"{p}\t{r['label']}\t{r['confidence']:.4f}")
    if a.json:
        _print_json(rows)
    return 1 if failed else 0


def cmd_export(a: argparse.Namespace) -> int:
    import pocketvision as pv
    from .export import FORMATS, check_request
    targets = [t.strip() for t in a.to.split(",") if t.strip()]
    precision = "int8" if a.int8 else ("fp16" if a.fp16 else "fp32")
    for t in targets:  # every request is checked before any work starts
        check_request(t, precision, a.bits)
    if a.out and len(targets) > 1:
        raise PocketVisionError("--out names one file; with several --to targets use --out-dir.")
    b = pv.load(a.bundle)
    log = (lambda s: None) if a.json else (lambda s: print(s, file=sys.stderr))
    results, ok = [], True
    for t in targets:
        out = a.out or (Path(a.out_dir) / (Path(a.bundle).stem + _variant(precision, a.bits) + FORMATS[t])
                        if a.out_dir else None)
        res = b.export(out, to=t, verify=not a.no_verify, data=a.data, opset=a.opset, precision=precision,
                       bits=a.bits, max_drop=a.max_drop, qat_steps=a.qat_steps, log=log)
        v = res.verification
        ok = ok and (v is None or v["passed"])
        results.append({"path": str(res.path), "format": res.format, "precision": res.precision, "bits": a.bits,
                        "size_bytes": res.size_bytes, "verification": v, "notes": res.notes,
                        "compression": {k: {kk: vv for kk, vv in c.items() if kk != "layer_errors"}
                                        for k, c in res.compression.items()}})
        if not a.json:
            print(f"exported {res.format} ({res.precision}{f', {a.bits}-bit palette' if a.bits else ''}): "
                  f"{res.path} ({res.size_bytes / 1e6:.2f} MB)")
            for n in res.notes:
                print(f"note: {n}")
            if v:
                _print_parity(v)
    if a.json:
        _print_json(results if len(results) > 1 else results[0])
    return 0 if ok else 1


def _variant(precision: str, bits: int | None) -> str:
    return ("" if precision == "fp32" else f"-{precision}") + (f"-{bits}bit" if bits else "")


def _print_parity(v: dict) -> None:
    status = "PASSED" if v["passed"] else "FAILED"
    if "structure" in v:  # Core ML off macOS: structure only
        print(f"verify {'structure OK' if v['passed'] else 'structure FAILED'}: {v['criterion']} "
              f"({', '.join(f'{k}={val}' for k, val in v['structure'].items())})")
        return
    if "max_coord_diff_px" in v:  # keypoints
        extra = f", NME {v['reference_nme']:.4f} -> {v['candidate_nme']:.4f}" if "candidate_nme" in v else ""
        crit = f" ({v['criterion']})" if v.get("criterion") else f" (tol {v['tolerance_px']} px)"
        print(f"verify {status}: {v['n']} real images, max coordinate difference {v['max_coord_diff_px']:.2e} px, "
              f"mean {v['mean_coord_diff_px']:.2e} px{crit}{extra}")
        return
    extra = f", accuracy {v['reference_accuracy']:.4f} -> {v['candidate_accuracy']:.4f}" if "candidate_accuracy" in v else ""
    crit = f" ({v['criterion']})" if v.get("criterion") else f" (tol {v['tolerance']:.0e})"
    print(f"verify {status}: {v['n']} real images, max |dp| {v['max_abs_diff']:.2e}{crit}, "
          f"top-1 agreement {v['top1_agreement']:.4f}{extra}")


def cmd_compress(a: argparse.Namespace) -> int:
    import pocketvision as pv
    b = pv.load(a.bundle)
    log = (lambda s: None) if a.json else (lambda s: print(s, file=sys.stderr))
    if a.prune:
        small, rep = b.prune(a.prune, a.data, epochs=a.epochs, log=log, progress=not a.json)
        out = Path(a.out or Path(a.bundle).with_name(Path(a.bundle).stem + f"-pruned{int(100 * a.prune)}.pvb"))
        small.save(out)
        rep["path"] = str(out)
        if a.json:
            _print_json(rep)
        else:
            print(f"pruned {100 * a.prune:.0f}% of the channels: {rep['params_before']:,} -> {rep['params_after']:,} "
                  f"parameters; held-out accuracy {rep['accuracy_before']:.4f} -> {rep['accuracy_after']:.4f} "
                  f"after {rep['finetune_epochs']} fine-tuning epochs")
            print(f"bundle: {out}")
        return 0
    if a.auto:
        small, rep = b.auto_compress(a.data, max_drop=max(a.max_drop, 0), finetune_steps=a.finetune_steps, log=log)
    else:
        small, rep = b.palettize(a.bits, a.data, max_drop=None if a.max_drop < 0 else a.max_drop,
                                 finetune_steps=a.finetune_steps, min_size=a.min_size,
                                 group_channels=a.group_channels, layer_bits=a.layer_bits, log=log)
    out = Path(a.out or Path(a.bundle).with_name(Path(a.bundle).stem + f"-{'auto' if a.auto else a.bits}"
                                                 f"{'' if a.auto else 'bit'}.pvb"))
    small.save(out)
    rep["path"] = str(out)
    if a.json:
        _print_json(rep)
        return 0
    for n in rep["notes"]:
        print(f"note: {n}")
    for t in rep.get("auto", []):
        print(f"  {t['bits']}-bit palettes: {t['palette_bytes'] / 1e6:.3f} MB, accuracy {t['accuracy']:.4f}"
              f"{'' if t['within_budget'] else '  (over budget)'}")
    mixed = sorted({la["bits"] for la in rep["layers"]})
    print(f"palettised {len(rep['layers'])} layers to {'/'.join(map(str, mixed))} bits: "
          f"{rep['float_bytes'] / 1e6:.2f} MB of fp32 weights -> {rep['palette_bytes'] / 1e6:.2f} MB "
          f"(indices + tables)")
    print(f"held-out accuracy ({rep['n_images']} images): {rep['base_accuracy']:.4f} -> {rep['accuracy']:.4f} "
          f"({100 * rep['accuracy_change']:+.2f} points)")
    print(f"bundle: {out}   (export it: pocketvision export {out} --to onnx)")
    return 0


def cmd_fetch_web_runtime(a: argparse.Namespace) -> int:
    from .export.web import ORT_WEB_VERSION, fetch_runtime
    path = fetch_runtime(a.version or ORT_WEB_VERSION)
    print(f"onnxruntime-web {a.version or ORT_WEB_VERSION}: {path}")
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    import pocketvision as pv
    v = pv.load(a.bundle).verify(a.exported, data=a.data, tolerance=a.tolerance)
    _print_json(v) if a.json else _print_parity(v)
    return 0 if v["passed"] else 1


def cmd_bench(a: argparse.Namespace) -> int:
    import tempfile
    from .runtime.bench import bench
    if a.all:
        return _bench_all(a)
    path = Path(a.model)
    tmp = None
    if path.suffix != ".onnx":
        import pocketvision as pv
        tmp = tempfile.TemporaryDirectory()
        path = pv.load(path).export(Path(tmp.name) / "model.onnx", verify=False).path
    images = _image_args([a.data])[: a.max_images] if a.data else None
    large = _image_args([a.large])[: a.max_images] if a.large else None
    r = bench(path, images, large, runs=a.runs, batch=a.batch)
    r["model"] = a.model
    if a.json:
        _print_json(r)
    else:
        _print_bench(r)
    return 0


def _bench_all(a: argparse.Namespace) -> int:
    import pocketvision as pv
    from .export import check_request
    from .runtime import variants as V
    from .runtime.bench import machine
    chosen = V.DEFAULT_VARIANTS
    if a.variants:
        chosen = []
        for item in a.variants.split(","):
            parts = item.strip().split(":")  # target[:precision[:bits]]
            target, precision = parts[0], parts[1] if len(parts) > 1 else "fp32"
            bits = int(parts[2]) if len(parts) > 2 else None
            check_request(target, precision, bits)
            chosen.append((target, precision, bits))
    b = pv.load(a.model)
    out_dir = Path(a.out_dir or Path(a.model).with_suffix("").name + "-variants")
    log = (lambda s: None) if a.json else (lambda s: print(s, file=sys.stderr))
    rows = V.bench_variants(b, a.data, out_dir, chosen, max_drop=a.max_drop, runs=a.runs, log=log)
    plot = V.pareto_plot(rows, out_dir / "pareto.png")
    report = {"machine": machine(), "command": "pocketvision " + " ".join(sys.argv[1:]), "plot": str(plot),
              "variants": V.to_json(rows)}
    (out_dir / "variants.json").write_text(json.dumps(report, indent=2))
    if a.json:
        _print_json(report)
    else:
        V.render(rows, f"{a.model} on {a.data or 'its validation images'}  ({report['machine']})")
        print(f"pareto plot: {plot}\nexports and variants.json: {out_dir}")
    return 0 if all(r.status != V.FAILED for r in rows) else 1


def _print_bench(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"bench {r['model']}  ({r['machine']})")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("size on disk", f"{r['size_bytes'] / 1e6:.2f} MB")
    t.add_row("gzip size", f"{r['gzip_bytes'] / 1e6:.2f} MB")
    for k, v in r.items():
        if k.startswith("batch1_"):
            t.add_row(f"latency {k.replace('_', ' ')} p50/p90/p99", f"{v['p50_ms']:.2f} / {v['p90_ms']:.2f} / {v['p99_ms']:.2f} ms")
        if k.startswith("throughput"):
            t.add_row(k.replace("_", " "), f"{v:.0f}")
    if r.get("peak_rss_mb"):
        t.add_row("peak memory (RSS, fresh process)", f"{r['peak_rss_mb']:.0f} MB")
    for k in ("end_to_end", "end_to_end_large"):
        if k in r:
            t.add_row(f"{k.replace('_', ' ')}: JPEG bytes -> label p50 ({r[k]['images']} photos)", f"{r[k]['p50_ms']:.2f} ms")
    Console().print(t)


def cmd_check(a: argparse.Namespace) -> int:
    from .data.keypoints import is_keypoint_source
    if is_keypoint_source(a.data):
        return _check_keypoints(a)
    from .data.check import check_dataset, render_check, write_preview
    rep = check_dataset(a.data, val_fraction=a.val_fraction, seed=a.seed, tiny=a.tiny)
    if a.preview:
        from .contract import Contract
        from .data.augment import AugmentConfig, Augmenter
        from .data.folder import scan
        contract = Contract(size=(a.size, a.size))
        write_preview(scan(a.data, val_fraction=a.val_fraction, seed=a.seed), a.preview,
                      Augmenter(AugmentConfig(), contract), n=a.preview_n, seed=a.seed)
    return _emit_check(a, rep.to_dict(), lambda console: render_check(rep, console))


def _emit_check(a: argparse.Namespace, report: dict, render) -> int:
    """Either task's check report: JSON, or the rendered tables on stdout, plus where the preview went."""
    if a.preview:
        report["preview"] = str(a.preview)
    if a.json:
        _print_json(report)
    else:
        from rich.console import Console
        render(Console())
        if a.preview:
            print(f"preview: {a.preview}")
    return 0


def _check_keypoints(a: argparse.Namespace) -> int:
    from .data.keypoints import load_keypoints
    from .data.kp_check import check_keypoints, render_keypoint_check, write_keypoint_preview
    rep = check_keypoints(a.data, seed=a.seed)
    if a.suspects_out:
        from .bundle import atomic_write_bytes
        lines = [x["image"] for s in rep["splits"].values() for x in s["suspect_labels"]]
        atomic_write_bytes(a.suspects_out, ("\n".join(lines) + "\n").encode())
        rep["suspects_out"] = str(a.suspects_out)
    if a.preview:
        write_keypoint_preview(load_keypoints(a.data, seed=a.seed), a.preview, size=a.size, n=a.preview_n, seed=a.seed)
    return _emit_check(a, rep, lambda console: render_keypoint_check(rep, console))


def cmd_filter(a: argparse.Namespace) -> int:
    from .sprite_filter import run_filter
    stats = run_filter(a.model, a.video, a.out, sprite=a.sprite, anchor=a.anchor, sprite_anchors=a.sprite_anchors,
                       smoothing=a.smoothing, min_score=a.min_score, draw_points=a.draw_points)
    if a.json:
        _print_json(stats)
    else:
        print(f"{stats['output']}: {stats['frames']} frames {stats['size'][0]}x{stats['size'][1]}, "
              f"{stats['fps']} fps end to end (ms/frame: "
              + ", ".join(f"{k} {v:.2f}" for k, v in stats["ms_per_frame"].items()) + ")")
    return 0


def cmd_label(a: argparse.Namespace) -> int:
    from .label.server import run
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    run(a.dir, split(a.keypoints), split(a.classes), out=a.out, host=a.host, port=a.port,
        open_browser=not a.no_browser, model=a.model, order=a.order, folders=a.folders,
        log=lambda m: print(m, flush=True))  # flushed: scripts read the URL from a pipe
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from .models import list_models, model_info
    size = {"size": (a.size, a.size)} if a.size else {}
    names = [a.arch] if a.arch else list_models(a.pattern or "*")
    rows = [model_info(n, **size, **(a.arch_args if a.arch else {})) for n in names]
    if a.json:
        _print_json(rows[0] if a.arch else rows)
        return 0
    from rich.console import Console
    from rich.table import Table
    t = Table(title="pocketvision models")
    for col in ("arch", "args", "input", "params", "MACs", "weights (fp32)", "ImageNet weights"):
        t.add_column(col, justify="left" if col in ("arch", "args") else "right")
    for r in rows:
        shown = ", ".join(f"{k}={v}" for k, v in a.arch_args.items()) if a.arch else ""
        t.add_row(r["name"], shown or "defaults", "x".join(map(str, r["size"])),
                  f"{r['params'] / 1e6:.2f} M", f"{r['macs'] / 1e6:.0f} M", f"{r['weight_mb']:.2f} MB",
                  "yes" if r.get("pretrained") else "no")
    Console().print(t)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo
    summary = run_demo(Path(a.out), epochs=a.epochs, quiet=a.json)
    if a.json:
        _print_json(summary)
    return 0


# -- parser ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(prog="pocketvision", description="From a folder of photos to a verified "
                                "on-device vision model.", epilog=EPILOG, formatter_class=_Fmt)
    p.add_argument("--version", action="version", version=f"pocketvision {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_: str, fn) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_, description=help_, formatter_class=_Fmt)
        s.set_defaults(fn=fn)
        return s

    s = verb("train", "Train a classifier on an image folder (class = sub-folder), or a keypoint model on a COCO "
             "keypoints JSON / CSV, and write a bundle.", cmd_train)
    s.add_argument("data", help="image folder: DATA/<class>/*.jpg, or DATA/{train,val[,test]}/<class>/; keypoints: "
                   "a COCO keypoints .json, a .csv (image,<name>_x,<name>_y,...), or a folder with train.json "
                   "(+ val.json)")
    s.add_argument("--out", default="model.pvb", help="bundle to write")
    s.add_argument("--task", choices=("auto", "classify", "keypoints"), default="auto", help="auto: keypoints for "
                   "annotation files, classify for image folders")
    s.add_argument("--arch", default=None, help="architecture (see `pocketvision info`; default efficientnet_lite0 "
                   "for classify, deepdog alpha=0.5 for keypoints)")
    s.add_argument("--arch-args", type=_kv, default={}, help="architecture arguments, e.g. alpha=0.5,act=relu")
    s.add_argument("--scratch", action="store_true", help="random init even when ImageNet weights exist")
    s.add_argument("--size", type=int, default=None, help="input side in px (default: the architecture's)")
    s.add_argument("--epochs", type=int, default=8, help="training epochs (after the linear probe)")
    s.add_argument("--batch-size", type=int, default=32, help="batch size")
    s.add_argument("--optimizer", choices=("adamw", "sgd", "rmsprop"), default="adamw", help="optimizer")
    s.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 3e-3 from scratch, "
                   "3e-5 top fine-tune, 1e-4 full fine-tune)")
    s.add_argument("--weight-decay", type=float, default=0.02, help="weight decay")
    s.add_argument("--schedule", default="onecycle",
                   choices=("onecycle", "cosine", "triangular", "triangular2", "exp_range", "constant"),
                   help="LR schedule (triangular* and exp_range are cyclical LRs)")
    s.add_argument("--clr-cycle-epochs", type=float, default=2.0, help="half-cycle length of cyclical schedules")
    s.add_argument("--label-smoothing", type=float, default=None, help="label smoothing (default: 0.1 from scratch, "
                   "0 when fine-tuning)")
    s.add_argument("--class-weights", default="auto", help="auto (inverse frequency), none, or w1,w2,...")
    s.add_argument("--linear-probe", action="store_true", help="only fit a logistic-regression head on frozen "
                   "pretrained features (fast baseline)")
    s.add_argument("--finetune", choices=("top", "full"), default="top", help="pretrained archs: 'top' trains the "
                   "last --top-blocks on cached activations (fast on CPU); 'full' trains every layer with pixel "
                   "augmentation (used on CUDA)")
    s.add_argument("--top-blocks", type=int, default=3, help="feature blocks trained by --finetune top")
    s.add_argument("--freeze-epochs", type=int, default=0, help="epochs with a frozen backbone before unfreezing")
    s.add_argument("--backbone-lr-mult", type=float, default=0.2, help="backbone LR multiplier once unfrozen")
    s.add_argument("--early-stopping", type=int, default=None, metavar="N", help="stop after N epochs without "
                   "improvement")
    s.add_argument("--augment", type=_kv, default={}, help="augmentation overrides, e.g. "
                   "'scale=[0.08,1],glare=0.3,moire=0' (see pocketvision.data.augment.AugmentConfig)")
    s.add_argument("--progressive", type=int, default=None, metavar="PX", help="progressive resizing (from scratch or "
                   "--finetune full): train the first epochs at PX and grow to --size by --progressive-until of "
                   "the run (more epochs in the same time; default: off)")
    s.add_argument("--progressive-until", type=float, default=0.75, metavar="F", help="with --progressive: the "
                   "fraction of the epochs over which the size grows; the rest train at --size")
    s.add_argument("--ema", type=float, default=0.0, help="evaluate and keep an exponential moving average of "
                   "the weights with this decay (0 = off; 0.998 steadies short from-scratch runs)")
    s.add_argument("--mixup", type=float, default=0.0, help="probability of a CutMix batch (regularises "
                   "small from-scratch runs)")
    s.add_argument("--distill", default=None, metavar="BUNDLE", help="teacher bundle for knowledge distillation "
                   "(e.g. a fine-tuned efficientnet_lite0 teaching a small deepdog)")
    s.add_argument("--distill-alpha", type=float, default=0.7, help="weight of the teacher's term in the loss")
    s.add_argument("--distill-t", type=float, default=2.0, help="distillation temperature")
    s.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="mixed precision (auto: on CUDA)")
    s.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto", help="channels_last memory "
                   "format (auto: on, except a user module on CPU)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    s.add_argument("--workers", type=int, default=None, help="data worker processes (default: cores - 1)")
    s.add_argument("--seed", type=int, default=0, help="random seed (split, init, augmentation)")
    s.add_argument("--val-fraction", type=float, default=0.15, help="validation share when DATA has no val/")
    s.add_argument("--target-precision", type=float, default=0.9, help="binary: choose the decision threshold "
                   "for this precision on val")
    s.add_argument("--run-dir", default=None, help="where checkpoints, logs, TensorBoard and the report go "
                   "(default runs/train-TIMESTAMP)")
    s.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    s.add_argument("--head", choices=("heatmap", "simcc", "regression"), default="heatmap", help="keypoints: simcc (sub-pixel "
                   "coordinate bins, usually more accurate) or regression (direct x, y)")
    s.add_argument("--exclude", default=None, metavar="TXT", help="keypoints: leave out the images listed "
                   "(one path or file name per line), e.g. from `check --suspects-out`")
    s.add_argument("--head-args", type=_kv, default={}, help="keypoints: head arguments, e.g. hidden=128,sigma=1.5")
    s.add_argument("--kp-loss", choices=("auto", "mse", "l1", "kl"), default="auto", help="keypoints: loss "
                   "(auto: kl for simcc, mse for regression)")
    s.add_argument("--output-stride", type=int, default=16, help="keypoints: stride of the backbone's last "
                   "feature map (later stride-2 convs become stride 1)")
    s.add_argument("--flip-pairs", default=None, help="keypoints: override the flip pairs inferred from the "
                   "names, e.g. 'left_eye:right_eye,left_mouth:right_mouth', or 'none'")
    s.add_argument("--normalize", default=None, help="keypoints: NME normaliser: two point names 'a,b' or 'bbox' "
                   "(default: the two eye points, else bbox)")
    s.add_argument("--find-lr", action="store_true", help="run an LR range test, save the plot, and exit")
    s.add_argument("--no-tensorboard", action="store_true", help="CSV log only")
    s.add_argument("--json", action="store_true", help="print the result as JSON (no progress bar)")

    s = verb("eval", "Evaluate a bundle or exported model on any labelled image folder (classify) or keypoint "
             "annotations (NME, PCK, failure rate, per point).", cmd_eval)
    s.add_argument("model", help="bundle (.pvb), exported .onnx/.tflite, or web folder (run in Chromium)")
    s.add_argument("data", help="labelled image folder; keypoints: COCO .json, .csv, or a folder with val.json")
    s.add_argument("--split", default="auto", help="auto (test/, else val/, else all), all, train, val, test")
    s.add_argument("--threshold", type=float, default=None, help="binary decision threshold (default: the bundle's)")
    s.add_argument("--report", default=None, metavar="DIR", help="write an HTML report with plots and mistakes")
    s.add_argument("--exclude", default=None, metavar="TXT", help="keypoints: leave out the images listed "
                   "(e.g. suspect labels from `check --suspects-out`)")
    s.add_argument("--json", action="store_true", help="print metrics as JSON")

    s = verb("predict", "Classify images, or find their keypoints, with a bundle or an exported model (the .onnx "
             "path needs no torch).",
             cmd_predict)
    s.add_argument("model", help="bundle (.pvb), exported .onnx, or web folder (run in Chromium)")
    s.add_argument("images", nargs="+", help="image files or folders")
    s.add_argument("--json", action="store_true", help="print results as JSON")

    s = verb("export", "Export a bundle (ONNX: uint8 RGB in, probabilities out) and verify parity.", cmd_export)
    s.add_argument("bundle", help="bundle (.pvb)")
    s.add_argument("--to", default="onnx", help="target format(s), comma-separated: onnx, web")
    s.add_argument("--out", default=None, help="output file/folder (default: bundle name + variant + suffix)")
    s.add_argument("--out-dir", default=None, help="folder for the outputs when exporting several targets")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--int8", action="store_true", help="static int8, calibrated on training images; worst "
                   "layers stay float until the accuracy drop is within --max-drop")
    g.add_argument("--fp16", action="store_true", help="half-precision weights (targets that support it)")
    s.add_argument("--bits", type=int, default=None, help="palettise first: 2^bits shared values per layer "
                   "(see `pocketvision compress`)")
    s.add_argument("--max-drop", type=float, default=1.0, help="accuracy budget in points for --int8/--bits")
    s.add_argument("--qat-steps", type=int, default=0, help="with --int8 (onnx, web): quantisation-aware "
                   "fine-tuning steps on training photos before calibration (0 = post-training only)")
    s.add_argument("--data", default=None, help="labelled images for verification (default: the bundle's val split)")
    s.add_argument("--no-verify", action="store_true", help="skip the parity check")
    s.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")

    s = verb("compress", "Palettise a bundle: each layer's weights become 2^bits shared values (k-means), "
             "measured on held-out images, mixed bits within an accuracy budget.", cmd_compress)
    s.add_argument("bundle", help="bundle (.pvb)")
    s.add_argument("--bits", type=int, default=4, help="bits per weight (2-8): a palette of 2^bits values per layer")
    s.add_argument("--data", default=None, help="labelled images (default: the bundle's own train/val split)")
    s.add_argument("--max-drop", type=float, default=1.0, help="accuracy budget in points: the most sensitive "
                   "layers go to 8 bits until the drop is within it (-1: no budget)")
    s.add_argument("--finetune-steps", type=int, default=None, help="steps fine-tuning the palette values on "
                   "training images (0 = off; default: 100 up to ~1M parameters, fewer for bigger nets)")
    s.add_argument("--prune", type=float, default=None, help="structured pruning instead: remove this share of "
                   "every layer's channels (deepdog, mobilenet_v1), rebuild the smaller net and fine-tune it")
    s.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs after --prune")
    s.add_argument("--auto", action="store_true", help="try 2/3/4/6/8-bit palettes and keep the smallest "
                   "within --max-drop (written as a new bundle with its lineage)")
    s.add_argument("--min-size", type=int, default=1024, help="layers with fewer weights stay float")
    s.add_argument("--group-channels", type=int, default=0, help="one palette per N output channels (0: per layer)")
    s.add_argument("--layer-bits", type=_kv, default={}, help="per-layer bits, e.g. 'features.0.conv=8,classifier=0'")
    s.add_argument("--out", default=None, help="bundle to write (default: NAME-<bits>bit.pvb)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")

    s = verb("fetch-web-runtime", "Download the onnxruntime-web runtime files (npm package) that `export --to web` "
             "copies into each web folder; the only command that downloads.", cmd_fetch_web_runtime)
    s.add_argument("--version", default=None, help="onnxruntime-web version (default: the tested one)")

    s = verb("verify", "Run the same real images through a bundle and its export; non-zero exit above tolerance.",
             cmd_verify)
    s.add_argument("bundle", help="bundle (.pvb)")
    s.add_argument("exported", help="exported model (.onnx or web folder)")
    s.add_argument("--data", default=None, help="labelled image folder (default: the bundle's val split)")
    s.add_argument("--tolerance", type=float, default=None, help="max |probability difference| (default 1e-3)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")

    s = verb("bench", "Latency p50/p90/p99 (1 thread, all threads), throughput, memory, size, end to end.",
             cmd_bench)
    s.add_argument("model", help="exported .onnx or a bundle (exported to a temp .onnx first)")
    s.add_argument("--all", action="store_true", help="bundle: export every target x compression, run each in its "
                   "real runtime on --data, and print one table (size, gzip, accuracy, parity, latency, status) "
                   "plus a Pareto plot")
    s.add_argument("--variants", default=None, help="with --all: target[:precision[:bits]],... e.g. "
                   "'onnx,onnx:int8,onnx:fp32:4,web' (default: onnx fp32/int8/4-bit, web fp32/int8)")
    s.add_argument("--out-dir", default=None, help="with --all: where the exports, table JSON and plot go")
    s.add_argument("--max-drop", type=float, default=1.0, help="with --all: accuracy budget (points) for "
                   "compressed variants")
    s.add_argument("--data", default=None, help="real photos for the end-to-end (JPEG bytes -> label) timing")
    s.add_argument("--large", default=None, help="large photos (e.g. 12 MP) for a second end-to-end timing")
    s.add_argument("--max-images", type=int, default=50, help="photos used for end-to-end timing")
    s.add_argument("--runs", type=int, default=100, help="timed runs per latency measurement")
    s.add_argument("--batch", type=int, default=32, help="batch size for the throughput measurement")
    s.add_argument("--json", action="store_true", help="print the results as JSON")

    s = verb("check", "Check an image folder (counts, imbalance, duplicates/leakage, tiny and unreadable files) or "
             "keypoint annotations (per-point visibility, points outside the image, unreadable images).", cmd_check)
    s.add_argument("data", help="image folder, or a COCO keypoints .json / keypoints .csv / folder with train.json")
    s.add_argument("--preview", default=None, metavar="PNG", help="write a grid of augmented training samples")
    s.add_argument("--preview-n", type=int, default=24, help="samples in the preview grid")
    s.add_argument("--size", type=int, default=224, help="sample size in the preview")
    s.add_argument("--tiny", type=int, default=64, help="report images whose short side is below this (px)")
    s.add_argument("--suspects-out", default=None, metavar="TXT", help="keypoints: write the images with suspect "
                   "labels, one per line (review them, or pass the file to `train --exclude`)")
    s.add_argument("--val-fraction", type=float, default=0.15, help="validation share when DATA has no val/")
    s.add_argument("--seed", type=int, default=0, help="split seed")
    s.add_argument("--json", action="store_true", help="print the report as JSON")

    s = verb("filter", "Stick a sprite on two keypoints in every frame of a video (smoothed, scaled, rotated).",
             cmd_filter)
    s.add_argument("model", help="keypoint bundle, .onnx or .tflite")
    s.add_argument("video", help="input video (anything OpenCV decodes: mp4, avi, mov...)")
    s.add_argument("--out", default="filtered.mp4", help="output video (mp4)")
    s.add_argument("--sprite", default="glasses", help="built-in sprite (glasses, mustache, crown) or an RGBA PNG")
    s.add_argument("--anchor", default="left_eye,right_eye", help="the two keypoints the sprite's anchors follow")
    s.add_argument("--sprite-anchors", default=None, metavar="X1,Y1,X2,Y2", help="anchor positions on a PNG "
                   "sprite, in its pixels (default: 30%% and 70%% of its width at mid-height)")
    s.add_argument("--smoothing", type=float, default=1.0, help="One Euro min cutoff in Hz (lower = steadier, "
                   "more lag)")
    s.add_argument("--min-score", type=float, default=0.2, help="hide the sprite when an anchor's score is lower")
    s.add_argument("--draw-points", action="store_true", help="also draw every predicted point")
    s.add_argument("--json", action="store_true", help="print the stats as JSON")

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

    s = verb("info", "List architectures, or show one: parameters, MACs at a size, weight bytes.", cmd_info)
    s.add_argument("arch", nargs="?", default=None, help="architecture name (omit to list all)")
    s.add_argument("--pattern", default=None, help="glob filter for the list, e.g. 'mobilenet*'")
    s.add_argument("--size", type=int, default=None, help="input side for the MAC count (default: the arch's)")
    s.add_argument("--arch-args", type=_kv, default={}, help="architecture arguments, e.g. alpha=0.5")
    s.add_argument("--json", action="store_true", help="print as JSON")

    s = verb("demo", "Build a small synthetic two-class photo set, then train, evaluate, export, verify, bench.",
             cmd_demo)
    s.add_argument("--out", default="pv-demo", help="folder for the data, bundle, exports and report")
    s.add_argument("--epochs", type=int, default=15, help="training epochs")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except PocketVisionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
