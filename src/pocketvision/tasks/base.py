"""The task protocol and its registry: everything that differs between classify, keypoints,
stylize, ... lives in one plug-in class; everything outside ``tasks/`` asks the registry.

A task owns:
- its typed options (``Options``: training; ``EvalOptions``; ``CheckOptions``; ``FilterOptions``), from which
  the CLI builds its flags and which the entry points validate (an option of another task is refused),
- data: detection, readers, the held-out and training images of a bundle (``held_out``, ``training_images``),
- the model: ``build_model`` (from a bundle's arch spec), the training hooks (``setup`` -> a ``TaskRun`` that the
  one engine in ``training/engine.py`` drives),
- the exported graph's outputs: ``graph_head`` (uint8 in, decoded out: the file does its own preprocessing) and
  ``OutputSpec`` (ONNX output names, Core ML output type, dynamic size, the web page's renderer),
- predict records, metrics, report and console table, the parity comparison and what compressions apply.

The hooks come in roles, each a small class a reader can hold alone (``TaskData``, ``TaskTraining``, ``TaskGraph``,
``TaskRuntime``, ``TaskVerbs``, ``TaskLabelling``); ``Task`` is all of them plus what the task is (its attributes).

This module and the task modules import torch only inside the methods that build or run torch models, so a
predictor of an exported file (the torch-free runtime path) can use a task's records and metrics.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core.bundle_file import read
from ..core.contract import Contract
from ..data.shards import shard_task
from ..errors import BundleError, PocketVisionError, did_you_mean, unknown_choice
from ..evaluate.shift import shifted_copy
from ..training.schedules import make_schedule

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ..training.recipes import Recipe, RecipeContext


# Activations are quantised only around these ops; ELU's Exp/Min/Max stay float (onnxruntime has no
# int8 kernels for them, so wrapping them in Q/DQ pairs would only add work).
QUANT_OPS = ["Conv", "Gemm", "MatMul", "Relu", "Clip", "Add", "GlobalAveragePool", "ReduceMean"]


@dataclass(frozen=True)
class Int8Recipe:
    """What a task asks of int8 quantisation (``Task.int8_recipe``): the defaults suit classifiers.

    ``keep_float``: nodes left float by design; ``op_types``: the ops whose activations get Q/DQ pairs;
    ``float_head``: the ops after the global pooling that follows the last convolution stay float (a classifier's
    few logits, class mask and log-sum-exp would each share one uint8 scale), but for the large dense layers' weights
    (int8, float outputs: most of a 1,000-class head's bytes); each target finds them in its own graph;
    ``calibration``: MinMax, or Percentile (``percentile`` of the calibration histogram) where a few extreme
    activations would otherwise stretch the uint8 steps that every ordinary pixel pays for.
    """

    keep_float: list[str] = field(default_factory=list)
    op_types: list[str] = field(default_factory=lambda: list(QUANT_OPS))
    float_head: bool = False
    calibration: Literal["minmax", "percentile"] = "minmax"
    percentile: float = 99.999
    max_images: int | None = None  # calibrate on the first N photos (Percentile's histograms are costly)

    def describe(self) -> dict[str, Any]:
        return {"op_types": list(self.op_types), "calibration": self.calibration, "float_head": self.float_head,
                **({"percentile": self.percentile} if self.calibration == "percentile" else {})}


class Options(BaseModel):
    """Base of every task's option models: unknown names are refused, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NoOptions(Options):
    pass


class CheckOptionsBase(Options):
    """`pocketvision check` options every task's data check takes."""

    preview: str | None = Field(None, description="write a grid of augmented training samples to this PNG")
    preview_n: int = Field(24, ge=1, le=400, description="samples in the preview grid")
    size: int = Field(224, ge=16, le=1024, description="sample size in the preview (px)")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="validation share when the data has no val split")
    seed: int = Field(0, description="split seed")


