"""AlpacaEval-style open generation: answers written in the format the ``alpaca_eval`` tool reads (its judge needs
an API and stays the user's step), with length statistics."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ...records import write_json
from ...resources import resource_path
from ...settings import check_settings, positive_int, setting
from . import ScoreContext, Task, check_fields, metric_table, read_rows, register_task


@dataclass(kw_only=True)
class AlpacaEvalOptions:
    """Where the AlpacaEval instructions come from and how many run."""

    path: str = setting(str(resource_path("alpaca_eval", "alpaca_eval.json.gz")), help=(
        "AlpacaEval JSON (gzip allowed) of {instruction, dataset, ...}, a save_to_disk folder, or a dataset name in "
        "the Hub's tatsu-lab/alpaca_eval layout."))
    split: str = setting("eval", help="Split of a dataset folder or name.")
    limit: int | None = setting(None, check=positive_int, selects=True, help="The first N instructions.")

    def __post_init__(self) -> None:
        check_settings(self)


def load_alpacaeval(options: AlpacaEvalOptions) -> list[dict]:
    """AlpacaEval instructions."""
    records = read_rows(options.path, options.split, check_fields("instruction"))[: options.limit]
    return [{
        "id": str(index),
        "group": record.get("dataset", "alpacaeval"),
        "message": {"role": "user", "content": record["instruction"], "input": ""},
        "references": [],
    } for index, record in enumerate(records)]


def score_alpacaeval(items: list[dict], predictions: dict[str, list[str]], context: ScoreContext) -> dict:
    """Write ``alpaca_eval_<method>.json`` per method; report answer lengths.

    No per-instance scores: the win rate is alpaca_eval's, judged outside this package (its length-controlled win
    rate comes from a regression fitted over all answers, not a plain mean); of the lengths only ``mean_words`` is a
    mean (``median_words`` a median, ``empty`` a count).
    """
    result = {}
    for name, answers in predictions.items():
        outputs = [{"instruction": i["message"]["content"], "output": answer,
                    "generator": f"{context.model_name}-{name}", "dataset": i["group"]}
                   for i, answer in zip(items, answers)]
        path = context.output_dir / f"alpaca_eval_{name}.json"
        write_json(path, outputs)
        words = [len(o["output"].split()) for o in outputs]
        result[name] = {"file": path.name, "mean_words": statistics.mean(words),
                        "median_words": statistics.median(words), "empty": sum(w == 0 for w in words)}
    return {"methods": result, "instances": len(items)}


TASK = register_task(Task(
    name="alpacaeval",
    options=AlpacaEvalOptions,
    load=load_alpacaeval,
    score=score_alpacaeval,
    markdown=lambda result: metric_table("alpacaeval", result, ("mean_words", "median_words", "empty")),
    max_new_tokens=512,
))
