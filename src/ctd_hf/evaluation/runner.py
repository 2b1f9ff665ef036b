"""The evaluation runner: every method on every task, predictions written as they are produced.

Predictions go to ``<output_dir>/predictions/<task>/<method>/rank-<rank>.jsonl`` batch by batch, so a killed run
restarted with the same settings answers only what is missing; under ``accelerate launch`` rank ``r`` answers the
items whose index is ``r`` modulo the number of processes. Scoring and reports
(:mod:`ctd_hf.evaluation.report`) read the files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..decoding.answers import check_prompt_lengths, encode_messages, generate_for_messages
from ..decoding.engine import Engine, TransformersEngine
from ..decoding.likelihood import next_token_log_probs
from ..decoding.methods import BoundMethod, ContrastMethod, DecodingMethod
from ..decoding.recording import OriginalPredictions
from ..distributed import process_state
from ..models import fingerprint
from ..prompts import encode_prompt, format_prompt, prompt_format_setting
from ..records import append_records, check_output_folder, check_resumable, read_records
from ..settings import check_settings, positive_int, setting
from .report import build_report
from .tasks import Task, get_task

SETTINGS_FORMAT = 3  # the layout of the output folder; folders of another layout are not resumed


def new_token_budget(value: Any) -> int | dict[str, int]:
    """Check of ``max_new_tokens``: an integer >= 1, or a dict giving tasks such integers."""
    if isinstance(value, dict):
        return {task: positive_int(budget) for task, budget in value.items()}
    return positive_int(value)


@dataclass(kw_only=True)
class EvalSettings:
    """What to evaluate and how; the defaults follow the CTD and ID papers' protocol (greedy, the tasks' new-token
    budgets, e.g. 128 for SuperNI, 1024 source tokens)."""

    benchmarks: tuple[str, ...] = setting(("superni",), check=lambda name: get_task(name).name,
                                          help="Registered task names, comma-separated.")
    options: dict[str, Any] = setting(default_factory=dict, cli=False, help=(
        "Per task, its options (a dict of fields or the task's options dataclass); defaults when missing."))
    prompt_format: str = prompt_format_setting()
    batch_size: int = setting(8, check=positive_int, help="Prompts per generate() call.")
    max_new_tokens: int | dict[str, int] = setting(default_factory=dict, check=new_token_budget, help=(
        "New tokens of every generation task, or a budget per task (default: each task's own, e.g. SuperNI 128, "
        "DROP 32)."))
    max_source_tokens: int = setting(1024, check=positive_int, help="Instruction + input tokens, where a task cuts.")
    token_changes: bool = setting(True, flag="--no-token-changes",
                                  help="Record the original model's per-step predictions (--no-token-changes: do "
                                       "not).")

    def __post_init__(self) -> None:
        check_settings(self)
        if isinstance(self.max_new_tokens, int):  # one budget for every task, recorded per task
            self.max_new_tokens = {name: self.max_new_tokens for name in self.benchmarks}

    def task_options(self, task: Task) -> Any:
        """``task``'s options as its options dataclass."""
        return task.make_options(self.options.get(task.name))

    def new_tokens(self, task: Task) -> int:
        """The new-token budget of ``task`` (1 for choice scoring, which reads the first step)."""
        if task.scoring == "choice":
            return 1
        return self.max_new_tokens.get(task.name, task.max_new_tokens)