@dataclass(frozen=True)
class OutputSpec:
    """What the exported graph returns; the targets read this instead of knowing tasks."""

    names: tuple[str, ...]  # graph outputs in order; predictors return the first
    coreml: str = "tensor"  # Core ML output: "classifier" (ClassifierConfig), "tensor" (MultiArray), "image"
    dynamic_size: bool = False  # fully convolutional: height/width stay free where the target allows it
    web_renderer: str = "classify.js"  # module in tasks/web/ that shows results in the exported page
    quality: str = "accuracy"  # what Task.quality measures (tables, budgets)


@dataclass
class HeldOut:
    """Real images a bundle is judged on, decoded once at the contract's size."""

    pixels: np.ndarray  # uint8 NHWC
    truth: Any  # the task's ground truth for ``quality`` (labels, points in model pixels, ...), or None
    paths: list[Path] = field(default_factory=list)
    shifted: int = 0  # the last ``shifted`` images are a phone-photo corrupted twin of the others (evaluate/shift)

    def with_shifted_twin(self, seed: int = 0) -> HeldOut:
        """These images plus one phone-photo corruption of each, truth unchanged (for tasks whose truth a
        corruption keeps): budgets and parity then hold off the val split, not only on it."""
        if self.shifted or not len(self.pixels):
            return self
        twin, _ = shifted_copy(self.pixels, seed)
        return HeldOut(np.concatenate([self.pixels, twin]), np.concatenate([self.truth, self.truth]),
                       self.paths * 2, shifted=len(twin))


@dataclass
class Starter:
    """A model with nothing learned yet, every class to be taught on the device (``pocketvision starter``): the
    graph body (normalised pixels -> a tuple ending in the embedding), its contract, the file's metadata and
    outputs."""

    model: Any  # nn.Module
    contract: Any  # Contract
    meta: dict[str, Any]
    outputs: OutputSpec


@dataclass
class Validation:
    """One validation pass: ``score`` orders epochs (higher is better), ``row`` goes to the log and history,
    ``text`` to the console line, ``result`` is kept for the best epoch (``TaskRun.finish``)."""

    score: tuple
    row: dict[str, Any]
    text: str
    result: Any = None


class TaskRun:
    """One training run of a task, driven by the engine (``training/engine.py``): the task supplies data,
    model and the per-step maths; the engine owns epochs, optimiser, schedule, EMA, AMP, checkpoints,
    logging, progress, Ctrl-C and early stopping (the Lightning split: Trainer vs LightningModule).

    ``model`` is what the bundle keeps; ``trainable`` is what the optimiser updates (the same module, or the
    top of it on cached activations). Batches come from ``batches(epoch)``; ``forward`` runs under the
    engine's autocast, ``loss`` outside it.
    """

    data: Path  # what the run trains on (for messages)
    model: nn.Module
    spec: dict[str, Any]
    contract: Contract
    default_lr: float = 1e-3
    pretrained: bool = False  # backbone/head learning rates and frozen BN statistics by default
    channels_last_ok: bool = True  # a user's module may .view() a feature map: channels_last would break it
    problems: list[str]
    # (rank, processes) of a distributed run, set by the engine before ``prologue``: training batches are this
    # process's share (``make_loader(..., shard=self.shard)``), ``cfg.batch_size`` the global batch.
    shard: tuple[int, int] = (0, 1)

    @property
    def trainable(self) -> nn.Module:
        return self.model

    def prologue(self, engine: Any, resuming: bool) -> None:
        """Before the first epoch (a linear probe, cached activations, ...)."""

    def param_groups(self, peak: float, backbone_lr_mult: float) -> list[dict]:
        net = self.trainable
        if self.pretrained and hasattr(net, "head_parameters"):
            head_ids = {id(p) for p in net.head_parameters()}
            return [{"params": [p for p in net.parameters() if id(p) not in head_ids], "lr": peak * backbone_lr_mult,
                     "name": "backbone"},
                    {"params": [p for p in net.parameters() if id(p) in head_ids], "lr": peak, "name": "head"}]
        return [{"params": list(net.parameters()), "lr": peak, "name": "all"}]

    def epochs(self, cfg: Any) -> int:
        return cfg.epochs

    def schedule(self, name: str, total_steps: int, steps_per_epoch: int, cycle_epochs: float):
        """-> step -> factor of the peak LR (``--schedule``)."""
        return make_schedule(name, total_steps, steps_per_epoch, cycle_epochs)

    def scheduler(self, optimizer: Any, total_steps: int) -> Any:
        """A task's own torch LR scheduler (stepped after every optimiser step) instead of ``schedule``."""
        return None

    def phase(self, epoch: int) -> str:
        return "train"

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def batches(self, epoch: int):
        raise NotImplementedError

    def forward(self, net: nn.Module, batch: Any) -> Any:
        raise NotImplementedError

    def loss(self, outputs: Any, batch: Any):
        raise NotImplementedError

    def batch_size(self, batch: Any) -> int:
        return len(batch[0])

    def preview(self, batch: Any):
        """uint8 NHWC images of a batch for TensorBoard's 'augmented inputs', or None."""
        return None

    def validate(self, net: nn.Module) -> Validation:
        raise NotImplementedError

    def epoch_note(self, epoch: int) -> str:
        return ""

    def close(self) -> None:
        """Release data loaders and their workers."""

    def on_end(self, engine: Any) -> None:
        """After the best weights are back in ``model``, before the logs close (e.g. a TensorBoard projector)."""

    def finish(self, best: Validation | None, run_dir: Path | None) -> dict[str, Any]:
        """-> the bundle's task-specific metadata: ``labels``, ``metrics`` and any extra keys."""
        raise NotImplementedError


