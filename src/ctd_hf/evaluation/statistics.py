"""Statistics a reviewer asks for: bootstrap intervals of mean scores, paired bootstrap tests between methods and a
sign test over groups (SuperNI tasks, MMLU subjects), from per-instance scores.

Definitions (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13 and 16; Koehn, "Statistical
Significance Tests for Machine Translation Evaluation", EMNLP 2004):

- A bootstrap resample draws ``n`` instance indices uniformly with replacement; ``resamples`` of them are drawn from
  ``numpy.random.default_rng(seed)`` in a fixed way that depends only on ``(seed, n, resamples)``, so every series
  of the same ``n`` instances is resampled with the same indices (method scores stay paired) and the same inputs
  give the same numbers.
- Interval: the percentile interval, the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the
  resampled means (numpy's default linear interpolation between order statistics).
- p-value of a paired difference ``d_i = a_i - b_i`` (Koehn's paired bootstrap, two-sided, add-one corrected): with
  ``D_1..D_B`` the resampled means of ``d``, ``p = min(1, 2 * min(1 + #{D_j <= 0}, 1 + #{D_j >= 0}) / (B + 1))``.
  It is the smallest two-sided level at which the percentile interval would exclude 0 (up to the add-one term),
  never below ``2 / (B + 1)``; it is not the shifted-null test of Berg-Kirkpatrick et al. (2012).
- Sign test: the exact two-sided binomial test of ``wins`` out of ``wins + losses`` against 1/2, ties dropped.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import binomtest

RESAMPLES = 10_000
CONFIDENCE = 0.95
# Group means closer than this (on the 0-100 scale) are a tie: their difference is floating-point noise.
TIE_TOLERANCE = 1e-9
_DRAWS_PER_CHUNK = 2**20  # instance indices drawn at once (8 MiB), whatever the number of series


def _instances(values: ArrayLike) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"expected a non-empty 1-D array of per-instance scores, got shape {array.shape}")
    return array


def _check(confidence: float, resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")


def _resampled_means(series: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The bootstrap distribution of each row's mean (``k x n`` -> ``k x resamples``), every row resampled with the
    same indices, drawn in chunks whose size depends only on ``n``."""
    n = series.shape[1]
    rng = np.random.default_rng(seed)
    rows = max(1, _DRAWS_PER_CHUNK // n)
    means = np.empty((series.shape[0], resamples))
    for start in range(0, resamples, rows):
        indices = rng.integers(0, n, size=(min(rows, resamples - start), n))
        for k, row in enumerate(series):
            means[k, start : start + len(indices)] = row[indices].mean(axis=1)
    return means


def _percentiles(distribution: np.ndarray, confidence: float) -> tuple[float, float]:
    low, high = np.quantile(distribution, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def _p_value(distribution: np.ndarray) -> float:
    below, above = 1 + np.count_nonzero(distribution <= 0), 1 + np.count_nonzero(distribution >= 0)
    return float(min(1.0, 2 * min(below, above) / (distribution.size + 1)))


def bootstrap_interval(
    values: ArrayLike, *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """The percentile-bootstrap interval ``(low, high)`` of the mean of ``values`` (one score per instance)."""
    _check(confidence, resamples)
    return _percentiles(_resampled_means(_instances(values)[None], resamples, seed)[0], confidence)


def paired_bootstrap(
    a: ArrayLike, b: ArrayLike, *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, float]:
    """Paired bootstrap of ``a - b`` over the same instances: ``difference`` = mean(a_i - b_i), its percentile
    interval ``low``/``high`` and the two-sided ``p_value`` defined in the module docstring."""
    _check(confidence, resamples)
    a, b = _instances(a), _instances(b)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same instances, got {a.size} and {b.size}")
    differences = a - b
    return _paired(differences, _resampled_means(differences[None], resamples, seed)[0], confidence)


def _paired(differences: np.ndarray, distribution: np.ndarray, confidence: float) -> dict[str, float]:
    low, high = _percentiles(distribution, confidence)
    return {"difference": float(differences.mean()), "low": low, "high": high, "p_value": _p_value(distribution)}


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: the binomial p-value of ``wins`` out of ``wins + losses`` at 1/2 (1.0 with no
    decided comparison)."""
    return 1.0 if wins + losses == 0 else float(binomtest(wins, wins + losses, 0.5).pvalue)


def group_wins(a: ArrayLike, b: ArrayLike, groups: Sequence[str]) -> tuple[int, int, int]:
    """``(wins, losses, ties)`` of ``a`` against ``b`` over groups, each group decided by its mean of ``a_i - b_i``
    (= the difference of the group means; within ``TIE_TOLERANCE`` of 0 is a tie)."""
    differences = _instances(a) - _instances(b)
    labels = np.asarray(groups)
    if labels.shape != differences.shape:
        raise ValueError(f"one group per instance: got {labels.size} groups for {differences.size} instances")
    means = np.array([differences[labels == group].mean() for group in np.unique(labels)])
    wins, losses = int(np.sum(means > TIE_TOLERANCE)), int(np.sum(means < -TIE_TOLERANCE))
    return wins, losses, len(means) - wins - losses


def task_statistics(
    scores: Mapping[str, Mapping[str, ArrayLike]],
    groups: Sequence[str],
    primary: str,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """The statistics of one task from per-instance scores (method -> metric -> one value per instance, the same
    instances in the same order for every method) and each instance's group.

    Per method and metric, the mean and its bootstrap interval; per pair (each later method ``a`` minus each earlier
    ``b``, so a baseline listed first is subtracted), the paired bootstrap of every metric and, on ``primary``, the
    group wins, losses and ties with the sign test (``None`` with fewer than 2 groups). All series share the same
    resampled indices, so the numbers equal those of :func:`bootstrap_interval` and :func:`paired_bootstrap`.
    """
    _check(confidence, resamples)
    methods = list(scores)
    metrics = list(scores[methods[0]])
    if primary not in metrics:
        raise ValueError(f"primary metric {primary!r} is not among the scores' metrics {metrics}")
    values = {(m, k): _instances(scores[m][k]) for m in methods for k in metrics}
    pairs = [(a, b) for b, a in itertools.combinations(methods, 2)]
    differences = {(a, b, k): values[a, k] - values[b, k] for a, b in pairs for k in metrics}
    series = list(values.values()) + list(differences.values())
    if len({s.size for s in series}) != 1:
        raise ValueError("every method needs one score per instance on every metric")
    distributions = dict(zip([*values, *differences], _resampled_means(np.stack(series), resamples, seed)))
    group_count = len(set(groups))
    result: dict = {"primary": primary, "instances": series[0].size, "groups": group_count, "confidence": confidence,
                    "resamples": resamples, "seed": seed, "methods": {}, "pairs": {}}
    for m in methods:
        result["methods"][m] = {}
        for k in metrics:
            low, high = _percentiles(distributions[m, k], confidence)
            result["methods"][m][k] = {"mean": float(values[m, k].mean()), "low": low, "high": high}
    for a, b in pairs:
        wins, losses, ties = group_wins(values[a, primary], values[b, primary], groups)
        result["pairs"][f"{a} - {b}"] = {
            "a": a, "b": b,
            "differences": {k: _paired(differences[a, b, k], distributions[a, b, k], confidence) for k in metrics},
            "by_group": {"metric": primary, "wins": wins, "losses": losses, "ties": ties,
                         "sign_test_p": sign_test(wins, losses) if group_count >= 2 else None},
        }
    return result
