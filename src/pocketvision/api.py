"""Public Python API; the CLI is a thin layer over these functions.

    import pocketvision as pv
    bundle = pv.train("photos/", out="hotdog.pvb", arch="deepdog", arch_args={"alpha": 0.5})
    bundle = pv.load("hotdog.pvb")
    bundle.evaluate("photos/")            # metrics dict (+ HTML report with report_dir=...)
    bundle.export("hotdog.onnx")          # exported and verified on the validation images
    bundle.predict(["a.jpg", "b.jpg"])    # [{"label": ..., "confidence": ...}, ...]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import bundle as bundle_io
from .contract import Contract
from .errors import BundleError, PocketVisionError
from .runtime.decision import decide


@dataclass
class ExportResult:
    path: Path
    format: str
    verification: dict[str, Any] | None = None
    size_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    precision: str = "fp32"
    compression: dict[str, Any] = field(default_factory=dict)


class Bundle:
    """A trained model plus everything needed to use it: labels, contract, threshold, metrics."""

    def __init__(self, meta: dict[str, Any], model: nn.Module, path: Path | None = None):
        self.meta, self.model, self.path = meta, model.eval(), path

    # -- properties ---------------------------------------------------------------------------------
    labels = property(lambda self: list(self.meta["labels"]))
    task = property(lambda self: self.meta["task"])
    contract = property(lambda self: Contract.from_dict(self.meta["contract"]))
    threshold = property(lambda self: self.meta.get("threshold"))
    metrics = property(lambda self: self.meta.get("metrics", {}))

    def __repr__(self) -> str:
        acc = self.metrics.get("accuracy")
        return (f"Bundle(task={self.task!r}, arch={self.meta['arch'].get('name')!r}, labels={self.labels}, "
                f"size={list(self.contract.size)}" + (f", val_accuracy={acc:.4f})" if acc is not None else ")"))

    # -- io -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> Bundle:
        data = bundle_io.read(path)
        arch = data.meta["arch"]
        if arch.get("name") == "custom":
            if model is None:
                raise BundleError(f"{path}: was trained with a custom torch.nn.Module ({arch.get('class')}); "
                                  "pass it: pocketvision.load(path, model=MyModel()).")
        elif model is None and data.task == "keypoints":
            from .tasks.keypoints import build_keypoint_model
            model = build_keypoint_model(arch, data.contract.size)
        elif model is None:
            from .models import build_model
            model = build_model(arch, pretrained=False)
        from safetensors.torch import load as st_load
        try:
            sd = st_load(data.weights)
            model.load_state_dict(sd)
        except Exception as e:  # noqa: BLE001 - wrong shapes/keys = a bundle that does not match its spec
            raise BundleError(f"{path}: weights do not fit the architecture {arch.get('name')} "
                              f"({str(e).splitlines()[0]}).") from None
        return cls(data.meta, model, Path(path))

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save as st_save
        sd = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        self.path = bundle_io.write(path, self.meta, st_save(sd))
        return self.path

    # -- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 NHWC at the contract's size -> probabilities (classify) or keypoints (N, K, 3) in
        model-input pixels (keypoints): the same maths as the exported graph."""
        x = torch.from_numpy(self.contract.normalize(pixels))
        if self.task == "keypoints":
            return self.model(x).numpy()
        return torch.softmax(self.model(x), dim=1).numpy()

    def quality(self, outputs: np.ndarray, truth: np.ndarray) -> float:
        """One higher-is-better number in [0, 1] for compression budgets: accuracy (classify) or
        1 - NME (keypoints; ``truth`` in the same model-input pixels)."""
        if self.task == "keypoints":
            from .evaluate.keypoint_metrics import keypoint_metrics
            kp = self.meta.get("keypoints", {})
            h, w = self.contract.size
            return 1.0 - keypoint_metrics(truth, outputs, self.labels, kp.get("normalize"),
                                          np.tile([w, h], (len(truth), 1)))["nme"]
        return float((outputs.argmax(1) == truth).mean())

    def predict(self, images: list[str | Path | bytes] | str | Path) -> list[dict[str, Any]]:
        if isinstance(images, str | Path):
            images = [images]
        if self.task == "keypoints":
            from .runtime.keypoint_runtime import predict_keypoints
            return predict_keypoints(self.predict_pixels, self.contract, self.labels, images)
        c = self.contract
        pixels = np.stack([c.load(s) for s in images])
        return decide(self.predict_pixels(pixels), self.labels, self.threshold)

    # -- stages -------------------------------------------------------------------------------------
    def evaluate(self, data: str | Path, split: str = "auto", report_dir: str | Path | None = None,
                 threshold: float | None = None, exclude: set[str] | None = None) -> dict[str, Any]:
        """Metrics on a labelled folder (classify) or keypoint annotations (``exclude``: image names or
        paths to leave out, e.g. suspect labels)."""
        if self.task == "keypoints":
            from .runtime.keypoint_runtime import evaluate_keypoints
            return evaluate_keypoints(self.predict_pixels, self.contract, self.meta, data, split, report_dir,
                                      title=f"{self.meta['arch'].get('name')} ({self.path or 'bundle'})",
                                      exclude=exclude)
        from .runtime.artifact import evaluate_folder
        return evaluate_folder(self.predict_pixels, self.labels, self.contract, self.threshold, data, split,
                               report_dir, threshold, f"{self.meta['arch'].get('name')} ({self.path or 'bundle'})")

    def validation_samples(self, data: str | Path | None = None):
        """The images the bundle was validated on (or ``data``'s eval split) for export checks."""
        if self.task == "keypoints":
            from .runtime.keypoint_runtime import labelled_keypoints
            if data is not None:
                return labelled_keypoints(data, "auto", flip_pairs="none")[1]
            from .data.keypoints import drop_images
            d = self.meta.get("data", {})
            if not d.get("root") or not Path(d["root"]).exists():
                return []
            # The images training left out (suspect labels) stay out of every measurement too.
            if d.get("explicit_splits"):
                return drop_images(labelled_keypoints(d["root"], "val", flip_pairs="none")[1], set(d.get("excluded", ())))
            return drop_images(self._kp_split(d["root"], "val"), set(d.get("excluded", ())))
        from .data.folder import labelled_samples, scan
        if data is not None:
            return labelled_samples(data, self.labels)[0]
        d = self.meta.get("data", {})
        root = d.get("root")
        if not root or not Path(root).is_dir():
            return []
        return scan(root, val_fraction=d.get("val_fraction", 0.15), seed=d.get("seed", 0), classes=self.labels).val

    def _model_frame(self, samples, kept: list[int]) -> np.ndarray:
        """Labelled points of ``samples[kept]`` mapped into model-input pixels (the contract's resize)."""
        from PIL import Image

        from .data.kp_augment import contract_matrix, transform_points
        out = []
        for i in kept:
            s = samples[i]
            if s.size:
                w, h = s.size
            else:
                with Image.open(s.path) as im:
                    w, h = im.size
            out.append(transform_points(s.points, contract_matrix(w, h, self.contract), (0, 0), None, True))
        return np.stack(out)

    def _kp_split(self, root, split: str):
        from .data.keypoints import load_keypoints
        d = self.meta.get("data", {})
        ks = load_keypoints(root, val_fraction=d.get("val_fraction", 0.1), seed=d.get("seed", 0), flip_pairs="none")
        return getattr(ks, split)

    def export(self, out: str | Path | None = None, to: str = "onnx", verify: bool = True,
               data: str | Path | None = None, opset: int | None = None, *, precision: str = "fp32",
               bits: int | None = None, max_drop: float = 1.0, qat_steps: int = 0,
               log=lambda s: None) -> ExportResult:
        """Export to one target (``onnx``, ``tflite``, ``coreml``, ``web``), optionally compressed, and verify
        it on real images (Core ML off macOS: structure only, reported as not verified numerically).

        ``precision="int8"``: static int8 calibrated on training images, worst layers kept float until
        the held-out accuracy drop is within ``max_drop`` points (``qat_steps``: quantisation-aware
        fine-tuning on training photos first, onnx/web). ``bits``: palettise first (see
        :meth:`palettize`). Parity is checked against the model that was exported; for int8 the pass
        criterion is the accuracy budget (probabilities move by design).
        """
        from .export import FORMATS, check_request
        check_request(to, precision, bits)
        if self.task == "keypoints" and (bits or qat_steps):
            raise PocketVisionError("palettised export (--bits) and --qat-steps are for classification bundles in "
                                    "this version; use --int8 for a small keypoint model.")
        source, notes, compression = self, [], {}
        if bits:
            source, rep = self.palettize(bits, data, max_drop=max_drop, log=log)
            compression["palettize"] = {k: rep[k] for k in ("bits", "base_accuracy", "accuracy", "float_bytes",
                                                             "palette_bytes")}
            notes += rep["notes"]
        out = Path(out) if out else (self.path or Path("model")).with_name(
            (self.path or Path("model")).stem + ("" if precision == "fp32" else f"-{precision}")
            + (f"-{bits}bit" if bits else "") + FORMATS[to])
        meta = source._export_meta()
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            if to in ("onnx", "web"):
                onnx_path = out if to == "onnx" else Path(tmp) / "model.onnx"
                self._export_onnx(source, onnx_path, meta, opset, precision, data, max_drop, compression, log, tmp,
                                  qat_steps)
                if to == "web":
                    from .export.web import export_web
                    export_web(onnx_path, {**meta, "precision": precision}, out)
            elif to == "tflite":
                from .compress.data import training_pixels
                from .export.litert import export_tflite
                calibration = training_pixels(source, data, limit=128) if precision == "int8" else None
                export_tflite(source.model, source.contract, meta, out, precision, calibration)
            else:
                from .export.coreml import export_coreml
                # A palettised bundle (now or earlier: its lineage says so) is stored as Core ML palettes.
                pal_bits = bits or source.meta.get("compression", {}).get("palettize", {}).get("bits")
                export_coreml(source.model, source.contract, meta, out, precision, palettised_bits=pal_bits)
        from .export.web import folder_size
        result = ExportResult(path=out, format=to, size_bytes=folder_size(out), notes=notes,
                              precision=precision, compression=compression)
        if verify and to == "coreml":
            from .export.coreml import inspect
            rep = inspect(out, self.labels)
            result.verification = {"n": 0, "passed": rep["passed"], "numeric": rep["numeric"],
                                   "structure": rep["checks"], "criterion": rep["reason"]}
            result.notes.append(rep["reason"])
        elif verify:
            samples = self.validation_samples(data)
            if samples:
                approx = precision in ("int8", "fp16")
                v = source.verify(out, samples=samples, tolerance=1.0 if approx else None)
                if approx:  # probabilities move by design: judged by the accuracy budget
                    v["passed"] = bool(v["n"] and -100 * v["accuracy_change"] <= max_drop + 1e-9)
                    v["criterion"] = (f"{precision}: NME rise <= {max_drop} points" if self.task == "keypoints"
                                      else f"{precision}: accuracy drop <= {max_drop} points")
                result.verification = v
            else:
                result.notes.append("not verified: no images (pass data=DIR / --data DIR)")
        return result

    def _export_meta(self) -> dict[str, Any]:
        extra = {"keypoints": self.meta["keypoints"]} if self.task == "keypoints" else {}
        return {**extra, "task": self.task, "labels": self.labels, "contract": self.meta["contract"],
                "threshold": self.threshold, "arch": self.meta["arch"],
                "bundle_weights_sha256": self.meta.get("weights_sha256"),
                "lineage": self.meta.get("lineage", [])}

    def _export_onnx(self, source: Bundle, out: Path, meta: dict, opset: int | None, precision: str,
                     data, max_drop: float, compression: dict, log, tmp: str, qat_steps: int = 0) -> None:
        from .export.onnx import DEFAULT_OPSET, export_onnx
        if precision != "int8":
            export_onnx(source.model, source.contract, meta, out, opset or DEFAULT_OPSET)
            return
        from .compress.data import held_out, training_pixels
        from .compress.quantize import quantize_within_budget
        from .runtime.onnx_predictor import OnnxPredictor
        fp32 = export_onnx(source.model, source.contract, meta, Path(tmp) / "fp32.onnx", opset or DEFAULT_OPSET)
        calibration = training_pixels(source, data, limit=256)
        pixels, y = held_out(source, data)

        def accuracy(path: Path) -> float:
            return source.quality(OnnxPredictor(path).run_pixels(pixels), y)
        base = accuracy(fp32)  # the float model's accuracy is the reference, with or without QAT
        if qat_steps:
            from .compress.qat import qat_finetune
            rng = np.random.default_rng(0)
            contract = source.contract

            def batch(step: int) -> torch.Tensor:
                x = calibration[rng.integers(0, len(calibration), 32)].copy()
                flip = rng.random(len(x)) < 0.5
                x[flip] = x[flip, :, ::-1]
                return torch.from_numpy(contract.normalize(x))
            log(f"int8: quantisation-aware fine-tuning, {qat_steps} steps")
            tuned = qat_finetune(source.model, batch, qat_steps)
            fp32 = export_onnx(tuned, source.contract, meta, Path(tmp) / "qat_fp32.onnx", opset or DEFAULT_OPSET)
        staged = Path(tmp) / "int8.onnx"
        from .compress.quantize import output_layers
        keep = output_layers(fp32) if self.task == "keypoints" else None
        rep = quantize_within_budget(fp32, staged, calibration, accuracy, base, max_drop, log=log, keep_float=keep)
        rep["qat_steps"] = qat_steps
        compression["int8"] = rep
        import shutil
        shutil.move(str(staged), str(out) + ".tmp")
        Path(str(out) + ".tmp").replace(out)

    def palettize(self, bits: int = 4, data: str | Path | None = None, *, max_drop: float | None = 1.0,
                  finetune_steps: int | None = None, min_size: int = 1024, group_channels: int = 0,
                  layer_bits: dict[str, int] | None = None, log=lambda s: None) -> tuple[Bundle, dict[str, Any]]:
        """Round every weight of each layer to one of 2^bits shared values -> (new bundle, report).

        Measured on held-out images (the bundle's val split or ``data``); palette values are fine-tuned
        on training images (``finetune_steps``, distilled from this model); layers are raised to 8 bits,
        most sensitive first, until the accuracy drop is within ``max_drop`` points.
        """
        self._classify_only("palettisation")
        from .compress.data import held_out, training_pixels
        from .compress.palettize import PaletteConfig, finetune_centroids, palettize

        if finetune_steps is None:  # auto: 100 steps up to ~1M parameters, fewer (>= 20) for bigger nets
            n_params = sum(p.numel() for p in self.model.parameters())
            finetune_steps = min(100, max(20, int(100 * 1e6 / max(n_params, 1))))
        cfg = PaletteConfig(bits=bits, min_size=min_size, group_channels=group_channels,
                            layer_bits=layer_bits or {}, max_drop=max_drop, finetune_steps=finetune_steps)
        pixels, y = held_out(self, data)
        x_val = torch.from_numpy(self.contract.normalize(pixels))

        @torch.no_grad()
        def evaluate(m: nn.Module) -> tuple[float, np.ndarray]:
            p = torch.cat([torch.softmax(m(x_val[i:i + 64]), 1) for i in range(0, len(x_val), 64)]).numpy()
            return float((p.argmax(1) == y).mean()), p


        refine, notes = None, []
        if finetune_steps:
            try:
                train_px = training_pixels(self, data)
            except PocketVisionError as e:
                train_px = None
                notes.append(f"palette fine-tuning skipped: {e}")
            if train_px is not None:
                contract, teacher = self.contract, self.model

                def refine(m: nn.Module) -> nn.Module:
                    rng = np.random.default_rng(0)

                    def batch(step: int):
                        x = train_px[rng.integers(0, len(train_px), 32)].copy()
                        flip = rng.random(len(x)) < 0.5
                        x[flip] = x[flip, :, ::-1]
                        return torch.from_numpy(contract.normalize(x)), None
                    return finetune_centroids(m, batch, finetune_steps, teacher, lr=1e-3)
        model, report = palettize(self.model, cfg, evaluate, log=log, refine=refine)
        out = report.to_dict()
        out.update(bits=bits, notes=notes, n_images=len(y),
                   accuracy_change=None if report.accuracy is None else report.accuracy - report.base_accuracy)
        return self._derived(model, "palettize", {"bits": bits, "max_drop": max_drop,
                                                  "finetune_steps": finetune_steps, "min_size": min_size,
                                                  "group_channels": group_channels,
                                                  "accuracy_before": report.base_accuracy,
                                                  "accuracy_after": report.accuracy,
                                                  "layer_bits": {la.name: la.bits for la in report.layers}}), out

    def prune(self, ratio: float = 0.3, data: str | Path | None = None, *, epochs: int = 10, lr: float = 0.01,
              log=lambda s: None, **train_options: Any) -> tuple[Bundle, dict[str, Any]]:
        """Remove ``ratio`` of the channels of every layer (structured), rebuild the smaller net and
        fine-tune it on the training data -> (new bundle, report). ``train_options`` go to :func:`train`."""
        self._classify_only("pruning")
        import tempfile
        from .compress.prune import prune_separable
        from .compress.data import held_out
        pixels, y = held_out(self, data)
        base = float((self.predict_pixels(pixels).argmax(1) == y).mean())
        small, spec, rep = prune_separable(self.model, self.meta["arch"], ratio)
        pruned = Bundle({**self.meta, "arch": spec}, small)
        before_ft = float((pruned.predict_pixels(pixels).argmax(1) == y).mean())
        log(f"pruned {rep.params_before:,} -> {rep.params_after:,} parameters; accuracy {base:.4f} -> "
            f"{before_ft:.4f} before fine-tuning")
        root = data or self.meta.get("data", {}).get("root")
        if not root or not Path(root).is_dir():
            raise PocketVisionError("pruning fine-tunes on the training images: pass --data DIR.")
        cfg = self.meta.get("train_config", {})
        with tempfile.TemporaryDirectory() as tmp:
            init = pruned.save(Path(tmp) / "pruned.pvb")
            options = {"arch": spec["name"], "arch_args": {k: v for k, v in spec["args"].items() if k != "num_classes"},
                       "size": self.contract.size[0], "pretrained": False, "epochs": epochs, "lr": lr,
                       "optimizer": "sgd", "weight_decay": 5e-4, "schedule": "cosine", "label_smoothing": 0.0,
                       "augment": cfg.get("augment", {}), "val_fraction": self.meta.get("data", {}).get("val_fraction", 0.15),
                       "seed": self.meta.get("data", {}).get("seed", 0), "run_dir": Path(tmp) / "run",
                       "tensorboard": False, "init_from": str(init), **train_options}
            tuned = train(root, **options)
        after = float((tuned.predict_pixels(pixels).argmax(1) == y).mean())
        report = {"ratio": ratio, "channels_before": rep.channels_before, "channels_after": rep.channels_after,
                  "params_before": rep.params_before, "params_after": rep.params_after,
                  "accuracy_before": base, "accuracy_pruned": before_ft, "accuracy_after": after,
                  "accuracy_change": after - base, "finetune_epochs": epochs}
        out = self._derived(tuned.model, "prune", report)
        out.meta["arch"] = spec
        return out, report

    def auto_compress(self, data: str | Path | None = None, max_drop: float = 1.0, candidates=(2, 3, 4, 6, 8),
                      finetune_steps: int | None = None, log=lambda s: None) -> tuple[Bundle, dict[str, Any]]:
        """Try palettes of each size in ``candidates`` (mixed bits within the budget) and keep the
        smallest result whose held-out accuracy drop is within ``max_drop`` points."""
        tried, best = [], None
        for bits in candidates:
            log(f"auto: trying {bits}-bit palettes")
            small, rep = self.palettize(bits, data, max_drop=max_drop, finetune_steps=finetune_steps)
            within = -100 * rep["accuracy_change"] <= max_drop + 1e-9
            tried.append({"bits": bits, "palette_bytes": rep["palette_bytes"], "accuracy": rep["accuracy"],
                          "within_budget": within})
            if within and (best is None or rep["palette_bytes"] < best[1]["palette_bytes"]):
                best = (small, rep)
        if best is None:
            raise PocketVisionError(f"no palette size kept the accuracy drop within {max_drop} points "
                                    f"({tried}); raise --max-drop or keep the float model.")
        small, rep = best
        rep["auto"] = tried
        small.meta["lineage"][-1]["auto"] = {"max_drop": max_drop, "tried": tried}
        return small, rep

    def _classify_only(self, what: str) -> None:
        if self.task != "classify":
            raise PocketVisionError(f"{what} works on classification bundles in this version; for a {self.task} "
                                    "bundle use `pocketvision export BUNDLE --int8` (budgeted on held-out images).")

    def _derived(self, model: nn.Module, stage: str, record: dict[str, Any]) -> Bundle:
        """A new bundle made from this one by ``stage``, with its lineage."""
        import copy
        meta = copy.deepcopy(self.meta)
        meta["lineage"] = list(meta.get("lineage", [])) + [
            {"stage": stage, "parent": str(self.path) if self.path else None,
             "parent_weights_sha256": self.meta.get("weights_sha256"), **record}]
        meta.setdefault("compression", {})[stage] = record
        return Bundle(meta, model)

    def verify(self, exported: str | Path, data: str | Path | None = None, samples=None,
               tolerance: float | None = None) -> dict[str, Any]:
        from .export.verify import PROB_TOLERANCE, verify
        from .runtime.artifact import open_predictor
        samples = samples if samples is not None else self.validation_samples(data)
        if not samples:
            raise PocketVisionError("verify needs real images: pass --data DIR (a labelled folder).")
        cand = open_predictor(exported)
        try:
            if cand.labels != self.labels:
                raise PocketVisionError(f"{exported}: labels {cand.labels} differ from the bundle's {self.labels}.")
            if self.task == "keypoints":
                from .export.verify import KP_TOLERANCE_PX, verify_keypoints
                report = verify_keypoints(self.predict_pixels, cand.run_pixels, [s.path for s in samples],
                                          self.contract, KP_TOLERANCE_PX if tolerance is None else tolerance,
                                          quality=lambda out, i: self.quality(out, self._model_frame(samples, i)))
            else:
                report = verify(self.predict_pixels, cand.run_pixels, [s.path for s in samples], self.contract,
                                [s.label for s in samples],
                                tolerance=PROB_TOLERANCE if tolerance is None else tolerance)
        finally:
            getattr(cand, "close", lambda: None)()
        report["file"] = str(exported)
        return report


