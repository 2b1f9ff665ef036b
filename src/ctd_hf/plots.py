"""PNG charts for reports, drawn with matplotlib's object API (no pyplot, so no global backend is chosen)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def _figure(width: float, height: float, columns: int = 1, rows: int = 1):
    """A figure and its axes, flattened row by row."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots(rows, columns, squeeze=False).ravel()


def _save(figure: Any, path: str | Path) -> None:
    """Write the PNG atomically (a temporary name, then a rename), like every file the package writes."""
    figure.tight_layout()
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    figure.savefig(partial, dpi=110, format="png")
    os.replace(partial, path)


def grouped_bars(path: str | Path, labels: list[str], series: dict[str, list[float]], ylabel: str, title: str) -> None:
    """One group of bars per label, one bar per series (e.g. per method)."""
    width = 0.8 / max(len(series), 1)
    figure, (axis,) = _figure(min(16, 2 + 0.8 * len(labels)), 4)
    for offset, (name, values) in enumerate(series.items()):
        axis.bar([x + offset * width for x in range(len(labels))], values, width, label=name)
    axis.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))], labels)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend()
    _save(figure, path)


def token_change_histograms(records_by_method: dict[str, list[dict]], path: str | Path, bins: np.ndarray) -> None:
    """Per method, histograms (as densities) of the original max probability of changed and unchanged tokens."""
    methods = [m for m, records in records_by_method.items() if any(r.get("original") for r in records)]
    figure, axes = _figure(5 * max(len(methods), 1), 3.5, max(len(methods), 1))
    for axis, method in zip(axes, methods):
        records = records_by_method[method]
        max_prob = np.array([p for r in records for p in r["max_prob"]])
        changed = np.array([o != c for r in records for o, c in zip(r["original"], r["chosen"])])
        for mask, label in ((~changed, "unchanged"), (changed, "changed")):
            if mask.any():
                axis.hist(max_prob[mask], bins=bins, density=True, alpha=0.6, label=f"{label} ({int(mask.sum())})")
        axis.set_title(f"{method}: {changed.mean():.1%} of tokens changed")
        axis.set_xlabel("original model's max probability")
        axis.set_ylabel("density")
        axis.legend()
    _save(figure, path)


def loss_curves(log_history: list[dict], path: str | Path) -> None:
    """Training curves from ``Trainer.state.log_history``: the contrastive loss and the original model's loss on the
    same batches (the adapter is learning where the first falls below the second), and their gap."""
    logged = [entry for entry in log_history if "loss" in entry and "original_loss" in entry]
    steps = [entry["step"] for entry in logged]
    figure, (losses, gap) = _figure(11, 3.5, 2)
    losses.plot(steps, [entry["loss"] for entry in logged], label="contrastive loss")
    losses.plot(steps, [entry["original_loss"] for entry in logged], label="original model's loss")
    losses.set_xlabel("step")
    losses.set_ylabel("loss (nats/token)")
    losses.legend()
    gap.plot(steps, [entry["loss_gap"] for entry in logged], color="tab:green")
    gap.axhline(0.0, color="grey", linewidth=0.8)
    gap.set_xlabel("step")
    gap.set_ylabel("contrastive - original")
    gap.set_title("below 0: the adapter is learning")
    _save(figure, path)


def knob_panels(path: str | Path, rows: list[dict], knobs: list[str], baselines: dict[str, float], ylabel: str) -> None:
    """One panel per knob: each row's ``score`` against its value of the knob (jittered when categorical), with the
    baselines as horizontal lines, so a knob that matters shows as a trend."""
    columns = min(4, len(knobs))
    rows_of_panels = math.ceil(len(knobs) / columns)
    figure, grid = _figure(4 * columns, 3.2 * rows_of_panels, columns, rows_of_panels)
    for axis, knob in zip(grid, knobs):
        values = sorted({str(row[knob]) for row in rows}, key=lambda v: (len(v), v))
        positions = {value: index for index, value in enumerate(values)}
        axis.scatter([positions[str(row[knob])] for row in rows], [row["score"] for row in rows], alpha=0.7)
        for label, score in baselines.items():
            axis.axhline(score, linewidth=0.8, linestyle="--", color="grey")
            axis.annotate(label, (0.99, score), xycoords=("axes fraction", "data"), fontsize=7, color="grey",
                          va="bottom", ha="right")
        axis.set_xticks(range(len(values)), values, rotation=30, fontsize=8)
        axis.set_title(knob)
        axis.set_ylabel(ylabel, fontsize=8)
    for axis in grid[len(knobs):]:
        axis.set_visible(False)
    _save(figure, path)
