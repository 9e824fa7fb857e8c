"""Evolutionary architecture search under a measured device budget (`pocketvision search`).

``space.py`` the networks and their mutations, ``evolution.py`` the population rule, ``latency.py`` measured and
predicted latency, ``run.py`` the driver (Optuna trials, local or Ray workers, resume, outputs).
"""

from .run import parse_budget, search

__all__ = ["parse_budget", "search"]
