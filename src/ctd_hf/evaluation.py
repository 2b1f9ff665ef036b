"""The evaluation runner: every method on every benchmark, predictions written as they are produced.

Predictions go to ``<output_dir>/predictions/<benchmark>/<method>.<rank>.jsonl`` batch by batch, so a killed run
restarted with the same settings answers only what is missing; under ``accelerate launch`` rank ``r`` answers the
items whose index is ``r`` modulo the number of processes. Scoring and reports (``ctd_hf.report``) read the files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .benchmarks import LETTERS, load_alpacaeval, load_drop, load_mmlu, load_superni
from .methods import DecodingMethod
from .prompts import encode_prompt, format_prompt
from .records import append_records, process_state, read_records
from .report import build_report, method_settings

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@dataclass
class EvalSettings:
    """What to evaluate and how; the defaults follow the CTD and ID papers' protocol (greedy, 128 new tokens,
    1024 source tokens, first 100 instances per SuperNI task)."""

    benchmarks: tuple[str, ...] = ("superni",)
    superni_dir: str = str(SHARED_DATA / "supernatinst")
    superni_tasks: str = "default/test_tasks.txt"
    superni_categories: str | None = None
    max_instances: int = 100
    drop_path: str = str(SHARED_DATA / "drop" / "drop_dev.jsonl.gz")
    drop_limit: int | None = 500
    mmlu_path: str = str(SHARED_DATA / "mmlu" / "mmlu.jsonl.gz")
    mmlu_shots: int = 0
    mmlu_limit: int | None = None
    alpacaeval_path: str = str(SHARED_DATA / "alpaca_eval" / "alpaca_eval.json.gz")
    alpacaeval_limit: int | None = None
    prompt_format: str = "chatml"
    batch_size: int = 8
    max_new_tokens: dict[str, int] = field(default_factory=lambda: {"superni": 128, "drop": 32, "alpacaeval": 512})
    max_source_tokens: int = 1024
    token_changes: bool = True

    def items(self, benchmark: str) -> list[dict]:
        """The benchmark's items (see ``ctd_hf.benchmarks``)."""
        if benchmark == "superni":
            return load_superni(self.superni_dir, self.superni_tasks, self.max_instances, self.superni_categories)
        if benchmark == "drop":
            return load_drop(self.drop_path, self.drop_limit)
        if benchmark == "mmlu":
            return load_mmlu(self.mmlu_path, self.mmlu_shots, self.mmlu_limit)
        if benchmark == "alpacaeval":
            return load_alpacaeval(self.alpacaeval_path, self.alpacaeval_limit)
        raise ValueError(f"Unknown benchmark {benchmark!r}; choose from superni, drop, mmlu, alpacaeval.")


