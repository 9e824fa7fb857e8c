"""Evaluate a classifier: metrics dict, console table, plots and a self-contained HTML report (torch-free)."""

from __future__ import annotations

from .metrics import classification_metrics, positive_index, predictions, worst_mistakes
from .report import render_table, write_plots, write_report

__all__ = ["classification_metrics", "positive_index", "predictions", "worst_mistakes",
           "render_table", "write_plots", "write_report"]
