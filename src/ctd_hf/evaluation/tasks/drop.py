"""DROP: discrete reasoning over paragraphs; exact match and token F1 as the official script computes them."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..scoring import load_metric
from ...resources import resource_path
from . import ScoreContext, Task, metric_table, read_json, register_task


@dataclass(kw_only=True)
class DROPOptions:
    """Where the DROP questions come from and how many run."""

    path: str = field(default=str(resource_path("drop", "drop_dev.jsonl.gz")),
                      metadata={"help": "JSONL (gzip allowed) of {id, passage, question, answers}."})
    limit: int | None = field(default=500, metadata={"help": "The first N questions.", "selects": True})


def load_drop(options: DROPOptions) -> list[dict]:
    """DROP items; every listed answer is acceptable."""
    records = read_json(options.path)[: options.limit]
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


def score_drop(items: list[dict], predictions: dict[str, list[str]], context: ScoreContext) -> dict:
    """Exact match and F1 per method."""
    metric = load_metric("drop")
    references = [i["references"] for i in items]
    return {"methods": {name: metric.compute(predictions=answers, references=references)
                        for name, answers in predictions.items()}, "instances": len(items)}


TASK = register_task(Task(
    name="drop",
    options=DROPOptions,
    load=load_drop,
    score=score_drop,
    markdown=lambda result: metric_table("drop", result, ("exact_match", "f1")),
    max_new_tokens=32,
    truncate_input=True,
))