def truncate_message(message: dict, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> dict:
    """Cut the task input so that instruction and input together hold at most ``max_tokens`` tokens, refusing an
    instruction that alone fills the budget (the task input would be cut away entirely)."""
    head = len(tokenizer(message["content"] + "\n\n", add_special_tokens=False)["input_ids"])
    ids = tokenizer(message["input"], add_special_tokens=False)["input_ids"]
    if head + len(ids) <= max_tokens:
        return message
    if head >= max_tokens:
        raise ValueError(f"The instruction {message['content'][:40]!r}... alone holds {head} tokens, at least the "
                         f"source budget max_source_tokens={max_tokens}: its task input would be cut away entirely. "
                         "Raise max_source_tokens (the protocol's is 1024).")
    return {**message, "input": tokenizer.decode(ids[: max_tokens - head])}


def _choose(method: BoundMethod, messages: list[dict], choices: tuple[str, ...], prompt_format: str) -> list[str]:
    """Each message's choice: the one whose first token (of ``"A"`` or ``" A"``, whichever the model would write)
    scores highest in the method's distribution of the answer's first token (:mod:`ctd_hf.decoding.likelihood`, the
    scorer the lm-eval model uses too)."""
    tokenizer = method.tokenizer
    batch = encode_messages(tokenizer, messages, prompt_format)
    contexts = [row[keep.bool()].tolist() for row, keep in zip(batch["input_ids"], batch["attention_mask"])]
    contrast = method.contrast_for(messages, prompt_format)
    scores = next_token_log_probs(method.model if contrast is None else contrast, contexts)
    ids = [sorted({tokenizer(text, add_special_tokens=False)["input_ids"][0] for text in (choice, " " + choice)})
           for choice in choices]
    best = torch.stack([scores[:, choice].max(dim=-1).values for choice in ids], dim=-1).argmax(dim=-1)
    return [choices[int(index)] for index in best]


def predict(
    name: str,
    method: BoundMethod,
    task: Task,
    items: list[dict],
    settings: EvalSettings,
    output_dir: str | Path,
    engine: Engine | None = None,
) -> Path:
    """Write this process's share of the bound ``method``'s predictions (labelled ``name``) on ``task``, resuming what
    is already written (``engine``: see :func:`~ctd_hf.decoding.answers.generate_for_messages`)."""
    model, tokenizer = method.model, method.tokenizer
    state = process_state()
    folder = Path(output_dir) / "predictions" / task.name / name
    path = folder / f"rank-{state.process_index}.jsonl"
    read_records(path, repair=True)
    written = {record["id"]: record for shard in folder.glob("rank-*.jsonl") for record in read_records(shard)}
    for item in items:  # a prediction counts only for the prompt and references it was made for
        record = written.get(item["id"])
        if record is not None and record.get("item_sha256", item["sha256"]) != item["sha256"]:
            raise ValueError(f"{task.name} item {item['id']} has another prompt or references than when its {name} "
                             f"prediction in {folder} was written (the task's data changed): use a new output "
                             "folder, or start over in this one (--restart; in Python restart=True).")
    done = set(written)
    mine = [item for index, item in enumerate(items) if index % state.num_processes == state.process_index]
    todo = [item for item in mine if item["id"] not in done]
    if task.truncate_input:
        todo = [{**item, "message": truncate_message(item["message"], tokenizer, settings.max_source_tokens)}
                for item in todo]
    # Longest prompts first: similar lengths share a batch (less padding) and memory peaks early.
    lengths = {item["id"]: len(encode_prompt(format_prompt([item["message"]], settings.prompt_format, tokenizer),
                                             tokenizer, settings.prompt_format)) for item in todo}
    todo.sort(key=lambda item: (-lengths[item["id"]], item["id"]))
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    record_original = (settings.token_changes and isinstance(method.spec, ContrastMethod)
                       and task.scoring == "generation")
    for start in tqdm(range(0, len(todo), settings.batch_size), desc=f"{task.name}/{name}", unit="batch",
                      disable=not state.is_local_main_process):
        batch = todo[start : start + settings.batch_size]
        messages = [item["message"] for item in batch]
        if task.scoring == "choice":
            records = [{"id": item["id"], "item_sha256": item["sha256"], "prediction": choice}
                       for item, choice in zip(batch, _choose(method, messages, task.choices, settings.prompt_format))]
        else:
            record = OriginalPredictions() if record_original else None
            output, prompt_length = generate_for_messages(
                method, messages, settings.prompt_format, record=record, engine=engine,
                max_new_tokens=settings.new_tokens(task), do_sample=False)
            chosen = output[:, prompt_length:]
            answers = tokenizer.batch_decode(chosen, skip_special_tokens=True)
            records = [{"id": item["id"], "item_sha256": item["sha256"], "prediction": answer.strip()}
                       for item, answer in zip(batch, answers)]
            if record is not None:
                for prediction, changes in zip(records, record.rows(chosen, eos_ids)):
                    prediction.update(changes)
        append_records(path, records)
    return path


def collect_predictions(output_dir: str | Path, task: str, name: str) -> dict[str, dict]:
    """All processes' predictions of one method on one task, by item id."""
    folder = Path(output_dir) / "predictions" / task / name
    return {record["id"]: record for path in sorted(folder.glob("rank-*.jsonl")) for record in read_records(path)}


def run_settings(
    methods: dict[str, DecodingMethod],
    settings: EvalSettings,
    seed: int,
    model: PreTrainedModel,
    model_name: str,
    engine: str = TransformersEngine.name,
) -> dict[str, Any]:
    """Everything that decides the answers, as JSON-ready values (the resume key and the report's settings): the
    model (name, dtype and a fingerprint of its weights), the engine, every method's settings and every task
    option."""
    tasks = [get_task(name) for name in settings.benchmarks]
    common = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name != "options"}
    options = {task.name: dataclasses.asdict(settings.task_options(task)) for task in tasks}
    values = {"format": SETTINGS_FORMAT, "seed": seed, "engine": engine,
              "model": {"name": model_name, "dtype": str(model.dtype), "fingerprint": fingerprint(model)},
              "methods": {n: m.settings() for n, m in methods.items()}, "eval": {**common, "options": options}}
    return json.loads(json.dumps(values, default=str))


