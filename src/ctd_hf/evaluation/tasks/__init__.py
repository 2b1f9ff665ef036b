"""Benchmarks as declared tasks: each module of this package declares one :class:`Task`, and adding a benchmark means
adding one module here (or calling :func:`register_task` with your own).

A task says where its items come from (``load`` with the task's own options), how they are answered (generated text
with a new-token budget, or the best of a few choices from the first step's scores), whether the task input is cut
to the source budget, how predictions are scored and how the scores are reported.

An item is ``{"id", "group", "message", "references", ...}``: ``message`` is what the model is asked (a user message
for :func:`ctd_hf.format_prompt`, with the instruction in ``content`` and the task input in ``input`` so that
Instructive Decoding can damage one and keep the other); ``group`` is the SuperNI task or the MMLU subject.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...sources import read_source
from ..seeds import seed_means

SCORING = ("generation", "choice")


@dataclass(frozen=True, kw_only=True)
class ScoreContext:
    """What a scorer may need beyond the predictions: where the report goes and which model answered."""

    output_dir: Path
    model_name: str


@dataclass(frozen=True, kw_only=True)
class Task:
    """A benchmark, declared.

    Attributes:
        name: the name used on the command line and in reports.
        options: a dataclass of the task's own settings (data paths, limits), each field with ``help`` metadata;
            fields marked ``selects=True`` only choose which items run, and ``answers=False`` only how they are
            scored, so a resumed run may change them.
        load: items from an instance of ``options``.
        scoring: ``"generation"`` (answers of up to ``max_new_tokens`` tokens) or ``"choice"`` (the best of
            ``choices`` by the processed scores of the first generated token).
        max_new_tokens: the default new-token budget of generated answers.
        truncate_input: cut each item's task input so that instruction and input fit the source budget.
        choices: the answer strings of choice scoring.
        score: ``(items, {method: predictions}, context) -> result`` with ``result["methods"][method]`` the scores;
            a task with ``instance_scores`` also takes them as ``scores=`` (see :meth:`evaluate`), else computes them
            (:meth:`method_scores`), and reports their means (:func:`mean_scores`).
        markdown: the report section of a result, as Markdown lines.
        plot: writes the task's PNG charts of a result into a folder (optional).
        instance_scores: ``(items, one method's predictions) -> {metric: one value per item}``: the one computation
            of the task's metrics: its reported scores are their means, the report's bootstrap statistics resample
            them (optional: none for tasks without references).
        primary_metric: the metric of ``instance_scores`` that decides per-group wins.
    """

    name: str
    options: type
    load: Callable[[Any], list[dict]]
    score: Callable[..., dict]
    markdown: Callable[[dict], list[str]]
    scoring: str = "generation"
    max_new_tokens: int = 128
    truncate_input: bool = False
    choices: tuple[str, ...] = ()
    plot: Callable[[dict, Path], None] | None = None
    instance_scores: Callable[[list[dict], list[str]], dict[str, list[float]]] | None = None
    primary_metric: str | None = None

    def __post_init__(self) -> None:
        if self.scoring not in SCORING:
            raise ValueError(f"Task {self.name}: `scoring` is one of {SCORING}, got {self.scoring!r}.")
        if self.scoring == "choice" and not self.choices:
            raise ValueError(f"Task {self.name}: choice scoring needs `choices`.")
        if not dataclasses.is_dataclass(self.options):
            raise TypeError(f"Task {self.name}: `options` must be a dataclass type.")
        if (self.instance_scores is None) != (self.primary_metric is None):
            raise ValueError(f"Task {self.name}: `instance_scores` and `primary_metric` go together.")

    def make_options(self, values: Any = None) -> Any:
        """The task's options from ``None`` (defaults), a dict of fields or an instance."""
        if values is None:
            return self.options()
        if isinstance(values, self.options):
            return values
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(self.options)})
        if unknown:
            known = [f.name for f in dataclasses.fields(self.options)]
            raise ValueError(f"Unknown {self.name} options {unknown}; its options are {known}.")
        return self.options(**values)

    def method_scores(self, items: list[dict], predictions: dict[str, list[str]]) -> dict[str, dict[str, list[float]]]:
        """Each method's per-instance scores: ``instance_scores`` run once per method."""
        return {method: self.instance_scores(items, answers) for method, answers in predictions.items()}

    def evaluate(
        self, items: list[dict], predictions: dict[str, list[str]], context: ScoreContext,
        replicates: dict[str, list[str]] | None = None,
    ) -> tuple[dict, dict[str, dict[str, list[float]]] | None]:
        """The task's result and each label's per-instance scores (None without ``instance_scores``), each metric
        computed once per label. ``replicates`` (method -> the labels of its seeds, :mod:`~ctd_hf.evaluation.seeds`)
        are scored as one method each, from their mean per instance (a task without per-instance scores lists its
        seeds apart)."""
        if self.instance_scores is None:
            return self.score(items, predictions, context), None
        scores = self.method_scores(items, predictions)
        return self.score(items, predictions, context, scores=seed_means(scores, replicates or {})), scores


