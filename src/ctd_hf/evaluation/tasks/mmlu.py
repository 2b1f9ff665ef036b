"""MMLU: four-way multiple choice, answered by the letter with the highest processed first-step score."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...resources import resource_path
from ...settings import check_settings, positive_int, setting
from . import (ScoreContext, Task, check_fields, mean_scores, metric_table, positions_by, read_rows,
               register_task)

LETTERS = "ABCD"


def _shot_count(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 5:
        raise ValueError(f"must be 0 to 5 (MMLU has 5 dev examples per subject), got {value!r}.")
    return value


@dataclass(kw_only=True)
class MMLUOptions:
    """Where the MMLU questions come from, how many per subject, and how many dev examples precede each."""

    path: str = setting(str(resource_path("mmlu", "mmlu.jsonl.gz")), help=(
        "JSONL (gzip allowed) of {subject, split, question, choices, answer}, a save_to_disk folder (test and dev "
        "splits), or a dataset name in the Hub's cais/mmlu layout (config `all`)."))
    shots: int = setting(0, check=_shot_count, help="Dev examples per subject before each question (0 to 5).")
    limit: int | None = setting(None, check=positive_int, selects=True, help="Test questions per subject.")

    def __post_init__(self) -> None:
        check_settings(self)


def _records(path: str, shots: int) -> list[dict]:
    """Test (and, for shots, dev) records in the shipped layout, from a file or from the Hub's layout, whose splits
    are separate and whose answer is an index."""
    check = check_fields("subject", "split", "question", "choices", "answer")
    if Path(path).expanduser().is_file():
        return read_rows(path, "test", check)
    records = []
    for split in ("test", "dev") if shots else ("test",):
        for row in read_rows(path, split):
            answer = LETTERS[row["answer"]] if isinstance(row["answer"], int) else row["answer"]
            records.append({**row, "split": split, "answer": answer})
    return records


def _question(record: dict) -> str:
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, record["choices"]))
    return f"{record['question'].strip()}{options}\nAnswer:"


def load_mmlu(options: MMLUOptions) -> list[dict]:
    """MMLU test items, ``shots`` examples per subject from the dev split before each question."""
    records = _records(options.path, options.shots)
    dev: dict[str, list[dict]] = {}
    for record in records:
        if record["split"] == "dev":
            dev.setdefault(record["subject"], []).append(record)
    items, seen = [], {}
    for index, record in enumerate(records):
        subject = record["subject"]
        if record["split"] != "test" or seen.get(subject, 0) == options.limit:
            continue
        seen[subject] = seen.get(subject, 0) + 1
        examples = "".join(f"{_question(example)} {example['answer']}\n\n"
                           for example in dev.get(subject, [])[: options.shots])
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}."
        items.append({
            "id": f"mmlu-{index}",
            "group": subject,
            "message": {"role": "user", "content": header, "input": examples + _question(record)},
            "references": [record["answer"]],
        })
    return items


def mmlu_instance_scores(items: list[dict], predictions: list[str]) -> dict[str, list[float]]:
    """Accuracy of each question: 100 when the chosen letter is the answer, else 0."""
    return {"accuracy": [100.0 * (answer == item["references"][0]) for item, answer in zip(items, predictions)]}


def score_mmlu(
    items: list[dict], predictions: dict[str, list[str]], context: ScoreContext,
    scores: dict[str, dict[str, list[float]]] | None = None,
) -> dict:
    """Accuracy per method, overall and per subject: means of the per-question scores."""
    scores = TASK.method_scores(items, predictions) if scores is None else scores
    subjects = positions_by(items, "group")
    return {"methods": {name: {**mean_scores(values),
                               "subjects": {s: mean_scores(values, positions)["accuracy"]
                                            for s, positions in subjects.items()}}
                        for name, values in scores.items()}, "instances": len(items)}


TASK = register_task(Task(
    name="mmlu",
    options=MMLUOptions,
    load=load_mmlu,
    score=score_mmlu,
    markdown=lambda result: metric_table("mmlu", result, ("accuracy",)),
    instance_scores=mmlu_instance_scores,
    primary_metric="accuracy",
    scoring="choice",
    choices=tuple(LETTERS),
))