def load(path: str | Path, model: nn.Module | None = None) -> Bundle:
    """Load a bundle (``.pvb`` zip or folder). Needs nothing but the bundle."""
    return Bundle.load(path, model)


def train(data: str | Path, out: str | Path | None = None, *, model: nn.Module | None = None,
          resume: str | Path | None = None, console=None, **options: Any) -> Bundle:
    """Train a classifier on an image folder and return (and write, with ``out``) its bundle.

    ``options`` are :class:`pocketvision.training.config.TrainConfig` fields (arch, epochs, lr, ...).
    ``model`` brings your own ``torch.nn.Module`` (float NCHW in, logits out).
    """
    from .training.checkpoint import load_checkpoint
    from .training.config import make_config
    from .training.loop import fit

    if resume is not None:
        _, _, meta = load_checkpoint(Path(resume))
        saved = meta.get("config", {})
        options = {**saved, **{k: v for k, v in options.items() if k in ("progress", "tensorboard", "workers")}}
    cfg = make_config(**options)
    from .data.keypoints import is_keypoint_source
    if cfg.task == "keypoints" or (cfg.task == "auto" and is_keypoint_source(data)):
        if model is not None:
            raise PocketVisionError("bring-your-own model is for classification; keypoint models are a registry "
                                    "backbone + head (--arch, --head).")
        return _train_keypoints(data, out, cfg.model_copy(update={"task": "keypoints"}), resume, console)
    result = fit(data, cfg, user_model=model, resume=Path(resume) if resume else None, console=console)
    if result.interrupted:
        raise KeyboardInterrupt
    from .evaluate import classification_metrics
    labels = result.splits.classes
    metrics = classification_metrics(result.val_labels, result.val_probs, labels,
                                      target_precision=cfg.target_precision)
    metrics.update(best_epoch=result.best_epoch, train_seconds=round(result.seconds, 1))
    threshold = None
    if metrics.get("threshold") is not None:
        threshold = {"positive": metrics["positive_index"], "value": metrics["threshold"],
                     "target_precision": cfg.target_precision, "reached": metrics.get("threshold_reached", False)}
    meta = bundle_io.new_meta(
        "classify", result.spec, labels, result.contract, threshold=threshold, metrics=metrics,
        train_config=cfg.model_dump(mode="json"), history=result.history,
        data={"root": str(Path(data).resolve()), "fingerprint": result.splits.fingerprint(),
              "counts": result.splits.counts(), "explicit_splits": result.splits.explicit,
              "val_fraction": cfg.val_fraction, "seed": cfg.seed, "skipped": result.problems})
    b = Bundle(meta, result.model)
    if result.run_dir is not None:
        from .evaluate import write_report
        meta["report"] = str(write_report(result.run_dir / "report", metrics, result.val_labels, result.val_probs,
                                          labels, result.val_paths, title=f"Training: {result.spec['name']}",
                                          extra={"training": {k: v for k, v in cfg.model_dump(mode='json').items()
                                                              if v not in (None, {}, [])}}))
        _tb_confusion(result.run_dir, metrics, labels)
    if out is not None:
        b.save(out)
    return b


