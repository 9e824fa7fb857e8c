"""Command line: argument parsing, and every verb calls the Python API (``--devices N`` also starts the
training processes, through torchrun).

Flags are built from the typed option models (the engine's ``TrainConfig`` and each task's ``Options``,
``EvalOptions``, ``CheckOptions``, ``FilterOptions``), so an option is written once, and a task's own verbs
(``Task.commands``) are added from the registry. Imports are local to each verb so ``pocketvision predict
model.onnx`` never loads torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
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


def _ints(s: str) -> list[int]:
    """'96,128,160' -> [96, 128, 160]."""
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {s!r}") from None


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


def _word_or_floats(words: tuple[str, ...]):
    """A choice of words, or comma-separated numbers (``--class-weights auto|none|w1,w2``)."""
    def parse(s: str):
        if s in words:
            return s
        try:
            return [float(x) for x in s.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {' or '.join(words)} or comma-separated numbers, got "
                                             f"{s!r}") from None
    return parse


# -- flags from typed option models ---------------------------------------------------------------------
def _flag_kwargs(annotation: Any) -> dict[str, Any]:
    """argparse keywords for a pydantic field's type."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        lits = [a for a in args if typing.get_origin(a) is typing.Literal]
        lists = [a for a in args if typing.get_origin(a) is list]
        if lits and lists:
            return {"type": _word_or_floats(typing.get_args(lits[0])), "metavar": "|".join(typing.get_args(lits[0]))
                    + "|N,N,..."}
        if len(args) == 1:
            return _flag_kwargs(args[0])
    if origin is typing.Literal:
        return {"choices": list(typing.get_args(annotation))}
    if origin is dict or annotation is dict:
        return {"type": _kv, "metavar": "K=V,..."}
    if origin is list:
        return {"action": "append", "metavar": "VALUE"}
    if annotation in (int, float, str):
        return {"type": annotation}
    if annotation is Path:
        return {"type": str}
    return {"type": str}


def add_option_flags(parser: argparse.ArgumentParser, models: list[tuple[str, Any]], seen: set[str] | None = None,
                     exclude: tuple[str, ...] = ()) -> None:
    """One flag per field of each (``owner``, model); ``owner`` prefixes the help (e.g. 'keypoints: '). A field
    several models share is added once. Unset flags stay out of the namespace (``argparse.SUPPRESS``), so only
    what the user typed reaches the API, which validates it and refuses what the task cannot use."""
    seen = set() if seen is None else seen
    owners: dict[str, list[str]] = {}
    for owner, model in models:
        for name in model.model_fields:
            owners.setdefault(name, []).append(owner)
    for owner, model in models:
        for name, f in model.model_fields.items():
            extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
            if name in seen or name in exclude or extra.get("cli") is False:
                continue
            seen.add(name)
            flag = extra.get("flag") or "--" + name.replace("_", "-")
            default = f.get_default(call_default_factory=True)
            who = [o for o in owners[name] if o]
            prefix = f"{', '.join(dict.fromkeys(who))}: " if who else ""
            shown = default if default not in (None, {}, []) else None
            help_ = f"{prefix}{extra.get('flag_help') or f.description or ''}" + (
                f" (default: {shown})" if shown is not None and not isinstance(default, bool) else "")
            help_ = help_.replace("%", "%%")
            if f.annotation is bool or typing.get_args(f.annotation) == (bool, type(None)):
                # a "--no-..." flag of a field whose default is None (auto) says False, like one whose default is True
                off = default is True or flag.startswith("--no-")
                kw: dict[str, Any] = {"action": "store_false" if off else "store_true"}
            else:
                kw = _flag_kwargs(f.annotation)
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=help_, **kw)


def _given(a: argparse.Namespace, models: list[Any]) -> dict[str, Any]:
    names = {n for m in models for n in m.model_fields}
    return {k: v for k, v in vars(a).items() if k in names}


def _task_models(attr: str) -> list[tuple[str, Any]]:
    from .tasks import all_tasks
    return [(t.name, getattr(t, attr)) for t in all_tasks() if getattr(t, attr) is not None]


