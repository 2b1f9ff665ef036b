"""Tasks read the shipped files, `datasets` folders in the Hub's layouts (what `load_dataset(name)` returns, saved
with `save_to_disk`, since the Hub is unreachable here), and refuse what they cannot read."""

from __future__ import annotations

import json

import datasets
import pytest

from ctd_hf import get_task
from ctd_hf.records import load_json_records

from conftest import DATA

SUPERNI = {"dir": str(DATA / "supernatinst"), "tasks": "sample/test_tasks.txt", "max_instances": 5}


def _load(name: str, **options) -> list[dict]:
    task = get_task(name)
    return task.load(task.make_options(options))


def test_superni_from_a_natural_instructions_dataset_folder(tmp_path):
    expected = _load("superni", **SUPERNI)
    rows = []  # the Hub's Muennighoff/natural-instructions layout: one row per instance and reference
    for name in (DATA / "supernatinst" / "splits" / "sample" / "test_tasks.txt").read_text().split():
        task = json.loads((DATA / "supernatinst" / "tasks" / f"{name}.json").read_text())
        for instance in task["Instances"]:
            rows += [{"task_name": name, "id": instance["id"], "definition": task["Definition"][0],
                      "inputs": instance["input"], "targets": target} for target in instance["output"]]
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "ni")
    loaded = _load("superni", **SUPERNI, dataset=str(tmp_path / "ni"))
    assert loaded == expected  # categories from splits/default/test_task_categories.json match the task files'
    with pytest.raises(ValueError, match="splits.*'validation'"):
        _load("superni", **SUPERNI, dataset=str(tmp_path / "ni"), split="validation")


def test_drop_from_the_hub_layout(tmp_path):
    records = load_json_records(DATA / "drop" / "drop_dev.jsonl.gz")[:8]
    rows = [{"section_id": "s", "query_id": r["id"], "passage": r["passage"], "question": r["question"],
             "answers_spans": {"spans": r["answers"], "types": ["span"] * len(r["answers"])}} for r in records]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "drop")
    assert _load("drop", path=str(tmp_path / "drop"), limit=8) == _load("drop", limit=8)


def test_mmlu_from_the_hub_layout(tmp_path):
    records = load_json_records(DATA / "mmlu" / "mmlu.jsonl.gz")
    subjects = {"abstract_algebra", "anatomy"}
    splits = {}
    for split in ("test", "dev"):
        splits[split] = datasets.Dataset.from_list(
            [{"question": r["question"], "subject": r["subject"], "choices": r["choices"],
              "answer": "ABCD".index(r["answer"])} for r in records
             if r["split"] == split and r["subject"] in subjects])
    datasets.DatasetDict(splits).save_to_disk(tmp_path / "mmlu")
    from_hub = _load("mmlu", path=str(tmp_path / "mmlu"), shots=2, limit=3)
    shipped = [item for item in _load("mmlu", shots=2, limit=3) if item["group"] in subjects]
    assert len(from_hub) == 6
    # Item ids number the records of the file they come from; everything else is the same.
    assert [{**item, "id": None} for item in from_hub] == [{**item, "id": None} for item in shipped]


def test_alpacaeval_from_the_hub_layout(tmp_path):
    records = load_json_records(DATA / "alpaca_eval" / "alpaca_eval.json.gz")[:4]
    datasets.DatasetDict({"eval": datasets.Dataset.from_list(records)}).save_to_disk(tmp_path / "ae")
    assert _load("alpacaeval", path=str(tmp_path / "ae"), limit=4) == _load("alpacaeval", limit=4)


@pytest.mark.parametrize("content, words", [
    ('{"id": "1", "passage": "p", "question": "q"}\n', (r"\.jsonl:1", r"missing \['answers'\]")),
    ("", ("is empty",)),
    ('{"id": "1", "passage": "p"', ("not valid JSON",)),
])
def test_broken_task_files_name_the_file_and_line(tmp_path, content, words):
    path = tmp_path / "drop.jsonl"
    path.write_text(content)
    for word in words:
        with pytest.raises(ValueError, match=word):
            _load("drop", path=str(path))


def test_missing_task_data_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _load("alpacaeval", path=str(tmp_path / "nothing.json"))
    with pytest.raises(FileNotFoundError, match="task list .* does not exist"):
        _load("superni", dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="categories file .*no_such.json does not exist"):
        _load("superni", tasks="sample/train_tasks.txt", categories="sample/no_such.json")  # not silently ignored
    with pytest.raises(ValueError, match="`limit` must be an integer >= 1"):
        _load("drop", limit=0)


def test_superni_per_category_balances_the_categories():
    """The broad held-out sample: each category's tasks share its instances evenly, every task at least one."""
    from ctd_hf.evaluation.tasks.superni import SuperNIOptions, load_superni

    items = load_superni(SuperNIOptions(tasks="broad/test_tasks.txt", per_category=10))
    by_category: dict[str, list[str]] = {}
    for item in items:
        by_category.setdefault(item["category"], []).append(item["group"])
    assert len(by_category) == 10 and all(len(groups) == 10 for groups in by_category.values())
    for groups in by_category.values():
        counts = [groups.count(task) for task in dict.fromkeys(groups)]
        assert max(counts) - min(counts) <= 1
    assert len({item["group"] for item in load_superni(SuperNIOptions(tasks="broad/test_tasks.txt",
                                                                      per_category=1))}) == 34