def _train_keypoints(data, out, cfg, resume, console) -> Bundle:
    from .training.kp_loop import fit_keypoints, resolve_normalize
    from .evaluate.keypoint_metrics import default_normalizer
    result = fit_keypoints(data, cfg, resume=Path(resume) if resume else None, console=console)
    if result.interrupted:
        raise KeyboardInterrupt
    from .evaluate.keypoint_metrics import keypoint_metrics
    schema = result.data.schema
    normalize = resolve_normalize(cfg.normalize) or default_normalizer(schema.names)
    metrics = keypoint_metrics(result.val_gt, result.val_pred, schema.names, normalize, result.val_sizes)
    metrics.update(best_epoch=result.best_epoch, train_seconds=round(result.seconds, 1), task="keypoints")
    ds = result.data
    meta = bundle_io.new_meta(
        "keypoints", result.spec, list(schema.names), result.contract, metrics=metrics,
        keypoints={**schema.to_dict(), "normalize": normalize},
        train_config=cfg.model_dump(mode="json"), history=result.history,
        data={"root": str(Path(data).resolve()), "fingerprint": ds.fingerprint(), "explicit_splits": ds.explicit,
              "counts": {"train": len(ds.train), "val": len(ds.val)}, "excluded": ds.excluded,
              "val_fraction": cfg.val_fraction,
              "seed": cfg.seed, "skipped": result.problems})
    b = Bundle(meta, result.model)
    if result.run_dir is not None:
        from .evaluate.keypoint_report import write_keypoint_report
        meta["report"] = str(write_keypoint_report(result.run_dir / "report", metrics, result.val_gt, result.val_pred,
                                                   result.val_paths, schema.names, schema.skeleton,
                                                   title=f"Training: {result.spec['name']} + {result.spec['head']['type']}"))
    if out is not None:
        b.save(out)
    return b


def find_lr(data: str | Path, **options: Any) -> dict[str, Any]:
    """LR range test with the same options as :func:`train`; saves ``RUN_DIR/lr_find.png``.

    -> ``{"suggested_lr", "plot", "lrs", "losses"}``.
    """
    from .training.config import make_config
    from .training.find_lr import find_lr as _find_lr
    cfg = make_config(**options)
    return _find_lr(data, cfg, Path(cfg.run_dir or "runs/find-lr") / "lr_find.png")


def _tb_confusion(run_dir: Path, metrics: dict, labels: list[str]) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    cm = np.asarray(metrics["confusion_matrix"]["matrix"] if isinstance(metrics["confusion_matrix"], dict)
                    else metrics["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set_xticks(range(len(labels)), labels, rotation=45), ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    with SummaryWriter(str(run_dir / "tb")) as w:
        w.add_figure("val/confusion_matrix", fig)
    plt.close(fig)