# -- verbs -------------------------------------------------------------------------------------------
def cmd_train(a: argparse.Namespace) -> int:
    import pocketvision as pv
    from .training.config import TrainConfig

    opts = _given(a, [TrainConfig] + [m for _, m in _task_models("Options")])
    opts["progress"] = not a.json
    if opts.get("devices", 1) > 1:
        launched = _launch_devices(a, opts)
        if launched is not None:
            return launched
    if a.find_lr:
        r = pv.find_lr(a.data, **opts)
        if a.json:
            _print_json({k: r[k] for k in ("suggested_lr", "plot")})
        else:
            print(f"suggested lr: {r['suggested_lr']:.2e}  (plot: {r['plot']})")
        return 0
    try:
        b = pv.train(a.data, out=a.out, resume=a.resume, console=_console(), **opts)
    except KeyboardInterrupt:
        return 130
    if b is None:  # a distributed run's other processes: rank 0 writes and reports
        return 0
    if a.json:
        _print_json({"bundle": str(b.path), "metrics": b.plugin.brief(b.metrics), "report": b.meta.get("report")})
    else:
        from rich.console import Console
        b.plugin.render_metrics(b.metrics, Console())
        print(f"bundle: {b.path}\nreport: {b.meta.get('report')}")
    return 0


def _launch_devices(a: argparse.Namespace, opts: dict) -> int | None:
    """``--devices N`` outside torchrun: check what the processes would refuse, then start them -> exit code.
    None under torchrun (this process is one of them)."""
    import time

    from .training import distributed
    from .training.config import split_options
    if distributed.from_env().active:
        return None
    if a.find_lr:
        raise PocketVisionError("--find-lr runs in one process: leave --devices out.")
    devices = opts["devices"]
    distributed.check_available(devices, opts.get("device", "auto"))
    if a.resume:
        run_dir = Path(a.resume)
        max_restarts = opts.get("max_restarts", 1)
    else:
        _, cfg, _, _ = split_options(a.data, opts)
        distributed.local_batch(cfg.batch_size, (0, devices))
        run_dir = cfg.run_dir or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
        max_restarts = cfg.max_restarts
    return distributed.launch(a.argv, devices, run_dir, max_restarts)


def cmd_eval(a: argparse.Namespace) -> int:
    from .runtime.artifact import load_any
    model = load_any(a.model)
    m = model.evaluate(a.data, split=a.split, report_dir=a.report, **_given(a, [m for _, m in _task_models("EvalOptions")]))
    if a.json:
        _print_json(model.plugin.brief(m))
    else:
        from rich.console import Console
        model.plugin.render_metrics(m, Console())
        if m.get("report"):
            print(f"report: {m['report']}")
    return 0


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


def _save_arrays(record: dict[str, Any], image: Path, out_dir: Path) -> dict[str, Any]:
    """A record's image-valued fields (a stylised picture...) become PNG files in ``out_dir``."""
    import numpy as np
    out = {}
    for k, v in record.items():
        if isinstance(v, np.ndarray) and v.ndim == 3:
            from PIL import Image

            from .bundle import atomic_write_bytes
            import io
            buf = io.BytesIO()
            Image.fromarray(v).save(buf, format="PNG")
            out[k] = str(atomic_write_bytes(out_dir / f"{image.stem}.{k}.png", buf.getvalue()))
        else:
            out[k] = v
    return out