@dataclass
class Command:
    """A CLI verb a task adds (``pocketvision stylize``): flags come from ``options``; ``run(args, options)``
    returns the exit code. ``arguments`` adds positionals and verb-only flags to the parser."""

    name: str
    help: str
    options: type[Options]
    run: Callable[[Any, Options], int]
    arguments: Callable[[Any], None] = lambda parser: None


# -- the roles of a task: each hook group a reader can hold alone; ``Task`` is all of them ---------------
class TaskData:
    """What the task reads: detection, held-out photos, training images, shard records (data sets, calibration)."""

    def detect(self, data: str | os.PathLike) -> bool:
        """Whether ``data`` looks like this task's training data (``--task auto``)."""
        return False

    def held_out(self, meta: dict[str, Any], data: str | os.PathLike | None = None) -> HeldOut:
        """The held-out images (the bundle's validation split, or ``data``'s eval split) with their truth."""
        raise NotImplementedError

    def training_images(self, meta: dict[str, Any], data: str | os.PathLike | None = None) -> tuple[list[Path], str]:
        """-> (training image paths, where they came from) for calibration and palette fine-tuning."""
        raise NotImplementedError

    def shard_records(self, data: str | os.PathLike, val_fraction: float, seed: int
                      ) -> tuple[dict[str, Any], dict[str, list[tuple[Path, str, Any]]]]:
        """For `pocketvision shards`: (what the set's descriptor keeps for this task, e.g. the classes;
        {split: [(image path, its name relative to ``data``, its JSON annotation)]}), with the same splits training
        on ``data`` would use. The task's reader of ``data`` then reads a shard set too."""
        raise PocketVisionError(f"`pocketvision shards` does not write {self.name} data.")

    def stored_annotation(self, annotation: Any, stored: tuple[int, int], original: tuple[int, int]) -> Any:
        """An annotation in the pixels a shard stores (``stored`` (w, h), resized from ``original``)."""
        return annotation

    def count_images(self, data: str | os.PathLike) -> int | None:
        """Training images in ``data`` for the recipe (cheap: a listing, no decoding); None if unknown."""
        return None


class TaskTraining:
    """How it trains: its recipe and its run (`pocketvision train`; the engine drives the ``TaskRun``)."""

    def recipe(self, ctx: RecipeContext) -> Recipe | None:
        """The best known training settings for this architecture, pretrained or not, data size and device
        (``training/recipes.py``); None: the engine and task defaults."""
        return None

    def setup(self, data: str | os.PathLike, cfg: Any, opts: Options, console: Any, resuming: bool) -> TaskRun:
        raise NotImplementedError


