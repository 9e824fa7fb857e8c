"""Evaluation, torch-free: metrics, calibration, shift comparisons, plots and self-contained HTML reports, for
classifiers and keypoint models (each task's ``evaluate`` picks what it needs)."""

from __future__ import annotations

from .metrics import classification_metrics, positive_index, predictions, worst_mistakes
from .report import render_table, write_plots, write_report

__all__ = ["classification_metrics", "positive_index", "predictions", "worst_mistakes",
           "render_table", "write_plots", "write_report"]
