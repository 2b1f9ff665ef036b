"""MMLU: four-way multiple choice, answered by the letter with the highest processed first-step score."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...resources import resource_path
from . import ScoreContext, Task, check_fields, metric_table, positive_limit, read_rows, register_task

LETTERS = "ABCD"


@dataclass(kw_only=True)
class MMLUOptions:
    """Where the MMLU questions come from, how many per subject, and how many dev examples precede each."""

    path: str = field(default=str(resource_path("mmlu", "mmlu.jsonl.gz")), metadata={
        "help": "JSONL (gzip allowed) of {subject, split, question, choices, answer}, a save_to_disk folder (test and "
                "dev splits), or a dataset name in the Hub's cais/mmlu layout (config `all`)."})
    shots: int = field(default=0, metadata={"help": "Dev examples per subject before each question (0 to 5)."})
    limit: int | None = field(default=None, metadata={"help": "Test questions per subject.", "selects": True})

    def __post_init__(self) -> None:
        if not 0 <= self.shots <= 5:
            raise ValueError(f"MMLU has 5 dev examples per subject: shots must be 0 to 5, got {self.shots}.")
        positive_limit("mmlu", "limit", self.limit)


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


def score_mmlu(items: list[dict], predictions: dict[str, list[str]], context: ScoreContext) -> dict:
    """Accuracy per method, overall and per subject."""

    def accuracy(positions: list[int], scores: list[float]) -> float:
        return sum(scores[p] for p in positions) / len(positions)

    subjects = {s: [p for p, i in enumerate(items) if i["group"] == s] for s in sorted({i["group"] for i in items})}
    everything = list(range(len(items)))
    per_question = {name: mmlu_instance_scores(items, answers)["accuracy"] for name, answers in predictions.items()}
    return {"methods": {name: {"accuracy": accuracy(everything, scores),
                               "subjects": {s: accuracy(positions, scores) for s, positions in subjects.items()}}
                        for name, scores in per_question.items()}, "instances": len(items)}


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
