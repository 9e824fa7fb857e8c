"""Verbs that ship a model: export, starter, compress, verify, predict, bench, device-profile, fetch-web-runtime,
filter."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pocketvision as pv
from ..core.bundle_file import atomic_write_bytes
from ..deploy import placement, profiles, variants as V
from ..deploy.artifact import is_artifact, load_any
from ..deploy.bench import bench, machine
from ..errors import ImageDecodeError, PocketVisionError
from ..export import check_request, get_target, target_names, variant_suffix
from ..export.web import ORT_WEB_VERSION, fetch_runtime
from ..tasks import all_tasks
from ..tasks.base import parse_options, refuse_foreign
from .common import (_given, _image_args, _kv, _print_json, _print_parity, _task_models, _thread_list, add_config_flag,
                     add_option_flags)


def _save_arrays(record: dict[str, Any], image: Path, out_dir: Path) -> dict[str, Any]:
    """A record's image-valued fields (a stylised picture...) become PNG files in ``out_dir``."""
    import numpy as np
    out = {}
    for k, v in record.items():
        if isinstance(v, np.ndarray) and v.ndim == 3:
            import io

            from PIL import Image
            buf = io.BytesIO()
            Image.fromarray(v).save(buf, format="PNG")
            out[k] = str(atomic_write_bytes(out_dir / f"{image.stem}.{k}.png", buf.getvalue()))
        else:
            out[k] = v
    return out


def cmd_predict(a: argparse.Namespace) -> int:
    model = load_any(a.model)
    rows, failed = [], 0
    for p in _image_args(a.images):
        try:
            r = _save_arrays(model.predict([p])[0], p, Path(a.out_dir))
        except ImageDecodeError as e:
            failed += 1
            print(f"error: {e}", file=sys.stderr)
            continue
        rows.append({"image": str(p), **r})
        if not a.json:
            print(f"{p}\t{model.plugin.record_line(r)}")
    if a.json:
        _print_json(rows)
    return 1 if failed else 0


def cmd_export(a: argparse.Namespace) -> int:
    targets = [t.strip() for t in a.to.split(",") if t.strip()]
    precision = "int8" if a.int8 else ("fp16" if a.fp16 else "fp32")
    for t in targets:  # the request first, then what the bundle's task allows: all before any work
        get_target(t).check(None, precision, a.bits, a.qat_steps, a.teachable)
    if a.out and len(targets) > 1:
        raise PocketVisionError("--out names one file; with several --to targets use --out-dir.")
    b = pv.load(a.bundle)
    chosen = [check_request(b.plugin, t, precision, a.bits, a.qat_steps, a.teachable)  # before any work
              for t in targets]
    log = (lambda s: None) if a.json else (lambda s: print(s, file=sys.stderr))
    results, ok, started = [], True, time.perf_counter()
    for i, t in enumerate(chosen):
        log(f"[{i + 1}/{len(chosen)}] {t.name}: exporting, then verifying on real photos"
            f"{V.time_left(i, len(chosen), time.perf_counter() - started)}")
        out = a.out or (Path(a.out_dir) / (Path(a.bundle).stem + variant_suffix(precision, a.bits) + t.suffix)
                        if a.out_dir else None)
        res = b.export(out, to=t.name, verify=not a.no_verify, data=a.data, opset=a.opset, precision=precision,
                       bits=a.bits, max_drop=a.max_drop, qat_steps=a.qat_steps, teachable=a.teachable, log=log)
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
                _print_parity(v, b.plugin)
    if a.json:
        _print_json(results if len(results) > 1 else results[0])
    return 0 if ok else 1


def cmd_compress(a: argparse.Namespace) -> int:
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
                                 group_channels=a.group_channels, layer_bits=a.layer_bits,
                                 channel_scale=False if a.no_channel_scale else None,
                                 sensitivity=a.sensitivity, log=log)
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
    path = fetch_runtime(a.version or ORT_WEB_VERSION, force=a.force)
    print(f"onnxruntime-web {a.version or ORT_WEB_VERSION}: {path}")
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    b = pv.load(a.bundle)
    v = b.verify(a.exported, data=a.data, tolerance=a.tolerance, max_drop=a.max_drop)
    _print_json(v) if a.json else _print_parity(v, b.plugin)
    return 0 if v["passed"] else 1


def cmd_bench(a: argparse.Namespace) -> int:
    import tempfile
    if a.pick:
        return _bench_pick(a)
    if a.all:
        return _bench_all(a)
    path = Path(a.model)
    tmp = None
    if not is_artifact(path):
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


