"""Tuning data beyond the Alpaca sample, for the sweep and the demo.

The CTD paper tunes on a sample of the model's own SFT data, which the default model does not publish. The proxies:

- ``alpaca``: the shipped Alpaca sample (answers written by text-davinci-003);
- ``superni``: the SuperNI TRAIN tasks of ``sample/tuning_tasks.txt`` (disjoint from the development tasks and from
  every test task) as instruction data, in the evaluation's own zero-shot prompt, with their reference answers;
- ``self``: the model's own greedy answers to the Alpaca instructions (its own distribution, as SFT data is),
  relabelled with the reference where one exists: the SuperNI tuning tasks with their reference answers.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..decoding.answers import generate_answers
from ..evaluation.tasks import get_task
from ..models import load_model_and_tokenizer
from ..records import append_records, load_json_records, read_records, write_json, write_text
from ..resources import resource_path
from ..training.data import load_sft_data

TUNING_DATA = ("alpaca", "superni", "self")
ALPACA = resource_path("sft", "alpaca_en_demo.json")


def tuning_data_source(name: str) -> str:
    """Check of a sweep's ``data`` value: one of :data:`TUNING_DATA`, or a file of SFT examples (read and checked
    now, so that a wrong file is refused before any baseline runs)."""
    if name not in TUNING_DATA:
        if not Path(name).exists():
            raise ValueError(f"{name!r} is neither one of {', '.join(TUNING_DATA)} nor an existing file.")
        try:
            load_sft_data(name)
        except ValueError as error:
            raise ValueError(f"{name!r} is not SFT data that tuning can read: {error}") from None
    return name


def superni_rows(tasks: str = "sample/tuning_tasks.txt", max_instances: int = 100) -> list[dict]:
    """The SuperNI tasks listed in ``tasks`` as chat rows: the evaluation's zero-shot prompt and the first reference."""
    task = get_task("superni")
    items = task.load(task.make_options({"tasks": tasks, "max_instances": max_instances}))
    return [{"messages": [{key: value for key, value in item["message"].items() if key != "label"},
                          {"role": "assistant", "content": item["references"][0]}]} for item in items]


def self_generated_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: Path,
    prompt_format: str,
    count: int = 256,
    max_new_tokens: int = 192,
    batch_size: int = 8,
) -> list[dict]:
    """The model's greedy answers to the first ``count`` Alpaca instructions, written to ``path`` batch by batch (a
    killed run resumes), followed by the SuperNI tuning tasks with their reference answers."""
    instructions = load_json_records(ALPACA)[:count]
    done = {row["index"] for row in read_records(path, repair=True)}
    todo = [index for index in range(len(instructions)) if index not in done]
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        messages = [{"role": "user", "content": instructions[i]["instruction"], "input": instructions[i]["input"]}
                    for i in batch]
        answers = generate_answers(model, tokenizer, messages, None, prompt_format, max_new_tokens=max_new_tokens,
                                   do_sample=False)
        append_records(path, [{"index": i, "messages": [m, {"role": "assistant", "content": answer}]}
                              for i, m, answer in zip(batch, messages, answers)])
    own = [{"messages": row["messages"]} for row in sorted(read_records(path), key=lambda row: row["index"])
           if row["messages"][-1]["content"].strip()]
    return own + superni_rows()


def write_rows(rows: list[dict], path: Path) -> Path:
    """Write chat rows as JSONL (what ``load_sft_data`` reads), atomically, and record their count beside them."""
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    write_json(_count_file(path), {"rows": len(rows)})
    return path


def _count_file(path: Path) -> Path:
    return path.with_name(path.name + ".rows.json")


def _complete(path: Path) -> bool:
    """Whether ``path`` holds every row :func:`write_rows` wrote (a file cut short, or one without its count, is
    rebuilt rather than tuned on)."""
    if not (path.is_file() and _count_file(path).is_file()):
        return False
    rows = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return json.loads(_count_file(path).read_text()).get("rows") == rows


def tuning_data_path(name: str, folder: Path, model: str = "default", prompt_format: str = "chatml") -> str:
    """The file of tuning data ``name``: the shipped Alpaca sample, or ``folder/<name>.jsonl`` built on first use
    (``self`` generates with ``model``, resuming); any other name is taken as a path."""
    if name not in TUNING_DATA:
        return name
    if name == "alpaca":
        return str(ALPACA)
    path = folder / f"{name}.jsonl"
    if not _complete(path):
        if name == "superni":
            rows = superni_rows()
        else:
            loaded, tokenizer = load_model_and_tokenizer(model)
            rows = self_generated_rows(loaded, tokenizer, folder / "self-answers.jsonl", prompt_format)
        write_rows(rows, path)
    return str(path)