def _prompts_that_fit(
    task: Task, settings: EvalSettings, tokenizer: PreTrainedTokenizerBase, methods: dict[str, BoundMethod],
    engine: Engine,
) -> list[dict]:
    """The task's items, each with the fingerprint of its prompt and references (``sha256``), refusing (before any
    answer is written) two items of one id, and one whose prompt, cut to the source budget, cannot fit the engine's
    positions with the answer and a method's prefix."""
    items = task.load(settings.task_options(task))
    if not items:
        raise ValueError(f"Task {task.name} gave no item with these options: nothing to evaluate.")
    seen: dict[str, int] = {}  # id -> the item that first had it
    for number, item in enumerate(items, start=1):
        if item["id"] in seen:
            raise ValueError(f"Task {task.name} has two items with id {item['id']!r} (items {seen[item['id']]} and "
                             f"{number}): predictions are kept by id, so one would answer both. Give every instance "
                             "its own id.")
        seen[item["id"]] = number
    items = [{**item, "sha256": item_fingerprint(item)} for item in items]
    messages = [truncate_message(i["message"], tokenizer, settings.max_source_tokens) if task.truncate_input
                else i["message"] for i in items]
    longest = max(methods.values(), key=lambda method: method.prefix_length)
    check_prompt_lengths(longest, messages, settings.prompt_format, settings.new_tokens(task),
                         fix=f"lower max_source_tokens ({settings.max_source_tokens}) or the new-token budget",
                         engine=engine)
    return items


def run_evaluation(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    methods: dict[str, DecodingMethod],
    settings: EvalSettings,
    output_dir: str | Path,
    model_name: str,
    seed: int = 0,
    engine: Engine | None = None,
    restart: bool = False,
) -> dict | None:
    """Run every method (label -> spec) on every task (resuming written predictions), then score and report.

    Under ``accelerate launch`` every process predicts its share and the main process writes the report and
    returns it (the others return None). ``engine`` decodes instead of ``model.generate()`` (e.g. a
    :class:`ctd_hf.integrations.vllm.VLLMEngine`; generation tasks only); the resume key records which. A folder
    written with other settings (for a method, a task option, the model) is refused, or emptied first with
    ``restart``; each prediction records a fingerprint of its item, and one whose item changed since is refused.
    """
    engine = engine or TransformersEngine()
    state = process_state()
    check_output_folder(output_dir)
    if not methods:
        raise ValueError("No method to run: give at least one DecodingMethod.")
    for name in methods:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"Method label {name!r} names a folder of predictions: use a non-empty label without '/'.")
    tasks = [get_task(name) for name in settings.benchmarks]
    # Everything that can be refused is refused before anything is written.
    scored = [task.name for task in tasks if task.scoring == "choice"]
    if not engine.reads_scores and scored:
        raise ValueError(f"{', '.join(scored)} scores the first step's logits, which the {engine.name} engine does not "
                         "return: evaluate it with the hf engine.")
    # The model's fingerprint before any method binds (a LoRA method injects its layers into the model's modules).
    current = run_settings(methods, settings, seed, model, model_name, engine.name)
    loaded: dict = {}  # what several methods share (one amateur for every strength), loaded once
    bound = {name: method.bind(model, tokenizer, loaded) for name, method in methods.items()}
    items = {task.name: _prompts_that_fit(task, settings, tokenizer, bound, engine) for task in tasks}
    check_resumable(Path(output_dir), "eval_settings.json", current,
                    changes=lambda previous, new: _evaluation_changes(previous, new, tasks),
                    write=state.is_main_process, merge=_kept_settings, restart=restart)
    state.wait_for_everyone()  # a restart's deletion is done before any process reads the predictions
    for task in tasks:
        for name, method in bound.items():
            predict(name, method, task, items[task.name], settings, output_dir, engine)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    results = {t.name: (items[t.name], {n: collect_predictions(output_dir, t.name, n) for n in methods}) for t in tasks}
    return build_report(output_dir, results, current, model_name)