def _bench_variant_list(a: argparse.Namespace, task) -> list[tuple[str, str, int | None]] | None:
    if not a.variants:
        return None
    chosen = []
    for item in a.variants.split(","):
        parts = item.strip().split(":")  # target[:precision[:bits]]
        target, precision = parts[0], parts[1] if len(parts) > 1 else "fp32"
        bits = int(parts[2]) if len(parts) > 2 else None
        check_request(task, target, precision, bits)
        chosen.append((target, precision, bits))
    return chosen


def _bench_pick(a: argparse.Namespace) -> int:
    if is_artifact(a.model):
        raise PocketVisionError(f"{a.model}: --pick compares the variants of a bundle (.pvb), not one exported file.")
    b = pv.load(a.model)
    out_dir = Path(a.out_dir or Path(a.model).with_suffix("").name + "-placement")
    log = (lambda s: None) if a.json else (lambda s: print(s, file=sys.stderr))
    report = placement.pick(b, a.data, out_dir, profile=a.device_profile, variants=_bench_variant_list(a, b.plugin),
                            threads=_thread_list(a.threads), max_drop=a.max_drop, runs=a.runs, log=log)
    if a.json:
        _print_json(report)
    else:
        placement.render(report)
        print(f"recorded in {a.model} (lineage, meta.placement); table: {out_dir / 'placement.json'}")
    return 0


def cmd_device_profile(a: argparse.Namespace) -> int:
    prof = profiles.measure(_thread_list(a.threads), name=a.name, runs=a.runs, log=print)
    atomic_write_bytes(Path(a.out), json.dumps(prof, indent=1).encode())
    print(f"device profile of {prof['name']} ({', '.join(prof['threads'])} thread(s)): {a.out}")
    return 0


def _bench_all(a: argparse.Namespace) -> int:
    b = pv.load(a.model)
    chosen = _bench_variant_list(a, b.plugin) or V.default_variants(b.plugin)
    out_dir = Path(a.out_dir or Path(a.model).with_suffix("").name + "-variants")
    log = (lambda s: None) if a.json else (lambda s: print(s, file=sys.stderr))
    rows = V.bench_variants(b, a.data, out_dir, chosen, max_drop=a.max_drop, runs=a.runs, log=log)
    plot = V.pareto_plot(rows, out_dir / "pareto.png", b.plugin.outputs.quality)
    report = {"machine": machine(), "command": "pocketvision " + " ".join(sys.argv[1:]), "plot": str(plot),
              "variants": V.to_json(rows)}
    (out_dir / "variants.json").write_text(json.dumps(report, indent=2))
    if a.json:
        _print_json(report)
    else:
        V.render(rows, f"{a.model} on {a.data or 'its validation images'}  ({report['machine']})",
                 b.plugin.outputs.quality)
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


def cmd_filter(a: argparse.Namespace) -> int:
    named = [v for k, v in vars(a).items() if k.startswith("model_flag_") and v]
    inputs = ([*named, *a.inputs] if named else a.inputs)
    if len(inputs) != 2:
        raise PocketVisionError("filter takes a MODEL and a VIDEO (e.g. `pocketvision filter faces.pvb clip.mp4`, "
                                "or `pocketvision filter --style starry.pvb clip.mp4`).")
    model = load_any(inputs[0])
    plugin = model.plugin
    if plugin.FilterOptions is None:
        able = [t.name for t in all_tasks() if t.FilterOptions is not None]
        raise PocketVisionError(f"{inputs[0]}: a {plugin.name} model; filter needs a {' or '.join(able)} model.")
    given = _given(a, [m for _, m in _task_models("FilterOptions")])
    refuse_foreign(plugin, given, "FilterOptions", "filter")
    stats = plugin.filter_video(model, inputs[1], a.out, parse_options(plugin.FilterOptions, given, "filter"))
    if a.json:
        _print_json(stats)
    else:
        extra = plugin.filter_line(stats)
        print(f"{stats['output']}: {stats['frames']} frames {stats['size'][0]}x{stats['size'][1]}, "
              f"{stats['fps']} fps end to end (ms/frame: "
              + ", ".join(f"{k} {v:.2f}" for k, v in stats["ms_per_frame"].items()) + ")"
              + (f"; {extra}" if extra else ""))
    return 0


TITLE = "ship it"


