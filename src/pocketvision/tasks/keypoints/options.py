"""What a keypoint model's training, evaluation, check and video filter take (typed; the CLI's flags and the API's
keywords come from them), and how two of them are read.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ..base import CheckOptionsBase, Options
from .annotations import read_exclude


class KeypointOptions(Options):
    head: Literal["heatmap", "simcc", "regression"] = Field(
        "heatmap", description="heatmap (stride-4 heatmaps, integral decoding), simcc (sub-pixel coordinate "
                               "bins) or regression (direct x, y)")
    head_args: dict[str, Any] = Field(default_factory=dict, description="head arguments, e.g. "
                                      "hidden=128,ratio=2,sigma=1.5 (simcc)")
    exclude: str | None = Field(None, description="text file of images to leave out (one path or file name per "
                                "line), e.g. from `pocketvision check --suspects-out`")
    kp_loss: Literal["auto", "mse", "l1", "kl"] = Field("auto", description="loss (auto: kl for heatmap/simcc, mse "
                                                       "for regression)")
    output_stride: int = Field(16, ge=4, le=32, description="stride of the backbone's last feature map (later "
                               "stride-2 convs become stride 1)")
    flip_pairs: str | None = Field(None, description="override the flip pairs inferred from the names, e.g. "
                                   "'left_eye:right_eye,left_mouth:right_mouth', or 'none'")
    normalize: str | None = Field(None, description="NME normaliser: two point names 'a,b' or 'bbox' (default: the "
                                  "two eye points, else bbox)")


class KeypointEvalOptions(Options):
    exclude: str | set[str] | None = Field(None, description="leave out the images listed in this text file (e.g. "
                                           "suspect labels from `check --suspects-out`); Python: a set of names too")
    flip_tta: bool = Field(False, description="test-time augmentation: average each photo's points with its mirror "
                           "image's (mirrored back, left/right pairs swapped)")


class KeypointCheckOptions(CheckOptionsBase):
    suspects_out: str | None = Field(None, description="write the images with suspect labels, one per line (review "
                                     "them, or pass the file to `train --exclude`)")


class KeypointFilterOptions(Options):
    sprite: str = Field("glasses", description="built-in sprite (glasses, mustache, crown) or an RGBA PNG")
    anchor: str = Field("left_eye,right_eye", description="the two keypoints the sprite's anchors follow")
    sprite_anchors: str | None = Field(None, description="anchor positions on a PNG sprite, X1,Y1,X2,Y2 in its "
                                       "pixels (default: 30%% and 70%% of its width at mid-height)")
    smoothing: float = Field(1.0, gt=0, description="One Euro min cutoff in Hz (lower = steadier, more lag)")
    min_score: float = Field(0.2, ge=0, le=1, description="hide the sprite when an anchor's score is lower")
    draw_points: bool = Field(False, description="also draw every predicted point")


def resolve_normalize(value: str | None) -> list[str] | str | None:
    if value is None:
        return None
    v = value.strip()
    return "bbox" if v == "bbox" else [s.strip() for s in v.split(",")]


def exclude_set(value: str | set[str] | None) -> set[str]:
    return set(value) if isinstance(value, set | list | tuple) else read_exclude(value)
