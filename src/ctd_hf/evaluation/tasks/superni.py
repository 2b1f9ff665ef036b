"""SuperNI (Super-NaturalInstructions): zero-shot instructions, Rouge-L and exact match, reported like the CTD paper's
Table 1 (categories as columns) with per-task winning rates."""

from __future__ import annotations

import itertools
import json
import logging
import string
import sys
from dataclasses import dataclass
from pathlib import Path

from ...plots import grouped_bars
from ..scoring import load_metric
from ...resources import resource_path
from ...settings import check_settings, positive_int, setting
from . import ScoreContext, Task, check_fields, mean_scores, positions_by, read_rows, register_task

logger = logging.getLogger(__name__)
CATEGORY_ABBREVIATIONS = {
    "Title Generation": "TG", "Coreference Resolution": "CR", "Textual Entailment": "TE", "Question Rewriting": "QR",
    "Cause Effect Classification": "CEC", "Dialogue Act Recognition": "DAR", "Answerability Classification": "AC",
    "Keyword Tagging": "KT", "Data to Text": "DT", "Word Analogy": "WA", "Overlap Extraction": "OE",
    "Grammar Error Correction": "GEC",
}


@dataclass(kw_only=True)
class SuperNIOptions:
    """Where the SuperNI tasks come from and how many instances of each run."""

    dir: str = setting(str(resource_path("supernatinst")), help="A natural-instructions layout: tasks/*.json and "
                                                                "splits/.")
    tasks: str = setting("sample/test_tasks.txt", help=(
        "Task list under splits/: the shipped held-out sample by default; default/test_tasks.txt is the official "
        "119-task list (with a natural-instructions checkout as the dir)."))
    categories: str | None = setting(None, help="task -> category JSON under splits/ (optional).")
    dataset: str | None = setting(None, help=(
        "Instead of the task files: a save_to_disk folder or a dataset name in the Hub's "
        "Muennighoff/natural-instructions layout (task_name, id, definition, inputs, targets); the task list and "
        "categories still come from splits/ of the dir."))
    split: str = setting("test", help="Split of the dataset.")
    max_instances: int = setting(100, check=positive_int, selects=True, aliases=("--max-instances",),
                                 help="Instances per task (the first ones).")
    per_category: int | None = setting(None, check=positive_int, selects=True, help=(
        "Instead of max_instances: about this many instances per category, shared evenly by its tasks (at least one "
        "each), so that no category outweighs another."))
    rouge_tokenizer: str = setting("english", choices=("english", "xlingual"), answers=False, help=(
        "Rouge-L's tokenizer: english (the official track's; it reads only a-z and 0-9, so other scripts score 0) "
        "or xlingual (Unicode words, one token per Chinese/Japanese/Korean/Thai character: for tasks in other "
        "languages)."))

    def __post_init__(self) -> None:
        check_settings(self)


def _with_period(text: str) -> str:
    text = text.strip()
    return text if text and text[-1] in string.punctuation else text + "."


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


def task_names(task_list: Path) -> list[str]:
    """The task names a ``splits/`` list file holds, one per line."""
    if not task_list.is_file():
        raise FileNotFoundError(f"The task list {task_list} does not exist: point the dir at a natural-instructions "
                                "layout and the tasks option at a list under its splits/.")
    names = [line.strip() for line in task_list.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{task_list} lists no task.")
    return names


def official_test_tasks_in(task_list: Path) -> list[str]:
    """The tasks of ``task_list`` that are among the 119 official SuperNI test tasks (shipped with the package)."""
    official = set(task_names(resource_path("supernatinst", "splits", "default", "test_tasks.txt")))
    return [name for name in task_names(task_list) if name in official]


def load_superni(options: SuperNIOptions) -> list[dict]:
    """SuperNI items: the first ``max_instances`` instances of each task listed in ``splits/<tasks>`` of ``dir`` (or,
    with ``per_category``, each category's share), from the task files (``tasks/*.json``) or from ``dataset``.

    Category = the task's first ``Categories`` entry, or its entry in ``categories`` (a task -> category JSON under
    ``splits/``, e.g. for train tasks that stand in for test categories; with ``dataset``, which has no categories,
    ``default/test_task_categories.json`` is used when present).
    """
    splits = Path(options.dir) / "splits"
    names = task_names(splits / options.tasks)
    default_categories = splits / "default" / "test_task_categories.json"
    if options.categories:
        categories_file = splits / options.categories
        if not categories_file.is_file():
            raise FileNotFoundError(f"The categories file {categories_file} does not exist: name a task -> category "
                                    "JSON under the splits/ folder, or leave the categories option out.")
        categories = json.loads(categories_file.read_text())
    elif options.dataset and default_categories.is_file():
        categories = json.loads(default_categories.read_text())
    else:
        categories = {}
    tasks = _from_dataset(options, set(names)) if options.dataset else _from_task_files(options, names)
    category_of = {name: categories.get(name, tasks[name][1]) for name in names}
    limits = _shares(category_of, options.per_category) if options.per_category else dict.fromkeys(
        names, options.max_instances)
    items = []
    for name in names:
        definition, _, instances = tasks[name]
        for instance in instances[: limits[name]]:
            items.append({
                "id": instance["id"],
                "group": name,
                "category": category_of[name],
                "message": superni_message(definition, instance["input"]),
                "references": instance["output"],
                "rouge_tokenizer": options.rouge_tokenizer,
            })
    return items


def _shares(category_of: dict[str, str], per_category: int) -> dict[str, int]:
    """Instances per task when each category's tasks share ``per_category`` evenly (the first tasks of a category
    take the remainder; every task gets at least one)."""
    limits = {}
    for category in set(category_of.values()):
        members = [name for name in category_of if category_of[name] == category]
        share, extra = divmod(per_category, len(members))
        limits.update({name: max(1, share + (index < extra)) for index, name in enumerate(members)})
    return limits


def _from_task_files(options: SuperNIOptions, names: list[str]) -> dict[str, tuple[str, str, list[dict]]]:
    """task -> (definition, category, instances) from a natural-instructions checkout's ``tasks/*.json``."""
    tasks = {}
    for name in names:
        path = Path(options.dir) / "tasks" / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"Task {name} is listed in {options.tasks} but {path} does not exist.")
        tasks[name] = _task_file(path)
    return tasks