def item_fingerprint(item: dict) -> str:
    """SHA-256 of what an item asks and how it is scored (its message and references)."""
    content = json.dumps({"message": item["message"], "references": item.get("references")}, sort_keys=True,
                         ensure_ascii=False, default=str)
    return hashlib.sha256(content.encode()).hexdigest()


def _kept_settings(previous: dict, current: dict) -> dict:
    """What the folder's settings file records after this run: this run's settings, and those of the methods and
    tasks earlier runs wrote that this one did not run, so that a later run of them is checked against them."""
    options = {**previous["eval"]["options"], **current["eval"]["options"]}
    return {**current, "methods": {**previous["methods"], **current["methods"]},
            "eval": {**current["eval"], "options": options}}


def _resume_key(values: dict, tasks: list[Task]) -> dict:
    """``run_settings`` without what only selects items (the tasks run, their limits) or only scores them
    (``answers=False``): a resumed run may change it."""
    selecting = {t.name: {f.name for f in dataclasses.fields(t.options)
                          if f.metadata.get("selects") or not f.metadata.get("answers", True)} for t in tasks}
    options = {name: {k: v for k, v in fields.items() if k not in selecting.get(name, ())}
               for name, fields in values["eval"]["options"].items()}
    return {**{k: v for k, v in values["eval"].items() if k not in ("benchmarks", "options")}, "options": options}


def _answer_key(method: dict) -> dict:
    """A method's settings that decide its answers: a prefix counts by its weights' hash, not by where it lies."""
    return {k: v for k, v in method.items() if not (k == "prefix" and method.get("prefix_sha256"))}


def _evaluation_changes(previous: dict, current: dict, tasks: list[Task]) -> list[str]:
    """What differs between two evaluation settings in a way that changes answers (another model, a method's
    settings, the prompt format, the token limits...); more methods or tasks than before are fine."""
    if previous.get("format") != SETTINGS_FORMAT:
        return ["the folder's layout, written by another version of ctd_hf"]
    if previous.get("engine", "hf") != current["engine"]:  # folders written before engines existed are hf's
        return [f"the engine: {previous.get('engine', 'hf')}, now {current['engine']}"]
    if previous["model"] != current["model"]:
        old, new = previous["model"], current["model"]
        return [f"another model: {old['name']}, {old['dtype']}, weights {old['fingerprint'][:12]}; now {new['name']}, "
                f"{new['dtype']}, weights {new['fingerprint'][:12]}"]
    changed = []
    for label in sorted(set(previous["methods"]) & set(current["methods"])):
        old, new = _answer_key(previous["methods"][label]), _answer_key(current["methods"][label])
        changed += [f"{label}'s {key} ({old.get(key)!r} -> {new.get(key)!r})" for key in sorted({*old, *new})
                    if old.get(key) != new.get(key)]
    old, new = _resume_key(previous, tasks), _resume_key(current, tasks)
    changed += [key for key, value in new.items() if key != "options" and old.get(key) != value]
    return changed + [f"{name} options" for name, value in new["options"].items()
                      if name in old.get("options", {}) and old["options"][name] != value]
