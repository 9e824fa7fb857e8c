"""A fourth task that lives outside pocketvision: how bright a photo is (a number in [0, 1]).

It is what a third party writes to add a task: one module with a ``Task`` subclass, registered by its
distribution's ``pocketvision.tasks`` entry point (``pv_brightness-0.1.dist-info`` beside it plays the installed
distribution). Nothing in the package names it: ``train``, ``export``, ``verify`` and ``predict`` find it through
the registry. Data: a folder of images plus ``brightness.csv`` (``file,value``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from pocketvision.core.contract import Contract
from pocketvision.core.pixels import load_pixels
from pocketvision.errors import PocketVisionError
from pocketvision.tasks import HeldOut, OutputSpec, Task, TaskRun, Validation, register_task

TABLE = "brightness.csv"


def read_table(root: Path) -> list[tuple[Path, float]]:
    try:
        with open(root / TABLE, newline="") as f:
            return [(root / r["file"], float(r["value"])) for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError) as e:
        raise PocketVisionError(f"{root / TABLE}: needs a header 'file,value' and one number per image "
                                f"({e}).") from None


def split(rows: list, val_every: int = 4) -> tuple[list, list]:
    return [r for i, r in enumerate(rows) if i % val_every], rows[::val_every]


class BrightnessRun(TaskRun):
    def __init__(self, task: BrightnessTask, data, cfg, console):
        import torch

        from pocketvision.models import build_model, model_entry

        self.data, self.cfg, self.problems = Path(data).resolve(), cfg, []
        arch = cfg.arch or task.default_arch[0]
        args = dict(cfg.arch_args) if cfg.arch else dict(task.default_arch[1])
        self.spec = {"name": arch, "args": {**args, "num_classes": 1}}
        self.model = build_model(self.spec, pretrained=False)
        self.contract = Contract.from_dict({**model_entry(arch).default_contract, "size": [cfg.size, cfg.size]})
        train, val = split(read_table(self.data))
        self.val_files = [str(p) for p, _ in val]
        self.x, kept = load_pixels([p for p, _ in train], self.contract)
        self.y = torch.tensor([train[i][1] for i in kept], dtype=torch.float32)
        self.vx, vkept = load_pixels([p for p, _ in val], self.contract)
        self.vy = torch.tensor([val[i][1] for i in vkept], dtype=torch.float32)
        self.rng = np.random.default_rng(cfg.seed)

    def prologue(self, engine, resuming: bool) -> None:
        self.engine = engine

    def steps_per_epoch(self) -> int:
        return max(1, len(self.x) // self.cfg.batch_size)

    def batches(self, epoch: int):
        import torch
        order = self.rng.permutation(len(self.x))
        for i in range(self.steps_per_epoch()):
            idx = order[i * self.cfg.batch_size:(i + 1) * self.cfg.batch_size]
            yield torch.from_numpy(self.x[idx]), self.y[idx]

    def forward(self, net, batch):
        return net(self.engine.to_input(batch[0]))[:, 0]

    def loss(self, outputs, batch):
        import torch
        return torch.nn.functional.mse_loss(outputs.float(), batch[1].to(outputs.device))

    def validate(self, net) -> Validation:
        import torch
        net.eval()
        with torch.no_grad():
            pred = net(self.engine.to_input(torch.from_numpy(self.vx)))[:, 0].float().cpu()
        mae = float((pred - self.vy).abs().mean())
        return Validation((-mae,), {"val_mae": mae}, f"val MAE {mae:.4f}", mae)

    def finish(self, best: Validation | None, run_dir: Path | None) -> dict[str, Any]:
        mae = best.result if best is not None else float("nan")
        baseline = float((self.vy - self.y.mean()).abs().mean())  # always answering the training mean
        return {"labels": ["brightness"], "metrics": {"val_mae": mae, "mean_baseline_mae": baseline},
                "data": {"root": str(self.data), "val": self.val_files}}


@register_task
class BrightnessTask(Task):
    name = "brightness"
    summary = "photo brightness: a folder of images with brightness.csv (file,value)"
    outputs = OutputSpec(names=("brightness",), quality="negative MAE")
    default_arch = ("deepdog", {"alpha": 0.25})
    detect_order = 10

    def detect(self, data) -> bool:
        return (Path(data) / TABLE).is_file()

    def setup(self, data, cfg, opts, console, resuming: bool, user_model=None) -> BrightnessRun:
        if user_model is not None:
            raise PocketVisionError("the brightness task trains registry networks only.")
        return BrightnessRun(self, data, cfg, console)

    def held_out(self, meta: dict[str, Any], data=None) -> HeldOut:
        rows = dict(read_table(Path(data).resolve())) if data else None
        paths = [Path(p) for p in meta["data"]["val"]] if rows is None else list(rows)
        truth_of = rows or dict(split(read_table(Path(meta["data"]["root"])))[1])
        pixels, kept = load_pixels(paths, Contract.from_dict(meta["contract"]))
        return HeldOut(pixels, np.array([truth_of[paths[i]] for i in kept], np.float32), [paths[i] for i in kept])

    def predict(self, model, sources) -> list[dict[str, Any]]:
        pixels, kept = load_pixels(list(sources), model.contract)
        values = model.run_pixels(pixels)[:, 0] if len(kept) else []
        return [{"brightness": round(float(v), 4)} for v in values]

    def record_line(self, record: dict[str, Any]) -> str:
        return f"brightness {record['brightness']:.3f}"

    def evaluate(self, model, data, *, split="auto", report_dir=None, title="model", options=None) -> dict[str, Any]:
        rows = read_table(Path(data))
        pixels, kept = load_pixels([p for p, _ in rows], model.contract)
        pred = model.run_pixels(pixels)[:, 0]
        truth = np.array([rows[i][1] for i in kept])
        return {"n": len(kept), "mae": float(np.abs(pred - truth).mean()), "data": str(data)}

    def quality(self, outputs, truth, reference, meta) -> float:
        target = truth if reference is None else reference[:, 0]
        return -float(np.abs(outputs[:, 0] - target).mean())

    def compare(self, ref, cand, truth, meta, tolerance=None) -> dict[str, Any]:
        tolerance = 1e-3 if tolerance is None else tolerance
        diff = float(np.abs(ref - cand).max()) if len(ref) else float("inf")
        return {"n": int(len(ref)), "max_abs_diff": diff, "tolerance": tolerance, "passed": diff <= tolerance,
                "reference_quality": self.quality(ref, truth, None, meta) if truth is not None else 0.0,
                "candidate_quality": self.quality(cand, truth, None, meta) if truth is not None else 0.0}

    def parity_line(self, v: dict[str, Any]) -> str:
        return f"{v['n']} real photos, max |d brightness| {v['max_abs_diff']:.2e} (<= {v['tolerance']:g})"