def _task_file(path: Path) -> tuple[str, str, list[dict]]:
    """(definition, category, instances) of one natural-instructions task file, refusing, with the file named, what
    would fail later or score wrongly: a missing or empty field, an instance without a string id and input, references
    that are not a list of strings, two instances of one id."""
    def refuse(problem: str) -> ValueError:
        return ValueError(f"{path}: {problem} (a natural-instructions task file has Definition, Categories and "
                          "Instances of {{id, input, output: [references]}}).")

    try:
        task = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise refuse(f"not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(task, dict):
        raise refuse("the file holds no JSON object")
    missing = [key for key in ("Definition", "Categories", "Instances") if key not in task]
    if missing:
        raise refuse(f"no {', '.join(missing)}")
    definition = task["Definition"][0] if isinstance(task["Definition"], list) and task["Definition"] else \
        task["Definition"]
    if not isinstance(definition, str) or not definition.strip():
        raise refuse("the Definition is empty or not text")
    if not isinstance(task["Categories"], list) or not task["Categories"] or not isinstance(task["Categories"][0], str):
        raise refuse("the Categories are not a non-empty list of names")
    if not isinstance(task["Instances"], list) or not task["Instances"]:
        raise refuse("the Instances are not a non-empty list")
    seen: dict[str, int] = {}  # id -> the instance that first had it
    for number, instance in enumerate(task["Instances"], start=1):
        where = f"instance {number}"
        if not isinstance(instance, dict) or not isinstance(instance.get("id"), str) or \
                not isinstance(instance.get("input"), str):
            raise refuse(f"{where} has no string id and input")
        output = instance.get("output")
        if not isinstance(output, list) or not output or not all(isinstance(text, str) for text in output):
            raise refuse(f"{where} ({instance['id']}) has output {output!r}; the output is a non-empty list of "
                         "reference strings")
        if instance["id"] in seen:
            raise refuse(f"two instances have id {instance['id']!r} (instances {seen[instance['id']]} and {number}); "
                         "each needs its own")
        seen[instance["id"]] = number
    return definition, task["Categories"][0], task["Instances"]


def _from_dataset(options: SuperNIOptions, names: set[str]) -> dict[str, tuple[str, str, list[dict]]]:
    """task -> (definition, category, instances) from rows of the Hub's natural-instructions layout (one row per
    instance and reference; references of one instance id are gathered)."""
    rows = read_rows(options.dataset, options.split, check_fields("task_name", "id", "definition", "inputs", "targets"))
    tasks: dict[str, tuple[str, str, dict[str, dict]]] = {}
    for row in rows:
        if row["task_name"] in names:
            instances = tasks.setdefault(row["task_name"], (row["definition"], "Uncategorized", {}))[2]
            instance = instances.setdefault(row["id"], {"id": row["id"], "input": row["inputs"], "output": []})
            if instance["input"] != row["inputs"]:  # rows of one instance repeat it with another reference
                raise ValueError(f"{options.dataset}: two rows of id {row['id']!r} have different inputs; rows share "
                                 "an id only to give one instance several references. Give each instance its own id.")
            instance["output"].extend(_references(row["targets"], options.dataset, row["id"]))
    missing = sorted(names - set(tasks))
    if missing:
        raise ValueError(f"{options.dataset} ({options.split}) has no rows of the listed tasks {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}: check the tasks option.")
    return {name: (definition, category, list(instances.values()))
            for name, (definition, category, instances) in tasks.items()}


def _references(targets: object, dataset: str, instance: str) -> list[str]:
    """A row's references: one string, or a list of strings (several references, as the official scorer takes)."""
    if isinstance(targets, str):
        return [targets]
    if isinstance(targets, (list, tuple)) and targets and all(isinstance(target, str) for target in targets):
        return list(targets)
    raise ValueError(f"{dataset}: instance {instance} has targets {targets!r}; a target is a string or a non-empty "
                     "list of strings (its references).")


def score_superni(
    items: list[dict], predictions: dict[str, list[str]], context: ScoreContext,
    scores: dict[str, dict[str, list[float]]] | None = None,
) -> dict:
    """Rouge-L and exact match overall, per category and per task: means of the per-instance scores, as the official
    metric averages them (it also rounds to 4 places; these means are unrounded). Winning rates over tasks."""
    scores = TASK.method_scores(items, predictions) if scores is None else scores
    categories, tasks = positions_by(items, "category"), positions_by(items, "group")
    result = {name: {"overall": mean_scores(values),
                     "categories": {c: mean_scores(values, positions) for c, positions in categories.items()},
                     "tasks": {t: mean_scores(values, positions) for t, positions in tasks.items()}}
              for name, values in scores.items()}
    # Winning rate: share of tasks where method a's mean Rouge-L beats method b's (a rate over tasks, not a mean of
    # per-instance scores).
    wins = {f"{a} > {b}": sum(result[a]["tasks"][t]["rougeL"] > result[b]["tasks"][t]["rougeL"] for t in tasks)
            / len(tasks) for a, b in itertools.permutations(result, 2)}
    return {"methods": result, "winning_rate": wins, "tasks": len(tasks), "instances": len(items)}


def superni_instance_scores(items: list[dict], predictions: list[str]) -> dict[str, list[float]]:
    """Rouge-L and exact match of each item (x100), from the shipped SuperNI metric script, with the items' Rouge-L
    tokenizer; says so when a reference holds no token that tokenizer reads (its Rouge-L is 0 whatever the answer)."""
    metric = load_metric("superni")
    tokenizer = items[0].get("rouge_tokenizer", "english") if items else "english"
    scorable = sys.modules[type(metric).__module__].scorable  # the metric script's own tokenizers
    unread = sum(not any(scorable(reference, tokenizer) for reference in item["references"]) for item in items)
    if unread:
        logger.warning("%d of %d SuperNI items have no reference the %s Rouge-L tokenizer reads (other scripts than "
                       "a-z and 0-9?): their Rouge-L is 0 whatever the answer. For such tasks set the superni option "
                       "rouge_tokenizer=xlingual (--superni-rouge-tokenizer xlingual).", unread, len(items), tokenizer)
    return metric.compute(predictions=predictions, references=[i["references"] for i in items], per_instance=True,
                          tokenizer=tokenizer)


def ordered_categories(categories: dict) -> list[str]:
    """Categories in the paper's Table 1 order, any others after them alphabetically."""
    order = list(CATEGORY_ABBREVIATIONS)
    return sorted(categories, key=lambda c: (order.index(c) if c in order else len(order), c))


def superni_markdown(result: dict) -> list[str]:
    """Rouge-L and exact match like the paper's Table 1 (methods as rows, Overall and categories as columns), then
    the winning rates."""
    methods = result["methods"]
    categories = ordered_categories(next(iter(methods.values()))["categories"])
    header = ["Method", "Overall"] + [CATEGORY_ABBREVIATIONS.get(c, c) for c in categories]
    lines = []
    for metric, title in (("rougeL", "Rouge-L"), ("exact_match", "Exact match")):
        lines += [f"## SuperNI {title} ({result['tasks']} tasks, {result['instances']} instances)", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, scores in methods.items():
            row = [name, f"{scores['overall'][metric]:.2f}"] + [f"{scores['categories'][c][metric]:.2f}"
                                                               for c in categories]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += ["Winning rate (share of tasks where the first method's Rouge-L is higher):", ""]
    return lines + [f"- {pair}: {rate:.2%}" for pair, rate in result["winning_rate"].items()] + [""]


def plot_superni(result: dict, folder: Path) -> None:
    """``superni_categories.png``: Rouge-L per category (and overall), one bar per method."""
    methods = result["methods"]
    categories = ordered_categories(next(iter(methods.values()))["categories"])
    labels = ["Overall"] + [CATEGORY_ABBREVIATIONS.get(c, c) for c in categories]
    series = {name: [scores["overall"]["rougeL"]] + [scores["categories"][c]["rougeL"] for c in categories]
              for name, scores in methods.items()}
    grouped_bars(folder / "superni_categories.png", labels, series, "Rouge-L", "SuperNI Rouge-L by category")


TASK = register_task(Task(
    name="superni",
    options=SuperNIOptions,
    load=load_superni,
    score=score_superni,
    markdown=superni_markdown,
    plot=plot_superni,
    instance_scores=superni_instance_scores,
    primary_metric="rougeL",
    max_new_tokens=128,
    truncate_input=True,
))
