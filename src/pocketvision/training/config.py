"""Typed, validated training configuration: the engine's options, shared by every task.

Task-specific options (classify's ``label_smoothing``, keypoints' ``head``, stylize's ``style``...) are each
task's ``Options`` model (``tasks/``); ``pipeline.options.split_options`` routes a flat ``train(**options)`` to
the two and refuses an option of another task with one line. The CLI builds its flags from these models (an option is
written once, here, and the CLI, the Python API and the docs follow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import PocketVisionError

Schedule = Literal["onecycle", "cosine", "triangular", "triangular2", "exp_range", "constant"]
SCHEDULES: tuple[str, ...] = Schedule.__args__  # type: ignore[attr-defined]
OPTIMIZERS = ("adamw", "sgd", "rmsprop")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Checked against the task registry one layer up (``pipeline.options``): the engine never names a task.
    task: str = Field("auto", description="auto: from the data (annotation files: keypoints; image folders: "
                           "classify) or from the task options given")
    arch: str | None = Field(None, description="architecture from the registry (pocketvision info); default: the "
                             "task's (efficientnet_lite0 for classify, deepdog alpha=0.5 for keypoints, "
                             "stylenet_mobile for stylize)")
    arch_args: dict[str, Any] = Field(default_factory=dict, description="architecture arguments, e.g. alpha=0.5")
    pretrained: bool = Field(True, description="start from ImageNet weights when the architecture has them",
                             json_schema_extra={"flag": "--scratch", "flag_help": "random init even when ImageNet "
                                                                  "weights exist"})
    size: int | None = Field(None, ge=16, le=1024, description="input side in px (default: the architecture's)")
    epochs: int = Field(8, ge=0, le=10000, description="training epochs (after a pretrained model's linear probe)")
    batch_size: int = Field(32, ge=1, le=4096, description="batch size")
    optimizer: Literal["adamw", "sgd", "rmsprop"] = Field("adamw", description="optimizer")
    lr: float | None = Field(None, gt=0, lt=10, description="peak learning rate (default: the task's; classify: "
                             "3e-3 from scratch, 3e-5 top fine-tune, 1e-4 full fine-tune)")
    lr_scaling: Literal["auto", "linear", "sqrt", "off"] = Field(
        "auto", description="when you change --batch-size and leave --lr to the default or the recipe, scale that LR "
        "with the batch: linear (SGD, Goyal et al. 2017) or square root (Adam-type, Malladi et al. 2022); auto: "
        "linear for sgd, sqrt otherwise. An --lr you give is used as it is")
    lr_reference_batch: int | None = Field(None, ge=1, description="the batch size the default LR goes with "
                                           "(default: the recipe's or the task's batch size)")
    weight_decay: float = Field(0.02, ge=0, lt=1, description="weight decay")
    schedule: Schedule = Field("onecycle", description="LR schedule (triangular* and exp_range are cyclical LRs)")
    clr_cycle_epochs: float = Field(2.0, gt=0, description="half-cycle length of the cyclical schedules")
    freeze_epochs: int = Field(0, ge=0, description="epochs with a frozen backbone before unfreezing")
    backbone_lr_mult: float = Field(0.2, gt=0, le=1, description="backbone LR multiplier (pretrained backbones)")
    freeze_bn: bool | None = Field(None, description="keep BN statistics frozen (default: on when pretrained)")
    early_stopping: int | None = Field(None, ge=1, description="stop after N epochs without validation improvement")
    amp: Literal["auto", "on", "off"] = Field("auto", description="mixed precision (auto: on CUDA)")
    compile: bool = Field(False, description="torch.compile the model for training (opt-in: compiling costs "
                          "minutes up front; a model or machine it fails on trains uncompiled, with a one-line "
                          "warning)")
    channels_last: Literal["auto", "on", "off"] = Field("auto", description="channels_last memory format (auto: on, "
                                                        "except a user module on CPU)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    devices: int = Field(1, ge=1, le=1024, description="train on N processes of this machine (GPUs, or CPU cores "
                         "with gloo) with DistributedDataParallel, launched through torchrun; --batch-size stays "
                         "the global batch. Across machines: torchrun ... -m pocketvision train ...")
    max_restarts: int = Field(1, ge=0, le=100, description="with --devices N: how often the processes are "
                              "restarted after one dies (they resume from the last checkpoint; a bad input stops)")
    batch_augment: Literal["auto", "on", "off"] = Field("auto", description="augment whole batches with torch on "
                                                        "the training device, data workers only gather pixels (auto: "
                                                        "on CUDA; on a CPU the per-image Pillow path is faster)")
    workers: int | None = Field(None, ge=0, le=64, description="data worker processes (default: cores - 1)")
    cache_mb: int = Field(2048, ge=0, description="decoded-image RAM cache budget (MB)")
    cache_dir: str | None = Field(None, description="where `pocketvision cache` keeps decoded pixels (default: "
                                  "$POCKETVISION_CACHE_DIR or the user cache); used when one exists for the data")
    seed: int = Field(0, description="random seed (split, init, augmentation)")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="validation share when the data has no val split")
    augment: dict[str, Any] = Field(default_factory=dict, description="augmentation overrides, e.g. "
                                    "'scale=[0.08,1],glare=0.3' (the task's augmentation config)")
    progressive: int | None = Field(None, ge=16, le=1024, description="progressive resizing: start training at this "
                                    "side and grow to the model's size by progressive_until of the epochs (more "
                                    "epochs per minute)")
    progressive_until: float = Field(0.75, gt=0, lt=1, description="progressive resizing: fraction of the epochs "
                                     "that grow the size; the rest train at the model's size (its BN statistics)")
    recipe: bool = Field(True, description="fill what you did not set from the recipe for this architecture, data "
                         "size and device (printed at the start, stored in the bundle)",
                         json_schema_extra={"flag": "--no-recipe", "flag_help": "plain engine defaults: no "
                                            "architecture recipe"})
    ema: float = Field(0.0, ge=0, lt=1, description="decay of an exponential moving average of the weights "
                       "that is evaluated and kept instead of the raw weights (0 = off; e.g. 0.998)")
    init_from: str | None = Field(None, description="bundle whose weights (and contract) start the run; "
                                  "its architecture spec must match (fine-tuning a pruned bundle, retraining)")
    inherit_from: str | None = Field(None, description="bundle whose tensors start every layer of this network "
                                     "with the same name and shape, the rest starting fresh (weight inheritance, "
                                     "as architecture search uses it: a mutated child from its parent)")
    run_dir: Path | None = Field(None, description="where checkpoints, logs, TensorBoard and the report go "
                                 "(default runs/train-TIMESTAMP)")
    tensorboard: bool = Field(True, description="TensorBoard logs beside the CSV log",
                              json_schema_extra={"flag": "--no-tensorboard", "flag_help": "CSV log only"})
    progress: bool = Field(True, description="progress bar", json_schema_extra={"cli": False})


def make_config(**kwargs: Any) -> TrainConfig:
    """Build a TrainConfig, turning pydantic's multi-line report into one line per problem."""
    if isinstance(kwargs.get("arch"), str) and kwargs["arch"].startswith("searched:"):
        from ..models.searched import load_searched  # `pocketvision search` output: the blocks and the input side
        args, resolution = load_searched(kwargs["arch"].split(":", 1)[1])
        kwargs = {**kwargs, "arch": "searched", "arch_args": {**args, **(kwargs.get("arch_args") or {})}}
        if resolution and kwargs.get("size") is None:
            kwargs["size"] = resolution
    try:
        return TrainConfig(**kwargs)
    except ValidationError as e:
        problems = "; ".join(
            f"'{'.'.join(str(p) for p in err['loc'])}' {err['msg']} (got {err.get('input')!r})" for err in e.errors()
        )
        raise PocketVisionError(f"invalid training option: {problems}") from None
