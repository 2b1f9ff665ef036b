"""CoDIT dataset synthesis: a decoding method (usually Contrastive Decoding between a post-trained instruct model,
the expert, and its pre-trained base, the amateur) answers instructions, giving an instruction-tuning dataset.

Answers go to per-rank JSONL shards in the output folder, one line per instruction, flushed and fsynced after every
batch. A rerun keeps every complete line (cutting off a line torn by a kill) and answers only the instructions still
missing, so a run killed at any point and restarted answers each instruction exactly once. Each instruction's key is
its index in the source; rank ``r`` of ``w`` answers the keys ``k`` with ``k % w == r``. When all are answered, rank
0 merges the shards in key order into ``data.jsonl`` and ``dataset/`` (``save_to_disk``), beside
``synthesis_config.json``. With greedy decoding the result does not depend on batching, kills or the number of
processes (batched left-padded greedy decoding equals per-row decoding in fp32); sampled answers do.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import transformers
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ._version import __version__
from .decoding.answers import GenerationSettings, check_prompt_lengths, generate_answers
from .decoding.engine import Engine, TransformersEngine
from .decoding.methods import DecodingMethod, ODMethod
from .distributed import process_state
from .models import fingerprint
from .prompts import prompt_format_setting
from .records import (append_records, check_output_folder, check_resumable, load_json_records, read_records, write_json,
                      write_text)
from .settings import check_settings, check_value, positive_int, setting

logger = logging.getLogger(__name__)
OUTPUT_FORMATS = ("alpaca", "messages")
CONFIG_NAME = "synthesis_config.json"
# Settings that decide the answers: a rerun into a folder written with other values is refused.
_GENERATION_KEYS = ("expert", "expert_fingerprint", "amateur", "amateur_fingerprint", "method", "engine",
                    "generate_kwargs", "prompt_format", "seed", "also_plain")
_BEFORE = {"engine": "hf"}  # the value of a key that folders written before it existed had


def load_instructions(
    source: str | Path | datasets.Dataset | list[dict], limit: int | None = None
) -> list[dict[str, Any]]:
    """Instructions as ``{"key", "instruction", "input"[, "id"]}`` records, ``key`` being the index in ``source``.

    ``source`` is a JSON list or JSONL file (optionally gzipped, like AlpacaEval's ``alpaca_eval.json.gz``), a
    ``datasets.Dataset`` or a list of dicts, each with ``instruction`` and optional ``input`` and ``id``.
    ``limit`` keeps the first ``limit`` instructions.
    """
    rows = load_json_records(source, _check_instruction) if isinstance(source, (str, Path)) else source
    if limit is not None:
        limit = check_value("limit", limit, positive_int)
        rows = rows.select(range(min(limit, len(rows)))) if isinstance(rows, datasets.Dataset) else rows[:limit]
    records = []
    for key, row in enumerate(rows):
        try:
            _check_instruction(row)
        except ValueError as error:
            raise ValueError(f"Instruction {key} of the data: {error}") from None
        record = {"key": key, "instruction": row["instruction"], "input": row.get("input") or ""}
        if row.get("id") is not None:
            record["id"] = row["id"]
        records.append(record)
    if not records:
        raise ValueError(f"{source} holds no instruction.")
    return records


def _check_instruction(row: Any) -> None:
    if not isinstance(row, dict) or not isinstance(row.get("instruction"), str) or not row["instruction"].strip():
        raise ValueError(f"an instruction record needs a non-empty string `instruction`, got {str(row)[:200]}.")


@dataclass(kw_only=True)
class SynthSettings:
    """How instructions are answered and the dataset written (the method and the models come separately)."""

    prompt_format: str = prompt_format_setting()
    generation: GenerationSettings = setting(default_factory=GenerationSettings, cli=False,
                                             help="generate() options (default: 128 new tokens, greedy).")
    batch_size: int = setting(8, check=positive_int, help="Prompts per generate() call.")
    also_plain: bool = setting(False, help="Also store the expert's plain answer (output_plain).")
    output_format: str = setting("alpaca", choices=OUTPUT_FORMATS, flag="--format",
                                 help="alpaca: instruction, input, output; messages: a user and an assistant message.")
    limit: int | None = setting(None, check=positive_int, help="Answer only the first N instructions.")
    seed: int = setting(0, help="Seeds sampling (with the process's rank added).")

    def __post_init__(self) -> None:
        check_settings(self)


def synthesize(
    expert: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    instructions: str | Path | datasets.Dataset | list[dict],
    output_dir: str | Path,
    method: DecodingMethod,
    settings: SynthSettings | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    engine: Engine | None = None,
    restart: bool = False,
) -> datasets.Dataset | None:
    """Answer ``instructions`` with ``method`` on ``expert`` and write the dataset to ``output_dir`` (resumable).

    ``settings.also_plain`` also stores the expert's plain answer (method ``od``, the same options without sampling)
    as ``output_plain``. ``rank``/``world_size`` default to accelerate's ``PartialState`` (``accelerate launch`` or
    ``torchrun``); separate jobs may pass them instead, and a final ``world_size=1`` run then merges. Sampling is
    seeded with ``seed + rank``. ``engine`` decodes instead of ``model.generate()`` (a
    :class:`ctd_hf.integrations.vllm.VLLMEngine`); the folder's config records which. ``restart`` deletes a run of
    other settings in ``output_dir`` instead of refusing it.

    Returns the merged dataset on the process that merges (rank 0, once every instruction is answered), else None.
    """
    settings = settings or SynthSettings()
    state = process_state()
    rank = state.process_index if rank is None else rank
    world_size = state.num_processes if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"`rank` must be in [0, {world_size}), got {rank}.")
    kwargs = settings.generation.generate_kwargs()
    records = load_instructions(instructions, settings.limit)
    engine = engine or TransformersEngine()
    expert_fingerprint = fingerprint(expert)  # before the method binds (a LoRA method adds layers to the model)
    bound = method.bind(expert, tokenizer)
    amateur = bound.models.get("amateur")
    messages = {r["key"]: {"role": "user", "content": r["instruction"], "input": r["input"]} for r in records}
    check_prompt_lengths(bound, list(messages.values()), settings.prompt_format, kwargs["max_new_tokens"],
                         engine=engine)
    output_dir = check_output_folder(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "ctd_hf_version": __version__,
        "expert": str(expert.name_or_path),
        "expert_fingerprint": expert_fingerprint,
        "amateur": str(amateur.name_or_path) if amateur is not None else None,
        "amateur_fingerprint": fingerprint(amateur) if amateur is not None else None,
        "method": method.settings(),
        "engine": engine.name,
        "generate_kwargs": kwargs,
        "prompt_format": settings.prompt_format,
        "seed": settings.seed,
        "also_plain": settings.also_plain,
        "instructions": str(instructions) if isinstance(instructions, (str, Path)) else type(instructions).__name__,
    }
    config = json.loads(json.dumps(config, default=str))
    check_resumable(output_dir, CONFIG_NAME, {**config, "complete": False}, changes=_generation_changes,
                    write=rank == 0 and (restart or not (output_dir / CONFIG_NAME).is_file()), restart=restart)
    if state.num_processes > 1:
        state.wait_for_everyone()  # a restart's deletion is done before any process reads the shards

    shard = output_dir / f"shard-{rank:05d}-of-{world_size:05d}.jsonl"
    read_records(shard, repair=True)
    done = _answered(output_dir, records)
    todo = [r for r in records if r["key"] % world_size == rank and r["key"] not in done]
    transformers.set_seed(settings.seed + rank)
    plain = ODMethod().bind(expert, tokenizer)
    plain_kwargs = {k: v for k, v in kwargs.items() if k not in ("temperature", "top_k", "top_p")}
    plain_kwargs["do_sample"] = False
    plain_is_output = method == ODMethod() and not kwargs["do_sample"]
    size = settings.batch_size
    batches = [todo[start : start + size] for start in range(0, len(todo), size)]
    desc = "Synthesizing" + (f" (rank {rank}/{world_size})" if world_size > 1 else "")
    for batch in tqdm(batches, desc=desc, unit="batch", file=sys.stderr, position=rank if world_size > 1 else None):
        batch_messages = [messages[r["key"]] for r in batch]
        answers = generate_answers(expert, tokenizer, batch_messages, bound, settings.prompt_format, engine, **kwargs)
        rows = [{**r, "output": answer} for r, answer in zip(batch, answers)]
        if settings.also_plain:
            plain_answers = answers if plain_is_output else generate_answers(
                expert, tokenizer, batch_messages, plain, settings.prompt_format, engine, **plain_kwargs)
            rows = [{**row, "output_plain": answer} for row, answer in zip(rows, plain_answers)]
        append_records(shard, rows)

    if state.num_processes > 1:
        state.wait_for_everyone()
    if rank != 0:
        return None
    answered = _answered(output_dir, records)
    missing = len(records) - len(answered)
    if missing:
        logger.info("%d of %d instructions still lack an answer (other ranks' jobs?): not merged yet.", missing,
                    len(records))
        return None
    return _merge(output_dir, [answered[r["key"]] for r in records], config, settings.output_format,
                  settings.also_plain)


def _generation_changes(previous: dict, current: dict) -> list[str]:
    """The settings that decide the answers and differ (the instructions file and the merge state may change)."""
    return [f"{key}: {previous.get(key, _BEFORE.get(key))!r} -> {current[key]!r}" for key in _GENERATION_KEYS
            if previous.get(key, _BEFORE.get(key)) != current[key]]


def _answered(output_dir: Path, records: list[dict]) -> dict[int, dict]:
    """Answers already in any shard of ``output_dir``, by key, checked against the instructions they answer."""
    by_key = {r["key"]: r for r in records}
    answered: dict[int, dict] = {}
    for path in sorted(output_dir.glob("shard-*.jsonl")):
        for row in read_records(path):
            source = by_key.get(row["key"])
            if source is None or row["key"] in answered:
                continue  # beyond `limit` this time, or a duplicate (kept once)
            was = {"instruction": row.get("instruction"), "input": row.get("input") or ""}
            changed = [f"{field} {was[field]!r} -> {source[field]!r}" for field in was if was[field] != source[field]]
            if changed:
                raise ValueError(f"{path} answers instruction {row['key']}, whose {'; '.join(changed)} changed in the "
                                 "instructions since: use a new output folder, or start over in this one (--restart; "
                                 "in Python restart=True).")
            answered[row["key"]] = row
    return answered


def _merge(output_dir: Path, rows: list[dict], config: dict, output_format: str, also_plain: bool) -> datasets.Dataset:
    """Write ``data.jsonl``, ``dataset/`` and the final ``synthesis_config.json`` from the answers in key order."""
    with_ids = any("id" in row for row in rows)
    merged = []
    for row in rows:
        if output_format == "alpaca":
            record = {"instruction": row["instruction"], "input": row["input"], "output": row["output"]}
        else:
            content = f"{row['instruction']}\n\n{row['input']}" if row["input"] else row["instruction"]
            record = {"messages": [{"role": "user", "content": content},
                                   {"role": "assistant", "content": row["output"]}]}
        if also_plain:
            record["output_plain"] = row["output_plain"]
        if with_ids:
            record["id"] = row.get("id")
        merged.append(record)
    write_text(output_dir / "data.jsonl", "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in merged))
    dataset = datasets.Dataset.from_list(merged)
    staging, final = output_dir / "dataset.tmp", output_dir / "dataset"
    shutil.rmtree(staging, ignore_errors=True)
    dataset.save_to_disk(str(staging))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    write_json(output_dir / CONFIG_NAME, {**config, "output_format": output_format,
                                           "num_instructions": len(merged), "complete": True})
    return dataset
