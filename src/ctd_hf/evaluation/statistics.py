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
- Two-level bootstrap, for a method decoded with several prefixes (one per tuning seed, the same instances each):
  every resample draws the instances as above and, from a stream of its own (so that the instance draws, and every
  one-level number, stay as they were), ``s`` of the ``s`` seeds with replacement; the resampled value is the mean
  over the drawn seeds of each seed's mean over the drawn instances. Differences stay paired on instances. With
  identical seeds it is the one-level bootstrap; the more the seeds disagree, the wider it is.
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


def _seed_resampled(means: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """The second level of the two-level bootstrap: each seed's resampled means (``s x resamples``) -> the mean over
    ``s`` seeds drawn with replacement, per resample (the seeds drawn from ``default_rng([seed, stream])``)."""
    count, resamples = means.shape
    if count == 1:
        return means[0]
    draws = np.random.default_rng([seed, stream]).integers(0, count, size=(resamples, count))
    return means[draws, np.arange(resamples)[:, None]].mean(axis=1)


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
    interval ``low``/``high`` and the two-sided ``p_value`` defined in the module docstring. ``a`` may be
    ``seeds x instances`` (a method decoded with one prefix per tuning seed): the two-level bootstrap."""
    _check(confidence, resamples)
    rows, b = _seeds(a), _instances(b)
    if rows.shape[1] != b.size:
        raise ValueError(f"paired scores need the same instances, got {rows.shape[1]} and {b.size}")
    differences = rows - b
    distribution = _seed_resampled(_resampled_means(differences, resamples, seed), seed, 1)
    return _paired(rows.mean(axis=0) - b, distribution, confidence)


def _seeds(values: ArrayLike) -> np.ndarray:
    """Per-instance scores as ``seeds x instances`` (one row for a method decoded once)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        return _instances(array)[None]
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"expected per-instance scores of one or several seeds, got shape {array.shape}")
    return array


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
    replicates: Mapping[str, Sequence[str]] | None = None,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """The statistics of one task from per-instance scores (label -> metric -> one value per instance, the same
    instances in the same order for every label) and each instance's group.

    ``replicates`` maps a method decoded with several prefixes (one per tuning seed) to the labels of its seeds; such
    a method is one method here, its scores the seeds' mean per instance, its intervals and differences from the
    two-level bootstrap (module docstring), with each seed's mean, the between-seed standard deviation and, per pair,
    which source of variance dominates. Per method and metric, the mean and its bootstrap interval; per pair (each
    later method ``a`` minus each earlier ``b``, so a baseline listed first is subtracted), the paired bootstrap of
    every metric and, on ``primary``, the group wins, losses and ties of the (seed-averaged) group means with the
    sign test (``None`` with fewer than 2 groups). Methods decoded once share the resampled indices of every series,
    so their numbers equal those of :func:`bootstrap_interval` and :func:`paired_bootstrap` whatever else is here.
    """
    _check(confidence, resamples)
    replicates = {name: list(labels) for name, labels in (replicates or {}).items()}
    seeds_of = {label: name for name, labels in replicates.items() for label in labels}
    methods = list(dict.fromkeys(seeds_of.get(label, label) for label in scores))
    metrics = list(scores[next(iter(scores))])
    if primary not in metrics:
        raise ValueError(f"primary metric {primary!r} is not among the scores' metrics {metrics}")
    rows = {(m, k): np.stack([_instances(scores[label][k]) for label in replicates.get(m, [m])])
            for m in methods for k in metrics}
    pairs = [(a, b) for b, a in itertools.combinations(methods, 2)]
    one = [key for key in rows if len(rows[key]) == 1]
    series = {key: rows[key][0] for key in one}  # methods decoded once: one-level, as always
    series.update({(a, b, k): rows[a, k][0] - rows[b, k][0] for a, b in pairs for k in metrics
                   if (a, k) in series and (b, k) in series})
    seeded = {key: rows[key] for key in rows if key not in series}
    seeded.update({(a, b, k): rows[a, k] - rows[b, k] for a, b in pairs for k in metrics
                   if ((a, k) in series) != ((b, k) in series)})  # one side with seeds: resample its seeds
    if len({row.size for key in rows for row in rows[key]}) != 1:
        raise ValueError("every method needs one score per instance on every metric")
    flat = [*series.values(), *(row for block in seeded.values() for row in block)]
    means = iter(_resampled_means(np.stack(flat), resamples, seed))
    distributions = {key: next(means) for key in series}
    streams = {m: 1 + index for index, m in enumerate(replicates)}  # one seed stream per method with seeds
    for key, block in seeded.items():
        owner = key[0] if key[0] in replicates else key[1]  # the method whose seeds a difference row resamples
        distributions[key] = _seed_resampled(np.stack([next(means) for _ in block]), seed, streams[owner])
    for a, b in pairs:  # two methods with seeds: their seeds are resampled apart, their instances together
        for k in metrics:
            if (a, b, k) not in distributions:
                distributions[a, b, k] = distributions[a, k] - distributions[b, k]
    group_count = len(set(groups))
    result: dict = {"primary": primary, "instances": rows[methods[0], primary].shape[1], "groups": group_count,
                    "confidence": confidence, "resamples": resamples, "seed": seed, "replicates": replicates,
                    "methods": {}, "pairs": {}}
    for m in methods:
        result["methods"][m] = {}
        for k in metrics:
            low, high = _percentiles(distributions[m, k], confidence)
            result["methods"][m][k] = {"mean": float(rows[m, k].mean()), "low": low, "high": high}
            if m in replicates:
                seed_means = rows[m, k].mean(axis=1)
                result["methods"][m][k].update(seeds=[float(v) for v in seed_means], seed_sd=float(
                    seed_means.std(ddof=1)) if len(seed_means) > 1 else None)
    for a, b in pairs:
        averaged = {k: rows[a, k].mean(axis=0) - rows[b, k].mean(axis=0) for k in metrics}
        wins, losses, ties = group_wins(averaged[primary], np.zeros_like(averaged[primary]), groups)
        pair = {"a": a, "b": b,
                "differences": {k: _paired(averaged[k], distributions[a, b, k], confidence) for k in metrics},
                "by_group": {"metric": primary, "wins": wins, "losses": losses, "ties": ties,
                             "sign_test_p": sign_test(wins, losses) if group_count >= 2 else None}}
        if a in replicates or b in replicates:
            pair["variance"] = _variance_sources(rows[a, primary], rows[b, primary], primary)
        result["pairs"][f"{a} - {b}"] = pair
    return result


def _variance_sources(a: np.ndarray, b: np.ndarray, metric: str) -> dict:
    """Where the uncertainty of the mean difference ``a - b`` (each ``seeds x instances``) comes from: the standard
    error from the prefixes (between-seed variance of each side's seed means over its seed count) and from the
    instances (of the seed-averaged per-instance differences), and which dominates."""
    seed_variance = sum(side.mean(axis=1).var(ddof=1) / len(side) for side in (a, b) if len(side) > 1)
    differences = a.mean(axis=0) - b.mean(axis=0)
    seed_se = float(np.sqrt(seed_variance))
    instance_se = float(differences.std(ddof=1) / np.sqrt(differences.size)) if differences.size > 1 else 0.0
    return {"metric": metric, "seeds": max(len(a), len(b)), "seed_se": seed_se, "instance_se": instance_se,
            "dominant": "seeds" if seed_se > instance_se else "instances"}
