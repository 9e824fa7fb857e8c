"""What a classifier's training, evaluation and check take (typed; the CLI's flags and the API's keywords come from
them).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from ..base import CheckOptionsBase, Options


class ClassifyOptions(Options):
    label_smoothing: float | None = Field(None, ge=0, lt=1, description="label smoothing (default: 0.1 from "
                                          "scratch, 0 when fine-tuning)")
    class_weights: Literal["auto", "none"] | list[float] = Field(
        "auto", description="auto (inverse class frequency), none, or w1,w2,... (one per class)")
    linear_probe: bool = Field(False, description="only fit a logistic-regression head on frozen pretrained "
                               "features (fast baseline)")
    probe_init: bool | None = Field(None, description="pretrained: initialise a new head by a linear probe first "
                                    "(default; the ImageNet head starts as it is: a probe fitted to your photos "
                                    "learns their bias)",
                             json_schema_extra={"flag": "--no-probe-init", "flag_help": "pretrained: start the "
                                                                  "head from scratch instead of a linear probe"})
    finetune: Literal["top", "full"] = Field(
        "top", description="pretrained: 'top' trains the last --top-blocks on cached activations (fast on CPU), "
                           "'full' trains every layer with pixel augmentation (used on CUDA)")
    top_blocks: int = Field(3, ge=1, le=64, description="feature blocks trained by --finetune top")
    top_views: int = Field(2, ge=1, le=16, description="--finetune top: views of each training photo cached "
                           "(1 the photo, 2 + its mirror, more + augmented crops drawn by --augment); an epoch "
                           "draws two per photo, so more views cost cache time, not epoch time")
    low_res_views: bool = Field(True, description="--finetune top: also cache a low-resolution copy of each photo "
                                "and of its mirror (short side 32-112 px, scaled back up by the contract)",
                                json_schema_extra={"flag": "--no-low-res-views", "flag_help": "--finetune top: "
                                                   "cache no low-resolution copies of the photos"})
    imagenet_head: Literal["auto", "on", "off"] = Field(
        "auto", description="pretrained: keep the network's ImageNet head and read each class through the ImageNet "
                            "categories its photos fall in (hot dog -> 'hot dog'; a class that anchors nowhere takes "
                            "the rest); auto: when the classes anchor, off: a new head")
    lwf: float | None = Field(None, ge=0, le=100, description="with the ImageNet head on --finetune top: weight of "
                              "distilling the pretrained network's 1000 ImageNet outputs on each photo into every "
                              "cached view of it (learning without forgetting; default 1, 0 turns it off)")
    target_precision: float = Field(0.9, gt=0, le=1, description="binary: choose the decision threshold for this "
                                    "precision (its 95% lower bound) on val and its phone-photo shifted twin")
    calibrate: bool = Field(True, description="fit a temperature on val and a phone-photo shifted twin of it, "
                            "folded into the classifier so every export outputs calibrated probabilities",
                            json_schema_extra={"flag": "--no-calibrate", "flag_help": "keep the raw probabilities "
                                               "(no temperature scaling; threshold from val alone)"})
    mixup: float = Field(0.0, ge=0, le=1, description="probability of a CutMix batch (regularises small "
                         "from-scratch runs)")
    distill: str | None = Field(None, description="teacher bundle for knowledge distillation (e.g. a fine-tuned "
                                "efficientnet_lite0 teaching a small deepdog)")
    distill_alpha: float = Field(0.7, ge=0, le=1, description="weight of the teacher's term in the loss")
    distill_t: float = Field(2.0, gt=0, description="distillation temperature")

    @field_validator("class_weights")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if isinstance(v, list) and any(w <= 0 for w in v):
            raise ValueError("class weights must be positive")
        return v


class ClassifyEvalOptions(Options):
    threshold: float | None = Field(None, ge=0, le=1, description="binary decision threshold (default: the "
                                    "bundle's)")
    compare_to_val: bool = Field(False, description="a shift report: this folder's accuracy, AUC, calibration "
                                 "and threshold precision against the model's val split, what moved most, and "
                                 "a verdict (class folders the model does not know are left out, by name)")


class ClassifyCheckOptions(CheckOptionsBase):
    tiny: int = Field(64, ge=1, description="report images whose short side is below this (px)")
    content: bool = Field(True, description="read each class's training photos with the ImageNet-pretrained network: "
                          "what each class holds, and the photos a class is missing (about 20 s on 2 cores)",
                          json_schema_extra={"flag": "--no-content", "flag_help": "skip reading the photos with the "
                                             "pretrained network (counts, duplicates and files only)"})
    content_per_class: int = Field(300, ge=10, le=100000, description="photos of each class the content check reads "
                                   "(drawn with --seed)")
    content_sheet: str | None = Field(None, description="write the content check's clusters with example photos to "
                                      "this PNG")