def truncate_message(message: dict, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> dict:
    """Cut the task input so that instruction and input together hold at most ``max_tokens`` tokens."""
    head = len(tokenizer(message["content"] + "\n\n", add_special_tokens=False)["input_ids"])
    ids = tokenizer(message["input"], add_special_tokens=False)["input_ids"]
    if head + len(ids) <= max_tokens:
        return message
    return {**message, "input": tokenizer.decode(ids[: max(max_tokens - head, 0)])}


def _letter_ids(tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """For each answer letter, the first token of ``"A"`` and of ``" A"`` (whichever the model would write)."""
    return [sorted({tokenizer(text, add_special_tokens=False)["input_ids"][0] for text in (letter, " " + letter)})
            for letter in LETTERS]


def _original_predictions(processor: Any, chosen: torch.Tensor, eos_ids: set[int]) -> list[dict]:
    """Per row: the original model's argmax and max probability and the chosen token, up to the row's EOS."""
    rows = []
    for row in range(chosen.shape[0]):
        record = {"original": [], "max_prob": [], "chosen": []}
        for step, (argmax, max_prob) in enumerate(processor.original):
            token = int(chosen[row, step])
            record["original"].append(int(argmax[row]))
            record["max_prob"].append(round(float(max_prob[row]), 6))
            record["chosen"].append(token)
            if token in eos_ids:
                break
        rows.append(record)
    return rows


def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    method: DecodingMethod,
    benchmark: str,
    items: list[dict],
    settings: EvalSettings,
    output_dir: str | Path,
) -> Path:
    """Write this process's share of ``method``'s predictions on ``benchmark``, resuming what is already written."""
    state = process_state()
    folder = Path(output_dir) / "predictions" / benchmark
    path = folder / f"{name}.{state.process_index}.jsonl"
    read_records(path, repair=True)
    done = {record["id"] for shard in folder.glob(f"{name}.*.jsonl") for record in read_records(shard)}
    mine = [item for index, item in enumerate(items) if index % state.num_processes == state.process_index]
    todo = [item for item in mine if item["id"] not in done]
    if benchmark in ("superni", "drop"):
        todo = [{**item, "message": truncate_message(item["message"], tokenizer, settings.max_source_tokens)}
                for item in todo]
    # Longest prompts first: similar lengths share a batch (less padding) and memory peaks early.
    lengths = {item["id"]: len(encode_prompt(format_prompt([item["message"]], settings.prompt_format, tokenizer),
                                             tokenizer, settings.prompt_format)) for item in todo}
    todo.sort(key=lambda item: (-lengths[item["id"]], item["id"]))
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    record_original = settings.token_changes and method.name != "od" and benchmark != "mmlu"
    for start in tqdm(range(0, len(todo), settings.batch_size), desc=f"{benchmark}/{name}", unit="batch",
                      disable=not state.is_local_main_process):
        batch = todo[start : start + settings.batch_size]
        messages = [item["message"] for item in batch]
        if benchmark == "mmlu":
            output, _, _ = method.run(model, tokenizer, messages, settings.prompt_format, max_new_tokens=1,
                                      do_sample=False, output_scores=True, return_dict_in_generate=True)
            scores = output.scores[0].float()
            letters = torch.stack([scores[:, ids].max(dim=-1).values for ids in _letter_ids(tokenizer)], dim=-1)
            records = [{"id": item["id"], "prediction": LETTERS[int(choice)]}
                       for item, choice in zip(batch, letters.argmax(dim=-1))]
        else:
            output, prompt_length, processor = method.run(
                model, tokenizer, messages, settings.prompt_format, record_original=record_original,
                max_new_tokens=settings.max_new_tokens.get(benchmark, 128), do_sample=False)
            chosen = output[:, prompt_length:]
            answers = tokenizer.batch_decode(chosen, skip_special_tokens=True)
            records = [{"id": item["id"], "prediction": answer.strip()} for item, answer in zip(batch, answers)]
            if record_original:
                for record, changes in zip(records, _original_predictions(processor, chosen, eos_ids)):
                    record.update(changes)
        append_records(path, records)
    return path


def collect_predictions(output_dir: str | Path, benchmark: str, name: str) -> dict[str, dict]:
    """All processes' predictions of one method on one benchmark, by item id."""
    folder = Path(output_dir) / "predictions" / benchmark
    return {record["id"]: record for path in sorted(folder.glob(f"{name}.*.jsonl")) for record in read_records(path)}


def run_evaluation(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    methods: dict[str, DecodingMethod],
    settings: EvalSettings,
    output_dir: str | Path,
    model_name: str,
    seed: int = 0,
) -> dict | None:
    """Run every method on every benchmark (resuming written predictions), then score and report.

    Under ``accelerate launch`` every process predicts its share and the main process writes the report and
    returns it (the others return None).
    """
    state = process_state()
    run_settings = {"seed": seed, "methods": {n: method_settings(m) for n, m in methods.items()},
                    "eval": {k: v for k, v in vars(settings).items()}}
    _check_resumable(Path(output_dir), run_settings, state.is_main_process)
    items = {benchmark: settings.items(benchmark) for benchmark in settings.benchmarks}
    for benchmark, benchmark_items in items.items():
        for name, method in methods.items():
            predict(model, tokenizer, name, method, benchmark, benchmark_items, settings, output_dir)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    results = {b: (items[b], {n: collect_predictions(output_dir, b, n) for n in methods}) for b in items}
    return build_report(output_dir, results, run_settings, model_name)


def _check_resumable(output_dir: Path, run_settings: dict, is_main_process: bool) -> None:
    """Refuse to add predictions to a folder written with other settings (a method's settings, the prompt format, the
    token limits...): a resumed run must not mix them. More methods or benchmarks than before are fine."""
    path = output_dir / "eval_settings.json"
    current = json.loads(json.dumps(run_settings, default=str))
    if path.is_file():
        previous = json.loads(path.read_text())
        shared = set(previous["methods"]) & set(current["methods"])
        changed = [f"method {n}" for n in sorted(shared) if previous["methods"][n] != current["methods"][n]]
        ignored = ("benchmarks", "drop_limit", "mmlu_limit", "alpacaeval_limit", "max_instances")
        changed += [key for key, value in current["eval"].items()
                    if key not in ignored and previous["eval"].get(key) != value]
        if changed:
            raise ValueError(f"{output_dir} holds predictions made with other settings ({', '.join(changed)}): use a "
                             "new --output-dir, or delete the folder to start over.")
    if is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=2) + "\n")
