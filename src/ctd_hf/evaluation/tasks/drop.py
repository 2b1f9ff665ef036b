"""DROP: discrete reasoning over paragraphs; exact match and token F1 as the official script computes them."""

from __future__ import annotations

from dataclasses import dataclass

from ..scoring import load_metric
from ...resources import resource_path
from ...settings import check_settings, positive_int, setting
from . import ScoreContext, Task, check_fields, mean_scores, metric_table, read_rows, register_task


@dataclass(kw_only=True)
class DROPOptions:
    """Where the DROP questions come from and how many run."""

    path: str = setting(str(resource_path("drop", "drop_dev.jsonl.gz")), help=(
        "JSONL (gzip allowed) of {id, passage, question, answers}, a save_to_disk folder, or a dataset name in the "
        "Hub's ucinlp/drop layout."))
    split: str = setting("validation", help="Split of a dataset folder or name.")
    limit: int | None = setting(500, check=positive_int, selects=True, help="The first N questions.")

    def __post_init__(self) -> None:
        check_settings(self)


def _normalised(record: dict) -> dict:
    """A record of the shipped layout, from itself or from the Hub's (``query_id``, ``answers_spans.spans``)."""
    if "answers_spans" in record:
        return {"id": record["query_id"], "passage": record["passage"], "question": record["question"],
                "answers": record["answers_spans"]["spans"]}
    return record


def load_drop(options: DROPOptions) -> list[dict]:
    """DROP items; every listed answer is acceptable."""
    rows = read_rows(options.path, options.split, lambda r: check_fields("id", "passage", "question", "answers")(
        _normalised(r) if isinstance(r, dict) else r))
    records = [_normalised(record) for record in rows[: options.limit]]
    return [{
        "id": str(record["id"]),
        "group": "drop",
        "message": {
            "role": "user",
            "content": "Answer the question about the passage with a number, a date or a short span from it.",
            "input": f"Passage: {record['passage']}\nQuestion: {record['question']}",
        },
        "references": list(record["answers"]),
    } for record in records]


def score_drop(
    items: list[dict], predictions: dict[str, list[str]], context: ScoreContext,
    scores: dict[str, dict[str, list[float]]] | None = None,
) -> dict:
    """Exact match and F1 per method: the means of the per-question scores, as the official script averages them."""
    scores = TASK.method_scores(items, predictions) if scores is None else scores
    return {"methods": {name: mean_scores(values) for name, values in scores.items()}, "instances": len(items)}


def drop_instance_scores(items: list[dict], predictions: list[str]) -> dict[str, list[float]]:
    """Exact match and F1 of each question (x100), from the shipped DROP metric script."""
    return load_metric("drop").compute(predictions=predictions, references=[i["references"] for i in items],
                                       per_instance=True)


TASK = register_task(Task(
    name="drop",
    options=DROPOptions,
    load=load_drop,
    score=score_drop,
    markdown=lambda result: metric_table("drop", result, ("exact_match", "f1")),
    instance_scores=drop_instance_scores,
    primary_metric="f1",
    max_new_tokens=32,
    truncate_input=True,
))
