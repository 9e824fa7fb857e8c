"""Style transfer, the library half.

* :func:`stylize` -- Gatys et al. optimisation of one image (minutes on a CPU at 512 px, no training);
* :mod:`.perceptual` -- the loss both methods share: frozen extractors (lite0 with SWAG's softmax
  transformation, VGG-16/19), Gram matrices, content/style/TV terms, :class:`PerceptualLoss`;
* the feed-forward stylizers (``johnson``, ``stylenet_mobile``) are models: :mod:`pocketvision.models.stylenet`.
"""

from __future__ import annotations

from .gatys import StylizeResult, result_json, save_image, stylize
from .perceptual import (
                         DEFAULTS,
                         EXTRACTORS,
                         FeatureExtractor,
                         PerceptualLoss,
                         build_extractor,
                         content_loss,
                         gram_matrix,
                         layer_names,
                         min_side,
                         softmax_transform,
                         style_loss,
                         tv_loss,
)

__all__ = [
                         "DEFAULTS",
                         "EXTRACTORS",
                         "FeatureExtractor",
                         "PerceptualLoss",
                         "StylizeResult",
                         "build_extractor",
                         "content_loss",
                         "gram_matrix",
                         "layer_names",
                         "min_side",
                         "result_json",
                         "save_image",
                         "softmax_transform",
                         "style_loss",
                         "stylize",
                         "tv_loss",
]
