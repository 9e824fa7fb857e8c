"""Verbs that make a model: train, eval, search, demo."""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

import pocketvision as pv
from ..demo import run_demo
from ..deploy.artifact import load_any
from ..errors import PocketVisionError
from ..pipeline.options import TaskName, split_options
from ..tasks import all_tasks
from ..training import distributed
from ..training.config import TrainConfig
from .common import _console, _given, _ints, _print_json, _task_models, add_config_flag, add_option_flags


def cmd_train(a: argparse.Namespace) -> int:
    if a.data is None:
        raise PocketVisionError("train: give the training data (DATA), or a --config file with `data:`.")
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
    model = load_any(a.model)
    m = model.evaluate(a.data, split=a.split, report_dir=a.report,
                       **_given(a, [m for _, m in _task_models("EvalOptions")]))
    if a.json:
        _print_json(model.plugin.brief(m))
    else:
        from rich.console import Console
        model.plugin.render_metrics(m, Console())
        if m.get("report"):
            print(f"report: {m['report']}")
    return 0


def cmd_search(a: argparse.Namespace) -> int:
    from ..search import search
    quiet = a.json
    summary = search(a.data, target=a.target, precision="int8" if a.int8 else "fp32", max_latency_ms=a.max_latency_ms,
                     max_size_mb=a.max_size_mb, budget=a.budget, workers=a.workers, ray=a.ray, resume=a.resume,
                     out=a.out, run_dir=a.run_dir, population=a.population, sample=a.sample, batch=a.batch,
                     rule=a.rule, objective=a.objective, epochs=a.epochs, final_epochs=a.final_epochs,
                     batch_size=a.batch_size, seed=a.seed, latency_table=a.latency_table, inherit=a.inherit,
                     start=a.start, finalists=a.finalists, final_seeds=a.final_seeds, scale_up=a.scale_up,
                     **({"resolutions": a.resolutions} if a.resolutions else {}),
                     # --json: the JSON alone on stdout, the progress on stderr (a search takes minutes to hours)
                     log=lambda m: print(m, file=sys.stderr if quiet else sys.stdout, flush=True))
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


def cmd_demo(a: argparse.Namespace) -> int:
    summary = run_demo(Path(a.out), epochs=a.epochs, quiet=a.json)
    if a.json:
        _print_json(summary)
    return 0


# -- parser ------------------------------------------------------------------------------------------
TITLE = "make a model"

# `train --help`: the engine's options by purpose (TrainConfig's fields; one missing here is shown under "more")
TRAIN_GROUPS = {
    "what to train": ["task", "arch", "arch_args", "pretrained", "size", "recipe", "init_from", "inherit_from"],
    "how it learns": ["epochs", "batch_size", "optimizer", "lr", "lr_scaling", "lr_reference_batch", "weight_decay",
                      "schedule", "clr_cycle_epochs", "freeze_epochs", "backbone_lr_mult", "freeze_bn",
                      "early_stopping", "ema", "progressive", "progressive_until"],
    "the photos": ["val_fraction", "augment", "seed", "batch_augment", "workers", "cache_mb", "cache_dir"],
    "the machine": ["device", "devices", "max_restarts", "amp", "compile", "channels_last"],
    "what it writes": ["run_dir", "tensorboard", "progress"],
}


def _register_train(verb) -> None:
    tasks = ", ".join(f"{t.name} ({t.summary})" for t in all_tasks())
    s = verb("train", f"Train a model and write a bundle. Tasks: {tasks}.", cmd_train)
    s.add_argument("data", nargs="?", default=None, help="the task's training data: an image folder "
                   "DATA/<class>/*.jpg or DATA/{train,val[,test]}/<class>/ (classify); a COCO keypoints .json, a .csv "
                   "or a folder with train.json (keypoints); a folder of content photos (stylize); or `data:` in "
                   "--config")
    add_config_flag(s, "; each run writes its whole configuration as RUN/config.yaml, ready for --config")
    s.add_argument("--out", default="model.pvb", help="bundle to write")
    s.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    s.add_argument("--find-lr", action="store_true", help="run an LR range test, save the plot, and exit")
    s.add_argument("--json", action="store_true", help="print the result as JSON (no progress bar)")
    seen: set[str] = set()
    for title, names in TRAIN_GROUPS.items():  # the engine's options by purpose, then each task's own
        add_option_flags(s.add_argument_group(title), [("", TrainConfig)], seen, only=set(names))
    add_option_flags(s.add_argument_group("more"), [("", TrainConfig)], seen)  # a new field is never hidden
    for t in all_tasks():
        add_option_flags(s.add_argument_group(f"{t.name} only (--task {t.name})"),
                         [(t.name, t.Options)], seen)
    next(a for a in s._actions if a.dest == "task").choices = typing.get_args(TaskName)  # the engine's field is a str


def register(verb) -> None:
    _register_train(verb)

    s = verb("eval", "Evaluate a bundle or exported model on labelled data of its task (an HTML report with "
             "--report).", cmd_eval)
    s.add_argument("model", help="bundle (.pvb), exported .onnx/.tflite, or web folder (run in Chromium)")
    s.add_argument("data", help="labelled data: an image folder (classify); COCO .json, .csv, or a folder with "
                   "val.json (keypoints); content photos (stylize)")
    s.add_argument("--split", default="auto", help="auto (test/, else val/, else all), all, train, val, test")
    s.add_argument("--report", default=None, metavar="DIR", help="write an HTML report with plots and mistakes")
    s.add_argument("--json", action="store_true", help="print metrics as JSON")
    add_option_flags(s, _task_models("EvalOptions"))

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
    s.add_argument("--batch-size", type=int, default=32, help="each trial's training batch size")
    s.add_argument("--seed", type=int, default=0, help="the search's seed (sampling, mutation, training)")
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

    s = verb("demo", "Build a small synthetic two-class photo set, then train, evaluate, export, verify, bench.",
             cmd_demo)
    s.add_argument("--out", default="pv-demo", help="folder for the data, bundle, exports and report")
    s.add_argument("--epochs", type=int, default=15, help="training epochs")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
