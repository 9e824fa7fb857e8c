"""The bundle in memory: a torch model plus its metadata, and the stages that read and write it.

    bundle = pocketvision.load("hotdog.pvb")
    bundle.evaluate("photos/")            # metrics (+ HTML report with report_dir=...)
    bundle.export("hotdog.onnx")          # exported and verified on the held-out images
    bundle.predict(["a.jpg", "b.jpg"])    # the task's records

Every task-specific step is the task plug-in's (``bundle.plugin``); every format-specific step the export
target's. This class only wires them: it never compares a task's name.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .compress.data import held_out, training_pixels
from .compress.stages import auto_palettize, palettize_bundle, prune_bundle
from .core import bundle_file as bundle_io
from .core.contract import Contract
from .core.weights import build_for_weights, load_weights, state_bytes, weights_cap
from .errors import BundleError, PocketVisionError
from .export import ExportJob, check_request, folder_size, publish, staged, variant_suffix
from .export.verify import NoImages, verify_export
from .tasks import Task, get_task
from .tasks.base import HeldOut, evaluate_model, split_sources, task_of


@dataclass
class ExportResult:
    path: Path
    format: str
    verification: dict[str, Any] | None = None
    size_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    precision: str = "fp32"
    compression: dict[str, Any] = field(default_factory=dict)
    embedding: dict[str, Any] | None = None  # a teachable export's embedding: output, features, id (not anchors)


class Bundle:
    """A trained model plus everything needed to use it: task, labels, contract, threshold, metrics."""

    input_size = None  # torch takes any size the network does (an exported file may fix one)

    def __init__(self, meta: dict[str, Any], model: nn.Module, path: Path | None = None):
        self.meta, self.model, self.path = meta, model.eval(), path

    # -- properties ---------------------------------------------------------------------------------
    labels = property(lambda self: list(self.meta["labels"]))
    task = property(lambda self: self.meta["task"])
    contract = property(lambda self: Contract.from_dict(self.meta["contract"]))
    threshold = property(lambda self: self.meta.get("threshold"))
    metrics = property(lambda self: self.meta.get("metrics", {}))

    @property
    def plugin(self) -> Task:
        return get_task(self.meta["task"])

    def __repr__(self) -> str:
        acc = self.metrics.get("accuracy")
        return (f"Bundle(task={self.task!r}, arch={self.meta['arch'].get('name')!r}, labels={self.labels}, "
                f"size={list(self.contract.size)}" + (f", val_accuracy={acc:.4f})" if acc is not None else ")"))

    # -- io -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> Bundle:
        custom = model is not None  # the caller's own module: its size is not ours to predict
        data = bundle_io.read(path, weights_cap=None if custom else weights_cap(task_of, str(path)))
        arch = data.meta["arch"]
        task_of(data.meta, path)
        if model is None:
            if arch.get("name") == "custom":
                raise BundleError(f"{path}: was trained with a custom torch.nn.Module ({arch.get('class')}); "
                                  "pass it: pocketvision.load(path, model=MyModel()).")
            model = build_for_weights(task_of(data.meta, path), arch, data.contract, data.weights, str(path))
        return cls(data.meta, load_weights(model, data.weights, str(path), arch), Path(path))

    def save(self, path: str | Path) -> Path:
        self.path = bundle_io.write(path, self.meta, state_bytes(self.model))
        return self.path

    # -- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NHWC -> the graph's first output (probabilities, keypoints in model-input pixels, a stylised
        image...): the same maths as every export."""
        x = torch.from_numpy(self.contract.normalize(pixels))
        return self.plugin.graph_head(self.model(x))[0].numpy()

    run_pixels = predict_pixels  # the name every predictor of an exported file uses

    @torch.no_grad()
    def run_outputs(self, pixels: np.ndarray, teachable: bool = False) -> dict[str, np.ndarray]:
        """uint8 NHWC -> every output of the graph an export captures, by name (``OutputSpec.names``)."""
        plugin = self.plugin
        body = plugin.graph_model(self.model, teachable).eval()
        outs = plugin.graph_head(body(torch.from_numpy(self.contract.normalize(pixels))))
        return {name: o.numpy() for name, o in zip(plugin.outputs.names, outs)}

    def predict(self, images: list[str | Path | bytes] | str | Path) -> list[dict[str, Any]]:
        return self.plugin.predict(self, split_sources(images))

    def evaluate(self, data: str | Path, split: str = "auto", report_dir: str | Path | None = None,
                 **options: Any) -> dict[str, Any]:
        """Metrics on labelled data (the task's reader); ``options`` are the task's evaluation options
        (classify: ``threshold``; keypoints: ``exclude``)."""
        title = f"{self.meta['arch'].get('name')} ({self.path or 'bundle'})"
        return evaluate_model(self, data, split, report_dir, title, options)

    def held_out(self, data: str | Path | None = None) -> HeldOut:
        """The images the bundle is judged on: its validation split, or ``data``'s eval split."""
        return self.plugin.held_out(self.meta, data)

    def quality(self, outputs: np.ndarray, truth: Any, reference: np.ndarray | None = None) -> float:
        return self.plugin.quality(outputs, truth, reference, self.meta)

    def training_pixels(self, data: str | Path | None = None, limit: int = 512) -> np.ndarray:
        return training_pixels(self, data, limit=limit)

    # -- export -------------------------------------------------------------------------------------
    def export_meta(self) -> dict[str, Any]:
        """What every exported file carries in its own metadata slot."""
        return {**self.plugin.export_meta(self.meta), "task": self.task, "labels": self.labels,
                "contract": self.meta["contract"], "threshold": self.threshold, "arch": self.meta["arch"],
                "bundle_weights_sha256": self.meta.get("weights_sha256"), "lineage": self.meta.get("lineage", [])}

    def export(self, out: str | Path | None = None, to: str = "onnx", verify: bool = True,
               data: str | Path | None = None, opset: int | None = None, *, precision: str = "fp32",
               bits: int | None = None, max_drop: float = 1.0, qat_steps: int = 0, teachable: bool = False,
               log=lambda s: None) -> ExportResult:
        """Export to one target (``export.target_names()``: onnx, tflite, coreml, web), optionally compressed,
        and verify it on real images (Core ML off macOS: structure only, reported as not verified numerically).

        ``precision="int8"``: static int8 calibrated on training images, worst layers kept float until the
        held-out quality is within the task's budget (``max_drop``; ``qat_steps``: quantisation-aware
        fine-tuning first). ``bits``: palettise first (:meth:`palettize`). Parity is checked against the model
        that was exported; compressed precisions are judged by the budget (outputs move by design).
        ``teachable``: the graph also outputs its embedding, and the metadata says how a device learns on it.
        """
        target = check_request(self.plugin, to, precision, bits, qat_steps, teachable)
        source, notes, compression = self, [], {}
        if bits:
            source, rep = self.palettize(bits, data, max_drop=max_drop, log=log)
            compression["palettize"] = {k: rep[k] for k in ("bits", "base_accuracy", "accuracy", "float_bytes",
                                                             "palette_bytes", "within_budget")}
            notes += rep["notes"]
        base = self.path or Path("model")
        out = Path(out) if out else base.with_name(base.stem + variant_suffix(precision, bits) + target.suffix)
        # A palettised bundle (now or earlier: its lineage says so) is stored palettised where the format can.
        pal_bits = bits or source.meta.get("compression", {}).get("palettize", {}).get("bits")
        teach = self.plugin.teach_meta(source, data) if teachable else None
        with staged(out) as (stage, scratch):
            job = ExportJob(model=source.model, task=self.plugin, contract=source.contract,
                            meta={**source.export_meta(), "precision": precision,
                                  **({"teach": teach} if teach else {})},
                            out=stage, tmp=scratch, teachable=teachable,
                            precision=precision, palettised_bits=pal_bits, opset=opset, max_drop=max_drop,
                            qat_steps=qat_steps, calibration=lambda limit: source.training_pixels(data, limit),
                            held_out=lambda: held_out(self, data), log=log)
            target.export(job)
            compression.update(job.report)
            result = ExportResult(path=out, format=to, size_bytes=folder_size(stage), notes=notes,
                                  precision=precision, compression=compression,
                                  embedding={k: v for k, v in teach.items() if k != "anchors"} if teach else None)
            if verify:  # on the staged file: ``out`` appears only once it is verified (a kill leaves nothing there)
                try:
                    result.verification = source.verify(stage, data=data, precision=precision, max_drop=max_drop,
                                                        target=target)
                except NoImages:
                    result.notes.append("not verified: no images (pass data=DIR / --data DIR)")
                else:
                    if result.verification.get("numeric") is False:
                        result.notes.append(result.verification["criterion"])
            if result.verification is not None and not result.verification["passed"]:
                # kept for a look, under a name no app would load by mistake
                result.path = out.with_name(f"{out.stem}.failed-verification{out.suffix}")
                result.notes.append(f"verification failed: written to {result.path.name}, not {out.name}")
            publish(stage, result.path)
            if result.verification is not None:
                result.verification["file"] = str(result.path)
        return result

    def verify(self, exported: str | Path, data: str | Path | None = None, tolerance: float | None = None, *,
               precision: str | None = None, max_drop: float = 1.0, target=None) -> dict[str, Any]:
        """The same real images through this bundle and ``exported``. A compressed file (its
        metadata says int8/fp16) is judged by the task's budget, a float one by the float tolerance."""
        return verify_export(self, exported, data=data, tolerance=tolerance, precision=precision, max_drop=max_drop,
                             target=target)

    # -- compression stages (bundle -> bundle) -------------------------------------------------------
    def palettize(self, bits: int = 4, data: str | Path | None = None, **options: Any) -> tuple[Bundle, dict]:
        """Round every weight of each layer to one of 2^bits shared values -> (new bundle, report); see
        :func:`pocketvision.compress.stages.palettize_bundle`."""
        return palettize_bundle(self, bits, data, **options)

    def auto_compress(self, data: str | Path | None = None, **options: Any) -> tuple[Bundle, dict]:
        """The smallest palette within the budget; see :func:`pocketvision.compress.stages.auto_palettize`."""
        return auto_palettize(self, data, **options)

    def prune(self, ratio: float = 0.3, data: str | Path | None = None, **options: Any) -> tuple[Bundle, dict]:
        """Structured channel pruning + fine-tuning; see :func:`pocketvision.compress.stages.prune_bundle`."""
        return prune_bundle(self, ratio, data, **options)

    def require(self, compression: str, what: str) -> None:
        if compression not in self.plugin.compressions:
            raise PocketVisionError(f"{what} is not available for {self.task} bundles (they support: "
                                    f"{', '.join(sorted(self.plugin.compressions))}); for a small {self.task} "
                                    "model use `pocketvision export BUNDLE --int8` (budgeted on held-out images).")

    def derived(self, model: nn.Module, stage: str, record: dict[str, Any]) -> Bundle:
        """A new bundle made from this one by ``stage``, with its lineage."""
        meta = copy.deepcopy(self.meta)
        meta["lineage"] = list(meta.get("lineage", [])) + [
            {"stage": stage, "parent": str(self.path) if self.path else None,
             "parent_weights_sha256": self.meta.get("weights_sha256"), **record}]
        meta.setdefault("compression", {})[stage] = record
        return Bundle(meta, model)


def load(path: str | Path, model: nn.Module | None = None) -> Bundle:
    """Load a bundle (``.pvb`` zip or folder). Needs nothing but the bundle."""
    return Bundle.load(path, model)
