"""Load the evaluation metrics shipped in :mod:`ctd_hf.evaluation.metrics` (``superni``, ``drop``) offline, by path.

``evaluate.load("rouge")`` needs the Hub; these modules are plain scripts inside the package, so loading them
touches no network (``evaluate`` only copies the script into its module cache).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import evaluate


def metric_path(name: str) -> str:
    """The folder of the shipped metric ``name`` (holding ``name.py``), as ``evaluate.load`` expects."""
    root = files("ctd_hf.evaluation.metrics")
    if not (root / name / f"{name}.py").is_file():
        shipped = sorted(p.name for p in root.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"unknown metric {name!r}; shipped metrics: {shipped}")
    return str(root / name)


def load_metric(name: str, **kwargs: Any) -> evaluate.EvaluationModule:
    """``evaluate.load`` of a shipped metric; ``kwargs`` (e.g. ``keep_in_memory``) go to ``evaluate.load``."""
    return evaluate.load(metric_path(name), **kwargs)
