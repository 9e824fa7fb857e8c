"""Model families behind one registry: ``build_model({"name": "deepdog", "args": {"num_classes": 2}})``.

Every model exposes ``num_features``, ``forward_features``, ``forward_head``, ``reset_classifier``,
``head_parameters`` and ``backbone_parameters``; ``model.spec`` records how to rebuild it.
"""

from __future__ import annotations

# Importing the family modules registers their architectures.
from . import deepdog, efficientnet_lite, mobilenet, searched, stylenet, vgg  # noqa: F401
from .profile import count_macs, count_params, model_info, weight_bytes
from .registry import build_model, check_input_size, list_models, model_entry, register_model

__all__ = ["build_model", "list_models", "model_entry", "check_input_size", "register_model", "model_info",
           "count_params", "count_macs", "weight_bytes"]