class TaskGraph:
    """Its network and exported graph: rebuilding a bundle's model, what every export computes after it, int8."""

    def build_model(self, spec: dict[str, Any], contract: Contract) -> nn.Module:
        """Rebuild the network a bundle's ``arch`` spec describes (weights are loaded by the caller)."""
        from ..models import build_model
        return build_model(spec, pretrained=False)

    # Whether an export can also output the embedding a device learns new classes from (``export --teachable``).
    teachable: ClassVar[bool] = False

    def graph_model(self, model: nn.Module, teachable: bool = False) -> nn.Module:
        """The module an export captures before ``graph_head`` (default: the model; a task may return one that
        computes more than the model's ``forward``, e.g. a classifier's unfamiliarity score; with ``teachable``,
        its embedding last)."""
        return model

    def teach_meta(self, bundle: Any, data: str | os.PathLike | None = None) -> dict[str, Any]:
        """What a teachable export's metadata says a device needs to learn on it (``runtime/teach.py``)."""
        raise NotImplementedError

    def starter(self, arch: str) -> Starter:
        """A pretrained network alone, as a model whose every class is taught on the device (teachable tasks)."""
        raise PocketVisionError(f"{self.name} models cannot start with no classes: only a teachable task can.")

    def graph_head(self, y: Any) -> tuple:
        """The graph body's raw output -> the graph's outputs (``outputs.names``, a prefix of them), decoded."""
        return (y,)

    def coreml_head(self, y: Any) -> Any:
        """The one output Core ML carries (its ``outputs.coreml`` type)."""
        return self.graph_head(y)[0]

    def export_meta(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Bundle metadata every export carries beside labels, contract and threshold."""
        return {}


class TaskRuntime:
    """Its answers, numpy only: predict, evaluate, quality, budgets and parity (`predict`, `eval`, `verify`)."""

    def predict(self, model: Any, sources: Sequence[str | os.PathLike | bytes]) -> list[dict[str, Any]]:
        """``model``: anything with ``run_pixels``, ``contract``, ``labels``, ``meta`` (a bundle or a predictor)."""
        raise NotImplementedError

    def record_line(self, record: dict[str, Any]) -> str:
        """One record as the text `pocketvision predict` prints after the image path."""
        return str(record)

    def evaluate(self, model: Any, data: str | os.PathLike, *, split: str = "auto",
                 report_dir: str | os.PathLike | None = None, title: str = "model", options: Options | None = None
                 ) -> dict[str, Any]:
        raise NotImplementedError

    def render_metrics(self, metrics: dict[str, Any], console: Any) -> None:
        console.print(metrics)

    def brief(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Metrics without bulky per-image lists (JSON output)."""
        return metrics

    def quality(self, outputs: np.ndarray, truth: Any, reference: np.ndarray | None, meta: dict[str, Any]) -> float:
        """One higher-is-better number for budgets, gates and tables (``outputs.quality`` names it), of the answers
        a user sees (the bundle's own decision rule, e.g. a classifier's stored threshold): against the held-out
        ``truth``, or against ``reference``, the float model's outputs on the same pixels."""
        raise NotImplementedError

    def int8_recipe(self, onnx_path: Path | None) -> Int8Recipe:
        """How int8 export quantises this task's fp32 ONNX graph: nodes left float by design, the op types
        quantised, the calibration (``Int8Recipe`` above; the default suits classifiers). ``None``:
        a target whose graph has no ONNX node names (LiteRT uses the op types only)."""
        return Int8Recipe()

    def within_budget(self, base: float, quality: float, max_drop: float) -> bool:
        """Whether a compressed model's ``quality`` is acceptable against the float model's ``base``."""
        return 100 * (base - quality) <= max_drop + 1e-9

    def budget_text(self, precision: str, max_drop: float) -> str:
        return f"{precision}: {self.outputs.quality} drop <= {max_drop} points"

    def compare(self, ref: np.ndarray, cand: np.ndarray, truth: Any, meta: dict[str, Any],
                tolerance: float | None = None) -> dict[str, Any]:
        """Parity of an export against the bundle on the same pixels: ``passed`` at ``tolerance`` (the
        task's float tolerance when None) plus the task's own numbers."""
        raise NotImplementedError

    def parity_line(self, v: dict[str, Any]) -> str:
        """One line describing a ``compare`` result (the CLI prefixes PASSED/FAILED)."""
        return str(v)


class TaskVerbs:
    """The other verbs it takes part in: `check`, `filter`, its own commands."""

    def check(self, data: str | os.PathLike, options: Options) -> tuple[dict[str, Any], Callable[[Any], None]]:
        """-> (JSON report, render(console)) for `pocketvision check`."""
        raise PocketVisionError(f"`check` does not apply to {self.name} data.")

    def filter_video(self, model: Any, video: str | os.PathLike, out: str | os.PathLike,
                     options: Options) -> dict[str, Any]:
        """`pocketvision filter`: the model on every frame of a video (when ``FilterOptions`` is set)."""
        raise NotImplementedError

    def filter_line(self, stats: dict[str, Any]) -> str:
        """What `pocketvision filter` prints after the common frame/fps line."""
        return ""

    def commands(self) -> list[Command]:
        return []


class TaskLabelling:
    """Pre-filling a labelling session with its model's answers (`pocketvision label --model`)."""

    def label_problem(self, mode: str, labels: list[str], names: list[str]) -> str | None:
        """Why this task's model cannot pre-fill a labelling session of ``mode`` (None: it can)."""
        return f"a {self.name} model cannot suggest {mode}."

    def label_suggestion(self, record: dict[str, Any], names: list[str]) -> dict[str, Any]:
        """A predict record -> what the labelling page pre-fills, with an ``uncertainty`` in [0, 1]."""
        raise NotImplementedError


class Task(TaskData, TaskTraining, TaskGraph, TaskRuntime, TaskVerbs, TaskLabelling):
    """A task plug-in: what it is (the class attributes) and what it does (the roles above). Subclasses set the
    attributes and override the hooks that apply."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = NoOptions
    EvalOptions: ClassVar[type[Options]] = NoOptions
    CheckOptions: ClassVar[type[Options]] = NoOptions
    FilterOptions: ClassVar[type[Options]] | None = None  # None: `pocketvision filter` does not apply
    outputs: ClassVar[OutputSpec]
    compressions: ClassVar[frozenset[str]] = frozenset({"int8", "fp16"})  # also: palettize, qat, prune
    model_kind: ClassVar[str] = "classifier"  # which registry models it builds (models/registry.py)
    default_arch: ClassVar[tuple[str, dict[str, Any]]] = ("deepdog", {"alpha": 0.5})
    engine_defaults: ClassVar[dict[str, Any]] = {}  # TrainConfig fields this task defaults differently
    refuses: ClassVar[dict[str, str]] = {}  # TrainConfig field -> why this task cannot use it
    # Options that act only after the last epoch (how the decision threshold is chosen, say): a resumed run may
    # change them, so a finished run is finished again in seconds with another value. Other options stay the run's.
    finish_options: ClassVar[frozenset[str]] = frozenset()
    detect_order: ClassVar[int] = 50  # auto detection asks lower numbers first
    fallback: ClassVar[bool] = False  # accepts any data: chosen by --task auto only when nothing more specific fits
    model_flag: ClassVar[str | None] = None  # a flag naming the model of `filter` (``--style BUNDLE``)
    # Whether its truth survives the phone-photo corruptions of evaluate/shift.py (a class does; keypoints move
    # under rotation): then compression budgets and parity are judged on held-out images and their shifted twin.
    shift_keeps_truth: ClassVar[bool] = False
    # (raw model output, torch.Generator) -> the summed negative log-likelihood of outputs drawn from the model's
    # own predictive distribution: its squared gradient is the Fisher information that ranks layers for mixed-bit
    # palettes (compress/palettize.fisher_sensitivity). None: no likelihood; layers are scanned one by one.
    sampled_nll: ClassVar[Callable[..., Any] | None] = None


# -- registry ---------------------------------------------------------------------------------------
_TASKS: dict[str, Task] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: one instance per task name (like ``@register_model``)."""
    name = getattr(cls, "name", None)
    if not name or name in _TASKS:
        raise ValueError(f"task {name!r} has no name or is registered twice")
    _TASKS[name] = cls()
    return cls


def task_names() -> tuple[str, ...]:
    return tuple(_TASKS)


def all_tasks() -> list[Task]:
    return list(_TASKS.values())


def detect_task(data: str | os.PathLike) -> Task:
    """The task ``data`` is for: a shard set names its own, else the first task (``detect_order``) that reads it."""
    named = shard_task(data)
    return get_task(named) if named else next(t for t in sorted(all_tasks(), key=lambda t: t.detect_order)
                                              if t.detect(data))


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise unknown_choice("task", str(name), _TASKS)
    return _TASKS[name]


def option_owner(field_name: str) -> list[str]:
    """The tasks whose training options include ``field_name``."""
    return [t.name for t in _TASKS.values() if field_name in t.Options.model_fields]


def parse_options(model: type[Options], values: dict[str, Any], what: str) -> Options:
    """Validate ``values`` against an options model -> one line per problem (sklearn's message style)."""
    try:
        return model(**values)
    except ValidationError as e:
        def one(err: dict) -> str:
            where = ".".join(str(p) for p in err["loc"])
            if err["type"] == "missing":
                return f"--{where.replace('_', '-')} is required"
            return f"'{where}' {err['msg']} (got {err.get('input')!r})"
        raise PocketVisionError(f"invalid {what} option: {'; '.join(one(err) for err in e.errors())}") from None


def refuse_foreign(task: Task, given: dict[str, Any], model_attr: str, what: str) -> None:
    """Options that belong to another task's ``model_attr`` model are refused, never ignored."""
    own = getattr(task, model_attr)
    foreign = []
    for k in given:
        if own is not None and k in own.model_fields:
            continue
        owners = [t.name for t in _TASKS.values() if getattr(t, model_attr) is not None
                  and k in getattr(t, model_attr).model_fields]
        if owners:
            foreign.append((k, owners))
        else:
            valid = sorted(own.model_fields) if own is not None else []
            raise PocketVisionError(f"Unrecognized {what} option {k!r} for {task.name}."
                                    f"{did_you_mean(k, valid)}")
    if foreign:
        names = ", ".join(f"--{k.replace('_', '-')}" for k, _ in foreign)
        owners = sorted({o for _, os_ in foreign for o in os_})
        many = len(foreign) > 1
        raise PocketVisionError(f"{names}: {'' if many else 'a '}{' and '.join(owners)} option{'s' if many else ''}; "
                                f"a {task.name} {what} does not use {'them' if many else 'it'}. "
                                f"Leave {'them' if many else 'it'} out.")


def evaluate_model(model: Any, data: str | os.PathLike, split: str, report_dir: str | os.PathLike | None,
                   title: str, options: dict[str, Any]) -> dict[str, Any]:
    """Evaluate a bundle or an exported model with its task's code; an option of another task is refused."""
    task = get_task(model.meta["task"])
    given = {k: v for k, v in options.items() if v is not None}
    refuse_foreign(task, given, "EvalOptions", "evaluation")
    return task.evaluate(model, data, split=split, report_dir=report_dir, title=title,
                         options=parse_options(task.EvalOptions, given, "evaluation"))


def task_of(meta: dict[str, Any], where: str | os.PathLike) -> Task:
    """The plug-in of a bundle's task, or a one-line error naming the file (a newer or foreign task)."""
    name = meta.get("task")
    if name not in _TASKS:
        raise BundleError(f"{where}: task {name!r} is not supported by this version (supported: "
                          f"{', '.join(_TASKS)}). Upgrade: pip install -U pocketvision")
    return _TASKS[name]


def load_parent(path: str | os.PathLike) -> tuple[dict[str, Any], nn.Module]:
    """A bundle's (metadata, model) for ``init_from`` / a distillation teacher, without the Bundle class."""
    from ..core.weights import build_for_weights, load_weights, weights_cap
    data = read(path, weights_cap=weights_cap(task_of, str(path)))
    model = build_for_weights(task_of(data.meta, path), data.meta["arch"], data.contract, data.weights, str(path))
    return data.meta, load_weights(model, data.weights, str(path), data.meta["arch"])


def split_sources(sources: Any) -> list:
    return [sources] if isinstance(sources, str | os.PathLike | bytes) else list(sources)