def cmd_starter(a: argparse.Namespace) -> int:
    from rich.console import Console
    con = Console(stderr=True)
    r = pv.starter(a.out, a.arch, a.data, log=lambda m: con.print(m))
    if a.json:
        _print_json(r)
    else:
        print(f"starter page: {r['path']} ({r['size_mb']} MB; {r['arch']}, {r['features']} features; the page's "
              f"embedding checked on {r['images']} images, least cosine {r['min_cosine']:.6f}). Serve it with "
              f"`pocketvision serve-web {r['path']}` and teach it your classes.")
    return 0


def register(verb) -> None:
    _register_export(verb)
    _register_run(verb)


def _register_export(verb) -> None:
    """export, compress, verify, predict"""
    s = verb("export", "Export a bundle (uint8 RGB in, the task's outputs out) and verify parity on real images.",
             cmd_export)
    s.add_argument("bundle", help="bundle (.pvb)")
    add_config_flag(s)
    s.add_argument("--to", default="onnx", help=f"target format(s), comma-separated: {', '.join(target_names())}")
    s.add_argument("--out", default=None, help="output file/folder (default: bundle name + variant + suffix)")
    s.add_argument("--out-dir", default=None, help="folder for the outputs when exporting several targets")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--int8", action="store_true", help="static int8, calibrated on training images; worst "
                   "layers stay float until the quality drop is within --max-drop")
    g.add_argument("--fp16", action="store_true", help="half-precision weights (targets that support it)")
    s.add_argument("--bits", type=int, default=None, help="palettise first: 2^bits shared values per layer "
                   "(see `pocketvision compress`)")
    s.add_argument("--max-drop", type=float, default=1.0, help="quality budget in points for --int8/--bits")
    s.add_argument("--qat-steps", type=int, default=0, help="with --int8 (onnx, web): quantisation-aware "
                   "fine-tuning steps on training photos before calibration (0 = post-training only)")
    s.add_argument("--teachable", action="store_true", help="the file also outputs its embedding (the features "
                   "before the head), verified too, so a device can learn new classes on it (onnx, web, tflite)")
    s.add_argument("--data", default=None, help="labelled images for verification (default: the bundle's val split)")
    s.add_argument("--no-verify", action="store_true", help="skip the parity check")
    s.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")

    s = verb("starter", "A teachable web page with no classes of its own: a pretrained network's embedding (offline "
             "ImageNet weights), every class taught in the browser; `pocketvision import` brings them back.",
             cmd_starter)
    s.add_argument("out", help="the web folder to write (e.g. starter.web)")
    s.add_argument("--arch", default="efficientnet_lite0", help="pretrained network (efficientnet_lite0, _lite1, "
                   "_lite2: the offline ImageNet weights)")
    s.add_argument("--data", default=None, help="photos to check the page's embedding on (default: generated images)")
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
    s.add_argument("--no-channel-scale", action="store_true", help="one palette of raw values per layer instead of "
                   "one of values divided by each output channel's largest magnitude (the default)")
    s.add_argument("--sensitivity", choices=["fisher", "scan"], default="fisher",
                   help="how layers are ranked for 8 bits: fisher (one backward pass per batch for every layer, "
                   "HAWQ-style) or scan (palettise each layer alone and measure its accuracy change)")
    s.add_argument("--layer-bits", type=_kv, default={}, help="per-layer bits, e.g. 'features.0.conv=8,classifier=0'")
    s.add_argument("--out", default=None, help="bundle to write (default: NAME-<bits>bit.pvb)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")

    s = verb("verify", "Run the same real images through a bundle and its export; non-zero exit above tolerance.",
             cmd_verify)
    s.add_argument("bundle", help="bundle (.pvb)")
    s.add_argument("exported", help="exported model (.onnx or web folder)")
    s.add_argument("--data", default=None, help="labelled image folder (default: the bundle's val split)")
    s.add_argument("--tolerance", type=float, default=None, help="the task's float tolerance (classify: max "
                   "|probability difference|, default 1e-3; keypoints: pixels; stylize: minimum PSNR in dB); a "
                   "compressed file (its metadata says int8/fp16) is judged by --max-drop instead")
    s.add_argument("--max-drop", type=float, default=1.0, help="quality budget in points for a compressed file")
    s.add_argument("--json", action="store_true", help="print the report as JSON")

    s = verb("predict", "Run a bundle or an exported model on images (the .onnx path needs no torch).", cmd_predict)
    s.add_argument("model", help="bundle (.pvb), exported .onnx/.tflite, or web folder (run in Chromium)")
    s.add_argument("images", nargs="+", help="image files or folders")
    s.add_argument("--out-dir", default="pv-out", help="where image outputs (a stylised picture) are written")
    s.add_argument("--json", action="store_true", help="print results as JSON")


