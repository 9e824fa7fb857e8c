"""Typed, validated training configuration (one place; the CLI and the API both build this)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import PocketVisionError

Schedule = Literal["onecycle", "cosine", "triangular", "triangular2", "exp_range", "constant"]
SCHEDULES: tuple[str, ...] = Schedule.__args__  # type: ignore[attr-defined]
OPTIMIZERS = ("adamw", "sgd", "rmsprop")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    task: Literal["auto", "classify", "keypoints"] = Field(
        "auto", description="auto: keypoints for a COCO keypoints JSON / CSV (or a folder with train.json), "
                            "else classify (image folders)")
    arch: str | None = Field(None, description="architecture from the registry (pocketvision info); default "
                             "efficientnet_lite0 for classify, deepdog alpha=0.5 for keypoints")
    arch_args: dict[str, Any] = Field(default_factory=dict, description="architecture arguments, e.g. alpha")
    pretrained: bool = Field(True, description="start from ImageNet weights when the architecture has them")
    size: int | None = Field(None, ge=16, le=1024, description="input side in px (default: the architecture's)")
    epochs: int = Field(8, ge=0, le=10000)
    batch_size: int = Field(32, ge=1, le=4096)
    optimizer: Literal["adamw", "sgd", "rmsprop"] = "adamw"
    lr: float | None = Field(None, gt=0, lt=10,
                             description="peak LR (default: 3e-3 from scratch, 3e-5 top fine-tune, 1e-4 full)")
    weight_decay: float = Field(0.02, ge=0, lt=1)
    schedule: Schedule = "onecycle"
    clr_cycle_epochs: float = Field(2.0, gt=0, description="half-cycle length for the cyclical schedules")
    label_smoothing: float | None = Field(None, ge=0, lt=1, description="default: 0.1 from scratch, 0 fine-tune")
    class_weights: Literal["auto", "none"] | list[float] = Field(
        "auto", description="'auto' = inverse class frequency, 'none', or one weight per class")
    linear_probe: bool = Field(False, description="only fit a logistic-regression head on frozen features")
    probe_init: bool = Field(True, description="pretrained: initialise the head by a linear probe first")
    finetune: Literal["top", "full"] = Field(
        "top", description="pretrained: 'top' trains the last blocks on cached activations (fast on CPU), "
                           "'full' trains every layer with pixel augmentation")
    top_blocks: int = Field(3, ge=1, le=64, description="'top' fine-tune: how many final feature blocks train")
    freeze_epochs: int = Field(0, ge=0, description="epochs with the backbone frozen before unfreezing")
    backbone_lr_mult: float = Field(0.2, gt=0, le=1, description="backbone LR = lr * this once unfrozen")
    freeze_bn: bool | None = Field(None, description="keep BN statistics frozen (default: on when pretrained)")
    early_stopping: int | None = Field(None, ge=1, description="stop after N epochs without val improvement")
    amp: Literal["auto", "on", "off"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    workers: int | None = Field(None, ge=0, le=64, description="data worker processes (default: cores - 1)")
    cache_mb: int = Field(2048, ge=0, description="decoded-image RAM cache budget")
    seed: int = 0
    val_fraction: float = Field(0.15, gt=0, lt=1)
    target_precision: float = Field(0.9, gt=0, le=1)
    augment: dict[str, Any] = Field(default_factory=dict, description="AugmentConfig overrides")
    progressive: int | None = Field(None, ge=16, le=1024, description="progressive resizing: start training at this "
                                    "side and grow to the model's size by progressive_until of the epochs (more "
                                    "epochs per minute)")
    progressive_until: float = Field(0.75, gt=0, lt=1, description="progressive resizing: fraction of the epochs "
                                     "that grow the size; the rest train at the model's size (its BN statistics)")
    mixup: float = Field(0.0, ge=0, le=1, description="probability of a mixup/cutmix batch (from scratch)")
    ema: float = Field(0.0, ge=0, lt=1, description="decay of an exponential moving average of the weights "
                       "that is evaluated and kept instead of the raw weights (0 = off; e.g. 0.998)")
    init_from: str | None = Field(None, description="bundle whose weights (and contract) start the run; "
                                  "its architecture spec must match (fine-tuning a pruned bundle, retraining)")
    distill: str | None = Field(None, description="teacher bundle for knowledge distillation")
    distill_alpha: float = Field(0.7, ge=0, le=1, description="weight of the teacher's term in the loss")
    distill_t: float = Field(2.0, gt=0, description="distillation temperature")
    head: Literal["heatmap", "simcc", "regression"] = Field(
        "heatmap", description="keypoints: heatmap (stride-4 heatmaps, integral decoding), simcc (sub-pixel "
                               "coordinate bins) or regression (direct x, y)")
    head_args: dict[str, Any] = Field(default_factory=dict, description="keypoints: head arguments, e.g. "
                                      "hidden=128,ratio=2,sigma=1.5 (simcc)")
    exclude: str | None = Field(None, description="keypoints: text file of images to leave out "
                                "(`pocketvision check --suspects-out`)")
    kp_loss: Literal["auto", "mse", "l1", "kl"] = Field("auto", description="keypoints: regression loss (mse, l1); "
                                                       "simcc uses kl")
    output_stride: int = Field(16, ge=4, le=32, description="keypoints: stride of the last feature map")
    flip_pairs: str | None = Field(None, description="keypoints: override inferred flip pairs "
                                   "('left_eye:right_eye,...' or 'none')")
    normalize: str | None = Field(None, description="keypoints: NME normaliser, two point names 'a,b' or 'bbox' "
                                  "(default: the two eye points, else bbox)")
    run_dir: Path | None = None
    tensorboard: bool = True
    progress: bool = True

    @field_validator("class_weights")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if isinstance(v, list) and any(w <= 0 for w in v):
            raise ValueError("class weights must be positive")
        return v


def make_config(**kwargs: Any) -> TrainConfig:
    """Build a TrainConfig, turning pydantic's multi-line report into one line per problem."""
    try:
        return TrainConfig(**kwargs)
    except ValidationError as e:
        problems = "; ".join(
            f"'{'.'.join(str(p) for p in err['loc'])}' {err['msg']} (got {err.get('input')!r})" for err in e.errors()
        )
        raise PocketVisionError(f"invalid training option: {problems}") from None
