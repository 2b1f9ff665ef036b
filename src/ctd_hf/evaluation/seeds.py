"""A method decoded with several prefixes, one per tuning seed: the label ``name#k`` is seed ``k``'s run of method
``name``. Reports and statistics take the seeds of one name as one method: its scores are the seeds' mean per
instance, its intervals those of the two-level bootstrap (:mod:`~ctd_hf.evaluation.statistics`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

SEED_MARK = "#"


def seed_label(name: str, index: int) -> str:
    """The label of seed ``index``'s run of method ``name``."""
    return f"{name}{SEED_MARK}{index}"


def seed_labels(name: str, count: int) -> list[str]:
    """The labels of method ``name`` decoded with ``count`` prefixes: ``name`` itself for one, else one per seed."""
    return [name] if count == 1 else [seed_label(name, index) for index in range(count)]


def replicate_groups(labels: Iterable[str]) -> dict[str, list[str]]:
    """Method name -> the labels of its seeds, for the labels that are seed runs (``name#k``)."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        name, mark, _ = label.rpartition(SEED_MARK)
        if mark:
            groups.setdefault(name, []).append(label)
    return groups


def seed_means(
    scores: Mapping[str, Mapping[str, list[float]]], replicates: Mapping[str, list[str]]
) -> dict[str, dict[str, list[float]]]:
    """``scores`` (label -> metric -> per-instance values) with each method's seeds replaced, where its first seed
    was, by their mean per instance (whose every mean over instances is the mean over seeds of the seeds' means)."""
    owner = {label: name for name, labels in replicates.items() for label in labels}
    merged: dict[str, dict[str, list[float]]] = {}
    for label, values in scores.items():
        name = owner.get(label)
        if name is None:
            merged[label] = dict(values)
        elif name not in merged:
            merged[name] = {metric: np.mean([scores[seed][metric] for seed in replicates[name]], axis=0).tolist()
                            for metric in values}
    return merged