def _register_run(verb) -> None:
    """bench, device-profile, fetch-web-runtime, filter"""
    s = verb("bench", "Latency p50/p90/p99 (1 thread, all threads), throughput, memory, size, end to end.",
             cmd_bench)
    s.add_argument("model", help="exported .onnx or a bundle (exported to a temp .onnx first)")
    s.add_argument("--all", action="store_true", help="bundle: export every target x compression, run each in its "
                   "real runtime on --data, and print one table (size, gzip, accuracy, parity, latency, status) "
                   "plus a Pareto plot")
    s.add_argument("--variants", default=None, help="with --all: target[:precision[:bits]],... e.g. "
                   "'onnx,onnx:int8,onnx:fp32:4,web' (default: onnx fp32/int8/4-bit, web fp32/int8)")
    s.add_argument("--out-dir", default=None, help="with --all: where the exports, table JSON and plot go")
    s.add_argument("--max-drop", type=float, default=1.0, help="with --all: quality budget (points) for "
                   "compressed variants")
    s.add_argument("--data", default=None, help="real photos for the end-to-end (JPEG bytes -> label) timing")
    s.add_argument("--large", default=None, help="large photos (e.g. 12 MP) for a second end-to-end timing")
    s.add_argument("--max-images", type=int, default=50, help="photos used for end-to-end timing")
    s.add_argument("--runs", type=int, default=100, help="timed runs per latency measurement")
    s.add_argument("--batch", type=int, default=32, help="batch size for the throughput measurement")
    s.add_argument("--pick", action="store_true", help="bundle: verify every variant on --data, time each verified "
                   "one per thread count and accelerator, pick the fastest within --max-drop and record it in the "
                   "bundle's lineage")
    s.add_argument("--device-profile", default="here", metavar="here|FILE", help="with --pick: measure on this "
                   "machine (here), or predict for the device a `pocketvision device-profile` FILE describes")
    s.add_argument("--threads", default=None, help="with --pick: thread counts to try, e.g. 1,2,4 (default: 1, 2, "
                   "4... up to the device's cores)")
    s.add_argument("--json", action="store_true", help="print the results as JSON")

    s = verb("device-profile", "Measure this device's per-kernel onnxruntime latency table (numpy, onnx and "
             "onnxruntime only: run it on the phone-class board or edge box) for `bench --pick --device-profile`.",
             cmd_device_profile)
    s.add_argument("--out", required=True, help="profile file to write (JSON)")
    s.add_argument("--name", default=None, help="the device's name in reports (default: its CPU)")
    s.add_argument("--threads", default=None, help="thread counts to measure, e.g. 1,2,4 (default: 1, 2, 4... up "
                   "to the cores)")
    s.add_argument("--runs", type=int, default=20, help="timed runs per probe network")

    s = verb("fetch-web-runtime", "Download the onnxruntime-web runtime files (npm package) that `export --to web` "
             "copies into each web folder (an explicit download, like fetch-shards).", cmd_fetch_web_runtime)
    s.add_argument("--version", default=None, help="onnxruntime-web version (default: the tested one)")
    s.add_argument("--force", action="store_true", help="download again even when the files are here already")

    able = [t for t in all_tasks() if t.FilterOptions is not None]
    s = verb("filter", f"Run a {' or '.join(t.name for t in able)} model on every frame of a video and write the "
             "result (sprites on keypoints, a stylised video).", cmd_filter)
    s.add_argument("inputs", nargs="+", metavar="MODEL VIDEO", help="the model (bundle, .onnx or .tflite) and the "
                   "input video (anything OpenCV decodes: mp4, avi, mov...)")
    for t in able:
        if t.model_flag:
            s.add_argument(t.model_flag, dest=f"model_flag_{t.name}", default=None, metavar="MODEL",
                           help=f"{t.name}: the model, given by name (then only VIDEO is positional)")
    s.add_argument("--out", default="filtered.mp4", help="output video (mp4)")
    s.add_argument("--json", action="store_true", help="print the stats as JSON")
    add_option_flags(s, _task_models("FilterOptions"))
