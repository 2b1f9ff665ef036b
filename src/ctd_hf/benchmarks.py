"""Benchmarks as data: each loader returns evaluation items, each item a user message plus its references.

An item is ``{"id", "group", "message", "references", ...}``: ``message`` is what the model is asked (a user message
for :func:`ctd_hf.format_prompt`, with the instruction in ``content`` and the task input in ``input`` so that
Instructive Decoding can damage one and keep the other); ``group`` is the SuperNI task or the MMLU subject.
"""

from __future__ import annotations

import gzip
import json
import string
from pathlib import Path
from typing import Any

BENCHMARKS = ("superni", "drop", "mmlu", "alpacaeval")
CATEGORY_ABBREVIATIONS = {
    "Title Generation": "TG", "Coreference Resolution": "CR", "Textual Entailment": "TE", "Question Rewriting": "QR",
    "Cause Effect Classification": "CEC", "Dialogue Act Recognition": "DAR", "Answerability Classification": "AC",
    "Keyword Tagging": "KT", "Data to Text": "DT", "Word Analogy": "WA", "Overlap Extraction": "OE",
    "Grammar Error Correction": "GEC",
}
LETTERS = "ABCD"


def _with_period(text: str) -> str:
    text = text.strip()
    return text if text and text[-1] in string.punctuation else text + "."


def _read_json(path: Path) -> Any:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        if ".jsonl" in path.name:
            return [json.loads(line) for line in handle if line.strip()]
        return json.load(handle)


def superni_message(definition: str, task_input: str) -> dict:
    """The zero-shot SuperNI prompt of the ID and CTD papers, as a user message.

    Rendered, it is ``"Definition: {definition}\\n\\nNow complete the following example -\\nInput: {input}\\n
    Output: "`` (a period appended to definition and input when they do not end in punctuation).
    """
    return {
        "role": "user",
        "label": "Definition: ",
        "content": "Definition: " + _with_period(definition),
        "input": f"Now complete the following example -\nInput: {_with_period(task_input)}\nOutput: ",
    }


def load_superni(
    data_dir: str | Path,
    tasks_file: str = "default/test_tasks.txt",
    max_instances: int = 100,
    categories_file: str | None = None,
) -> list[dict]:
    """SuperNI items from a natural-instructions layout (``tasks/*.json``, ``splits/<tasks_file>``).

    The first ``max_instances`` instances of each listed task; category = the task's first ``Categories`` entry, or
    its entry in ``categories_file`` (a task -> category JSON under ``splits/``, e.g. for train tasks that stand in
    for test categories).
    """
    root = Path(data_dir)
    names = [line.strip() for line in (root / "splits" / tasks_file).read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{root / 'splits' / tasks_file} lists no task.")
    categories = json.loads((root / "splits" / categories_file).read_text()) if categories_file else {}
    items = []
    for name in names:
        path = root / "tasks" / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"Task {name} is listed in {tasks_file} but {path} does not exist.")
        task = json.loads(path.read_text())
        definition = task["Definition"][0] if isinstance(task["Definition"], list) else task["Definition"]
        for instance in task["Instances"][:max_instances]:
            items.append({
                "id": instance["id"],
                "group": name,
                "category": categories.get(name, task["Categories"][0]),
                "message": superni_message(definition, instance["input"]),
                "references": instance["output"],
            })
    return items


def load_drop(path: str | Path, limit: int | None = 500) -> list[dict]:
    """DROP items (``{id, passage, question, answers}`` JSONL); every listed answer is acceptable."""
    records = _read_json(Path(path))[:limit]
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


def _mmlu_question(record: dict) -> str:
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, record["choices"]))
    return f"{record['question'].strip()}{options}\nAnswer:"


def load_mmlu(path: str | Path, shots: int = 0, limit_per_subject: int | None = None) -> list[dict]:
    """MMLU test items, ``shots`` examples per subject from the dev split before each question (0 to 5)."""
    if not 0 <= shots <= 5:
        raise ValueError(f"MMLU has 5 dev examples per subject: shots must be 0 to 5, got {shots}.")
    records = _read_json(Path(path))
    dev: dict[str, list[dict]] = {}
    for record in records:
        if record["split"] == "dev":
            dev.setdefault(record["subject"], []).append(record)
    items, seen = [], {}
    for index, record in enumerate(records):
        subject = record["subject"]
        if record["split"] != "test" or seen.get(subject, 0) == limit_per_subject:
            continue
        seen[subject] = seen.get(subject, 0) + 1
        examples = "".join(f"{_mmlu_question(example)} {example['answer']}\n\n" for example in dev.get(subject, [])[:shots])
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}."
        items.append({
            "id": f"mmlu-{index}",
            "group": subject,
            "message": {"role": "user", "content": header, "input": examples + _mmlu_question(record)},
            "references": [record["answer"]],
        })
    return items


def load_alpacaeval(path: str | Path, limit: int | None = None) -> list[dict]:
    """AlpacaEval instructions (the judge needs an API and stays the user's step)."""
    records = _read_json(Path(path))[:limit]
    return [{
        "id": str(index),
        "group": record.get("dataset", "alpacaeval"),
        "message": {"role": "user", "content": record["instruction"], "input": ""},
        "references": [],
    } for index, record in enumerate(records)]