def cmd_predict(a: argparse.Namespace) -> int:
    from .runtime.artifact import load_any
    from .errors import ImageDecodeError
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
    import pocketvision as pv
    from .export import check_request, get_target, variant_suffix
    targets = [t.strip() for t in a.to.split(",") if t.strip()]
    precision = "int8" if a.int8 else ("fp16" if a.fp16 else "fp32")
    for t in targets:  # the request first, then what the bundle's task allows: all before any work
        get_target(t).check(None, precision, a.bits, a.qat_steps)
    if a.out and len(targets) > 1:
        raise PocketVisionError("--out names one file; with several --to targets use --out-dir.")
    b = pv.load(a.bundle)
    chosen = [check_request(b.plugin, t, precision, a.bits, a.qat_steps) for t in targets]  # before any work
    log = (lambda s: None) if a.json else (lambda s: print(s, file=sys.stderr))
    results, ok = [], True
    for t in chosen:
        out = a.out or (Path(a.out_dir) / (Path(a.bundle).stem + variant_suffix(precision, a.bits) + t.suffix)
                        if a.out_dir else None)
        res = b.export(out, to=t.name, verify=not a.no_verify, data=a.data, opset=a.opset, precision=precision,
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
                _print_parity(v, b.plugin)
    if a.json:
        _print_json(results if len(results) > 1 else results[0])
    return 0 if ok else 1


def _print_parity(v: dict, plugin) -> None:
    if "structure" in v:  # a runtime that cannot run here (Core ML off macOS): structure only
        print(f"verify {'structure OK' if v['passed'] else 'structure FAILED'}: {v['criterion']} "
              f"({', '.join(f'{k}={val}' for k, val in v['structure'].items())})")
        return
    prec = v.get("precision", "fp32")
    judged = (f"within the {prec} budget" if v["passed"] else f"outside the {prec} budget") if v.get("criterion") \
        else f"{prec} parity"
    made = f", made by {' -> '.join(v['lineage'])}" if v.get("lineage") else ""
    print(f"verify {'PASSED' if v['passed'] else 'FAILED'} ({judged}{made}): {plugin.parity_line(v)}")
    if "shifted" in v:
        print(f"  on their phone-photo twin (blur, JPEG, dark, flash, ...): {plugin.parity_line(v['shifted'])}")
    if v.get("broke"):
        print(f"  failed on: {', '.join(v['broke'])}")


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


def cmd_cache(a: argparse.Namespace) -> int:
    from .data.cache import build
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
    from .api import write_shards
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
    from .api import fetch_shards
    st = fetch_shards(a.url, a.out, a.threads)
    if a.json:
        _print_json(st)
    else:
        print(f"{st['folder']}: {st['fetched']} shard(s) fetched, {st['kept']} already there and complete "
              f"({st['megabytes']} MB, {st['seconds']} s)")
    return 0


def cmd_search(a: argparse.Namespace) -> int:
    from .search import search
    quiet = a.json
    summary = search(a.data, target=a.target, precision="int8" if a.int8 else "fp32", max_latency_ms=a.max_latency_ms,
                     max_size_mb=a.max_size_mb, budget=a.budget, workers=a.workers, ray=a.ray, resume=a.resume,
                     out=a.out, run_dir=a.run_dir, population=a.population, sample=a.sample, batch=a.batch,
                     rule=a.rule, objective=a.objective, epochs=a.epochs, final_epochs=a.final_epochs,
                     batch_size=a.batch_size, seed=a.seed, latency_table=a.latency_table, inherit=a.inherit,
                     start=a.start, finalists=a.finalists, final_seeds=a.final_seeds, scale_up=a.scale_up,
                     **({"resolutions": a.resolutions} if a.resolutions else {}),
                     log=(lambda m: None) if quiet else (lambda m: print(m, flush=True)))
    if a.json:
        _print_json(summary)
        return 0
    print(f"{summary['evaluations']} candidates ({summary['feasible']} within the limits) in {summary['run_dir']}")
    for p in summary["pareto_front"]:
        print(f"  front: [{p['index']}] score {p['score']:.4f}  {p['latency_ms']:.2f} ms  {p['size_mb']:.2f} MB  "
              f"{p['architecture']}")
    best = summary.get("best")
    if best:  # arch.json: the search's best, or the final stage's winner when there was one
        print(f"best in the search: [{best['index']}] {best['architecture']}")
    for f in summary.get("finals") or []:
        scaled = f" scaled x{f['scaled']:g}" if f["scaled"] else ""
        scores = " ".join(f"{x:.4f}" for x in f["scores"])
        print(f"  finalist {f['finalist']}: from [{f['from']}]{scaled}  scores {scores} (mean {f['mean']:.4f})  "
              f"{f['latency_ms']:.2f} ms  {f['architecture']}")
    if best:
        print(f"architecture: {best['arch_file']} (train it again: pocketvision train DATA --arch "
              f"searched:{best['arch_file']})")
    if summary.get("final"):
        f = summary["final"]
        print(f"bundle: {f['bundle']} (finalist {f['finalist']}: score {f['score']:.4f}, mean of the seeds "
              f"{f['mean']:.4f}, {f['latency_ms']:.2f} ms, {f['size_mb']:.2f} MB)")
    return 0


def cmd_fetch_web_runtime(a: argparse.Namespace) -> int:
    from .export.web import ORT_WEB_VERSION, fetch_runtime
    path = fetch_runtime(a.version or ORT_WEB_VERSION)
    print(f"onnxruntime-web {a.version or ORT_WEB_VERSION}: {path}")
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    import pocketvision as pv
    b = pv.load(a.bundle)
    v = b.verify(a.exported, data=a.data, tolerance=a.tolerance, max_drop=a.max_drop)
    _print_json(v) if a.json else _print_parity(v, b.plugin)
    return 0 if v["passed"] else 1


def cmd_bench(a: argparse.Namespace) -> int:
    import tempfile
    from .runtime.bench import bench
    if a.pick:
        return _bench_pick(a)
    if a.all:
        return _bench_all(a)
    path = Path(a.model)
    tmp = None
    from .runtime.artifact import is_artifact
    if not is_artifact(path):
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


def _thread_list(text: str | None, flag: str = "--threads") -> list[int] | None:
    if text is None:
        return None
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise PocketVisionError(f"{flag} {text}: thread counts such as 1,2,4.")
    return counts


def _bench_variant_list(a: argparse.Namespace, task) -> list[tuple[str, str, int | None]] | None:
    from .export import check_request
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
    import pocketvision as pv
    from .runtime import placement
    from .runtime.artifact import is_artifact
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
    from .bundle import atomic_write_bytes
    from .runtime import profiles
    prof = profiles.measure(_thread_list(a.threads), name=a.name, runs=a.runs, log=print)
    atomic_write_bytes(Path(a.out), json.dumps(prof, indent=1).encode())
    print(f"device profile of {prof['name']} ({', '.join(prof['threads'])} thread(s)): {a.out}")
    return 0


def _bench_all(a: argparse.Namespace) -> int:
    import pocketvision as pv
    from .runtime import variants as V
    from .runtime.bench import machine
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


def cmd_check(a: argparse.Namespace) -> int:
    from .tasks import get_task
    from .tasks.base import detect_task, parse_options, refuse_foreign
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


def cmd_filter(a: argparse.Namespace) -> int:
    from .runtime.artifact import load_any
    from .tasks.base import parse_options, refuse_foreign
    named = [v for k, v in vars(a).items() if k.startswith("model_flag_") and v]
    inputs = ([*named, *a.inputs] if named else a.inputs)
    if len(inputs) != 2:
        raise PocketVisionError("filter takes a MODEL and a VIDEO (e.g. `pocketvision filter faces.pvb clip.mp4`, "
                                "or `pocketvision filter --style starry.pvb clip.mp4`).")
    model = load_any(inputs[0])
    plugin = model.plugin
    if plugin.FilterOptions is None:
        from .tasks import all_tasks
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


def cmd_label(a: argparse.Namespace) -> int:
    from .label.server import run
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    run(a.dir, split(a.keypoints), split(a.classes), out=a.out, host=a.host, port=a.port,
        open_browser=not a.no_browser, model=a.model, order=a.order, folders=a.folders,
        log=lambda m: print(m, flush=True))  # flushed: scripts read the URL from a pipe
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from .models import list_models, model_info
    arch, arch_args, side = a.arch, dict(a.arch_args), a.size
    if arch and arch.startswith("searched:"):  # a `pocketvision search` architecture file
        from .models.searched import load_searched
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
        from .models.searched import check_blocks
        bt = Table(title="blocks")
        for col in ("#", "op", "out", "k", "stride", "expand", "act", "SE", "skip", "BN"):
            bt.add_column(col)
        for i, b in enumerate(check_blocks(blocks)):
            bt.add_row(str(i), b["op"], str(b["out"]), str(b["k"]), str(b["stride"]),
                       str(b["expand"]) if b["op"] == "mbconv" else "-", b["act"], "yes" if b["se"] else "no",
                       "yes" if b["skip"] else "no", b["bn"])
        Console().print(bt)
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
    from .tasks import all_tasks
    from .training.config import TaskName, TrainConfig
    p = argparse.ArgumentParser(prog="pocketvision", description="From a folder of photos to a verified "
                                "on-device vision model.", epilog=EPILOG, formatter_class=_Fmt)
    p.add_argument("--version", action="version", version=f"pocketvision {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_: str, fn) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help_, description=help_, formatter_class=_Fmt)
        s.set_defaults(fn=fn)
        return s

    tasks = ", ".join(f"{t.name} ({t.summary})" for t in all_tasks())
    s = verb("train", f"Train a model and write a bundle. Tasks: {tasks}.", cmd_train)
    s.add_argument("data", help="the task's training data: an image folder DATA/<class>/*.jpg or "
                   "DATA/{train,val[,test]}/<class>/ (classify); a COCO keypoints .json, a .csv or a folder with "
                   "train.json (keypoints); a folder of content photos (stylize)")
    s.add_argument("--out", default="model.pvb", help="bundle to write")
    s.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    s.add_argument("--find-lr", action="store_true", help="run an LR range test, save the plot, and exit")
    s.add_argument("--json", action="store_true", help="print the result as JSON (no progress bar)")
    seen: set[str] = set()
    add_option_flags(s, [("", TrainConfig)], seen)
    add_option_flags(s, _task_models("Options"), seen)

    s = verb("eval", "Evaluate a bundle or exported model on labelled data of its task (an HTML report with "
             "--report).", cmd_eval)
    s.add_argument("model", help="bundle (.pvb), exported .onnx/.tflite, or web folder (run in Chromium)")
    s.add_argument("data", help="labelled data: an image folder (classify); COCO .json, .csv, or a folder with "
                   "val.json (keypoints); content photos (stylize)")
    s.add_argument("--split", default="auto", help="auto (test/, else val/, else all), all, train, val, test")
    s.add_argument("--report", default=None, metavar="DIR", help="write an HTML report with plots and mistakes")
    s.add_argument("--json", action="store_true", help="print metrics as JSON")
    add_option_flags(s, _task_models("EvalOptions"))

    s = verb("predict", "Run a bundle or an exported model on images (the .onnx path needs no torch).", cmd_predict)
    s.add_argument("model", help="bundle (.pvb), exported .onnx/.tflite, or web folder (run in Chromium)")
    s.add_argument("images", nargs="+", help="image files or folders")
    s.add_argument("--out-dir", default="pv-out", help="where image outputs (a stylised picture) are written")
    s.add_argument("--json", action="store_true", help="print results as JSON")

    s = verb("export", "Export a bundle (uint8 RGB in, the task's outputs out) and verify parity on real images.",
             cmd_export)
    s.add_argument("bundle", help="bundle (.pvb)")
    from .export import target_names
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
    s.add_argument("--no-channel-scale", action="store_true", help="one palette of raw values per layer instead of "
                   "one of values divided by each output channel's largest magnitude (the default)")
    s.add_argument("--sensitivity", choices=["fisher", "scan"], default="fisher",
                   help="how layers are ranked for 8 bits: fisher (one backward pass per batch for every layer, "
                   "HAWQ-style) or scan (palettise each layer alone and measure its accuracy change)")
    s.add_argument("--layer-bits", type=_kv, default={}, help="per-layer bits, e.g. 'features.0.conv=8,classifier=0'")
    s.add_argument("--out", default=None, help="bundle to write (default: NAME-<bits>bit.pvb)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")

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
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=0, help="decoding threads (default: all cores)")
    s.add_argument("--json", action="store_true", help="print the result as JSON")

    s = verb("fetch-shards", "Download a shard set (its shards.json URL: https://, file://, a bucket's HTTPS "
             "endpoint) into a folder, checking each shard's SHA-256; run again to resume.", cmd_fetch_shards)
    s.add_argument("url", help="URL or path of shards.json")
    s.add_argument("--out", required=True, help="folder to fetch into")
    s.add_argument("--threads", type=int, default=4, help="parallel downloads")
    s.add_argument("--json", action="store_true", help="print the result as JSON")

    s = verb("search", "Evolve an architecture for DATA within a measured latency/size budget on the target "
             "(regularized evolution; Optuna trials; local or Ray workers; resumable).", cmd_search)
    s.add_argument("data", nargs="?", default=None, help="training data (not needed with --resume)")
    s.add_argument("--target", default="onnx", help="where latency is measured: onnx (onnxruntime) or tflite "
                   "(LiteRT), 1 thread")
    s.add_argument("--int8", action="store_true", help="time the int8 export instead of fp32")
    s.add_argument("--max-latency-ms", type=float, default=None, help="hard limit on the measured latency")
    s.add_argument("--max-size-mb", type=float, default=None, help="hard limit on the exported file's size")
    s.add_argument("--budget", default="8h", help="a time (8h, 90m) or a number of candidates (40)")
    s.add_argument("--workers", type=int, default=1, help="local worker processes (one torch thread each)")
    s.add_argument("--ray", default=None, metavar="ADDRESS", help="run candidates as tasks on this Ray cluster "
                   "(e.g. 127.0.0.1:6379, or auto)")
    s.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a killed or finished search")
    s.add_argument("--out", default=None,
                   help="train the best architecture with the from-scratch recipe and write this bundle")
    s.add_argument("--run-dir", default=None, help="folder for the trials and outputs (default: runs/search-<time>)")
    s.add_argument("--population", type=int, default=12, help="population size (the first ones are random)")
    s.add_argument("--sample", type=int, default=4, help="tournament size: the parent is the best of this many")
    s.add_argument("--batch", type=int, default=2, help="candidates proposed together per round (results do not "
                   "depend on --workers)")
    s.add_argument("--rule", default="aging", help="aging: the oldest leaves (regularized evolution); worst: the "
                   "least fit leaves")
    s.add_argument("--objective", default="constrained", help="constrained: limits are hard; weighted: MnasNet's "
                   "score x (latency/limit)^-0.07")
    s.add_argument("--epochs", type=int, default=3, help="training epochs per candidate")
    s.add_argument("--final-epochs", type=int, default=None,
                   help="the final bundle's (--out) epochs; default: the from-scratch recipe's, as any network gets")
    s.add_argument("--finalists", type=int, default=1, help="with --out: train this many of the best distinct "
                   "architectures with the final budget and keep the best (a short-training score is a rough guide)")
    s.add_argument("--final-seeds", type=int, default=1, help="with --out: train each finalist with this many seeds "
                   "and pick by the mean")
    s.add_argument("--scale-up", action="store_true", help="with --out: also enter each finalist scaled up (wider, "
                   "larger input) to just under --max-latency-ms, measured")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--latency-table", default=None, help="per-block latency table to reuse (default: one in the "
                   "run folder)")
    s.add_argument("--resolutions", type=_ints, default=None, help="input sides to search, e.g. 96,128,160 (default: "
                   "64,96,128,160,192,224)")
    s.add_argument("--inherit", action="store_true", help="weight inheritance: a child starts from its parent's "
                   "trained tensors wherever name and shape match (the rest fresh), as in Real et al.")
    s.add_argument("--start", action="append", default=None, metavar="FILE", help="begin from this network "
                   "instead of random ones (repeatable): a trained bundle (searched, deepdog or mobilenet_v1 with BN "
                   "after the depthwise conv) or an arch.json; the first population is it and its mutants")
    s.add_argument("--json", action="store_true", help="print the summary (Pareto front, best) as JSON")

    s = verb("fetch-web-runtime", "Download the onnxruntime-web runtime files (npm package) that `export --to web` "
             "copies into each web folder (an explicit download, like fetch-shards).", cmd_fetch_web_runtime)
    s.add_argument("--version", default=None, help="onnxruntime-web version (default: the tested one)")

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

    s = verb("check", "Check training data: counts, imbalance, duplicates/leakage, tiny and unreadable files "
             "(image folders); per-point visibility, points outside the image, suspect labels (keypoints).", cmd_check)
    s.add_argument("data", help="image folder, or a COCO keypoints .json / keypoints .csv / folder with train.json")
    s.add_argument("--task", choices=typing.get_args(TaskName), default="auto", help="whose check to run "
                   "(auto: from the data)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    add_option_flags(s, _task_models("CheckOptions"))

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
    s.add_argument("arch", nargs="?", default=None, help="architecture name, or searched:FILE for a `pocketvision "
                   "search` result (omit to list all)")
    s.add_argument("--pattern", default=None, help="glob filter for the list, e.g. 'mobilenet*'")
    s.add_argument("--size", type=int, default=None, help="input side for the MAC count (default: the arch's)")
    s.add_argument("--arch-args", type=_kv, default={}, help="architecture arguments, e.g. alpha=0.5")
    s.add_argument("--json", action="store_true", help="print as JSON")

    s = verb("demo", "Build a small synthetic two-class photo set, then train, evaluate, export, verify, bench.",
             cmd_demo)
    s.add_argument("--out", default="pv-demo", help="folder for the data, bundle, exports and report")
    s.add_argument("--epochs", type=int, default=15, help="training epochs")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    from .cli_ota import add_verbs
    add_verbs(verb)
    for t in all_tasks():  # verbs a task adds (`pocketvision stylize`)
        for c in t.commands():
            s = verb(c.name, c.help, _command(c))
            c.arguments(s)
            add_option_flags(s, [("", c.options)])
            s.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _command(c):
    def run(a: argparse.Namespace) -> int:
        from .tasks.base import parse_options
        return c.run(a, parse_options(c.options, _given(a, [c.options]), c.name))
    return run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `--devices N` re-runs the same command line
    try:
        return args.fn(args)
    except PocketVisionError as e:
        from .training.distributed import report_error
        if not report_error(str(e)):  # one of `--devices N`'s processes: the launcher prints it once
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
