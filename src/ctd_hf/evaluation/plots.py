"""PNG charts for reports, drawn with matplotlib's object API (no pyplot, so no global backend is chosen)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure(width: float, height: float, columns: int = 1):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots(1, columns, squeeze=False)[0]


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
    figure.tight_layout()
    figure.savefig(path, dpi=110)


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
    figure.tight_layout()
    figure.savefig(path, dpi=110)
