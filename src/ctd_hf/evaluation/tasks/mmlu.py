"""MMLU: four-way multiple choice, answered by the letter with the highest processed first-step score."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...resources import resource_path
from . import ScoreContext, Task, metric_table, read_json, register_task

LETTERS = "ABCD"


@dataclass(kw_only=True)
class MMLUOptions:
    """Where the MMLU questions come from, how many per subject, and how many dev examples precede each."""

    path: str = field(default=str(resource_path("mmlu", "mmlu.jsonl.gz")),
                      metadata={"help": "JSONL (gzip allowed) of {subject, split, question, choices, answer}."})
    shots: int = field(default=0, metadata={"help": "Dev examples per subject before each question (0 to 5)."})
    limit: int | None = field(default=None, metadata={"help": "Test questions per subject.", "selects": True})

    def __post_init__(self) -> None:
        if not 0 <= self.shots <= 5:
            raise ValueError(f"MMLU has 5 dev examples per subject: shots must be 0 to 5, got {self.shots}.")


def _question(record: dict) -> str:
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, record["choices"]))
    return f"{record['question'].strip()}{options}\nAnswer:"


def load_mmlu(options: MMLUOptions) -> list[dict]:
    """MMLU test items, ``shots`` examples per subject from the dev split before each question."""
    records = read_json(options.path)
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


def score_mmlu(items: list[dict], predictions: dict[str, list[str]], context: ScoreContext) -> dict:
    """Accuracy per method, overall and per subject."""

    def accuracy(positions: list[int], answers: list[str]) -> float:
        return 100.0 * sum(answers[p] == items[p]["references"][0] for p in positions) / len(positions)

    subjects = {s: [p for p, i in enumerate(items) if i["group"] == s] for s in sorted({i["group"] for i in items})}
    everything = list(range(len(items)))
    return {"methods": {name: {"accuracy": accuracy(everything, answers),
                               "subjects": {s: accuracy(positions, answers) for s, positions in subjects.items()}}
                        for name, answers in predictions.items()}, "instances": len(items)}


TASK = register_task(Task(
    name="mmlu",
    options=MMLUOptions,
    load=load_mmlu,
    score=score_mmlu,
    markdown=lambda result: metric_table("mmlu", result, ("accuracy",)),
    scoring="choice",
    choices=tuple(LETTERS),
))