_REGISTRY: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry and return it. A name already taken by another task is refused (as lm-eval's
    registry refuses it): one name, one task."""
    if _REGISTRY.get(task.name, task) is not task:
        raise ValueError(f"A task named {task.name!r} is already registered: give the new task another name.")
    _REGISTRY[task.name] = task
    return task


def _load_builtin_tasks() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def task_names() -> list[str]:
    """The registered tasks' names."""
    _load_builtin_tasks()
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    """The registered task called ``name``."""
    _load_builtin_tasks()
    if name not in _REGISTRY:
        raise ValueError(f"Unknown benchmark {name!r}; choose from {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]


def read_rows(source: str, split: str, check: Callable[[Any], None] | None = None) -> list[dict]:
    """A task's raw records from its data source (:func:`ctd_hf.sources.read_source`), each validated by
    ``check``, which names the file and line (or the row) of a bad one."""
    records = read_source(source, split, check)
    if isinstance(records, list):  # a file, checked as it was read
        return records
    rows = records.to_list()
    for number, row in enumerate(rows if check else (), start=1):
        try:
            check(row)
        except ValueError as error:
            raise ValueError(f"{source}, row {number}: {error}") from None
    return rows


def check_fields(*names: str) -> Callable[[Any], None]:
    """A record check for :func:`read_rows`: the record is an object holding ``names``."""

    def check(record: Any) -> None:
        if not isinstance(record, dict):
            raise ValueError(f"a record is a JSON object, got {type(record).__name__}.")
        missing = [name for name in names if name not in record]
        if missing:
            raise ValueError(f"the record has {sorted(record)}, missing {missing}.")

    return check


def metric_table(title: str, result: dict, keys: tuple[str, ...]) -> list[str]:
    """A Markdown table with one row per method and one column per key of ``result["methods"][method]``."""
    lines = [f"## {title} ({result['instances']} items)", "", "| Method | " + " | ".join(keys) + " |",
             "|" + "---|" * (len(keys) + 1)]
    for name, scores in result["methods"].items():
        lines.append(f"| {name} | " + " | ".join(f"{scores[k]:.2f}" if isinstance(scores[k], float) else str(scores[k])
                                                 for k in keys) + " |")
    return lines + [""]


def mean_scores(scores: dict[str, list[float]], positions: list[int] | None = None) -> dict[str, float]:
    """Each metric's mean over the items at ``positions`` (all by default): every aggregate a task reports of its
    per-instance scores (overall, per category, per task or subject) is this mean."""
    return {metric: float(np.mean(values if positions is None else [values[p] for p in positions]))
            for metric, values in scores.items()}


def positions_by(items: list[dict], key: str) -> dict[str, list[int]]:
    """The items' positions per value of ``item[key]`` (e.g. SuperNI's category or task), the values sorted."""
    groups: dict[str, list[int]] = {}
    for position, item in enumerate(items):
        groups.setdefault(item[key], []).append(position)
    return dict(sorted(groups.items()))
