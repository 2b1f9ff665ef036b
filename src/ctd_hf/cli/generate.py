"""``ctd-hf generate``: decode prompts with od (plain), id, cd or ctd."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import transformers
from tqdm.auto import tqdm

from ..decoding.answers import GenerationSettings, check_prompt_lengths, generate_answers
from ..decoding.methods import method_class
from ..prompts import prompt_format_setting
from ..records import load_json_records
from ..settings import SettingError, check_settings, positive_int, setting
from .arguments import (EngineArguments, ModelArguments, add_method_flags, check_method_arguments, given_method_flag,
                        method_from_flags)
from .flags import add_flags, values


@dataclass(kw_only=True)
class GenerateCommand:
    prompt: list[str] | None = setting(None, repeat=True, help="A user message (repeat for several).")
    prompts_file: str | None = setting(None, help=(
        "JSON list / JSONL of prompts (strings, or objects with `prompt` or `instruction` and optional `input`), or "
        "a text file of one prompt a line."))
    prompt_format: str = prompt_format_setting()
    method: str | None = setting(None, check=lambda name: method_class(name).name, help=(
        "A registered method: od (plain), id (Instructive Decoding), cd (Contrastive Decoding), ctd, ctd-lora "
        "(default: ctd with --prefix, else od)."))
    batch_size: int = setting(8, check=positive_int, help="Prompts per generate() call.")
    seed: int = setting(0, help="Seeds sampling.")
    output: str | None = setting(None, help="Write JSONL here instead of printing.")

    def __post_init__(self) -> None:
        check_settings(self)
        if (self.prompt is None) == (self.prompts_file is None):
            raise SettingError("prompt", "is one way to give the prompts and `prompts_file` the other: pass "
                                         "exactly one of them.")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="Decode prompts with od (plain), id, cd or ctd.")
    flags: dict[str, str] = {}
    add_flags(parser, ModelArguments, flags)
    add_flags(parser, GenerateCommand, flags)
    add_method_flags(parser, flags)
    add_flags(parser.add_argument_group("generation"), GenerationSettings, flags)
    add_flags(parser.add_argument_group("engine"), EngineArguments, flags)
    parser.set_defaults(func=run, flags=flags)


def read_prompts(command: GenerateCommand) -> list[dict]:
    """User messages from --prompt or --prompts-file: a JSON list or JSONL of records with ``prompt`` or
    ``instruction`` (and optional ``input``), or strings; any other file holds one prompt per line."""
    if command.prompt:
        return [{"role": "user", "content": text} for text in command.prompt]
    path = Path(command.prompts_file)
    if path.suffix in (".json", ".jsonl") or path.name.endswith((".json.gz", ".jsonl.gz")):
        return [_message(record) for record in load_json_records(path, _message)]
    if not path.is_file():
        raise FileNotFoundError(f"The prompts file {path} does not exist.")
    messages = [{"role": "user", "content": line} for line in path.read_text().splitlines() if line.strip()]
    if not messages:
        raise ValueError(f"{path} holds no prompt.")
    return messages


def _message(record: object) -> dict:
    """A user message from a prompts-file record (a string, or an object with ``prompt`` or ``instruction``)."""
    if isinstance(record, str):
        content, task_input = record, ""
    elif isinstance(record, dict) and isinstance(record.get("prompt", record.get("instruction")), str):
        content, task_input = record.get("prompt", record.get("instruction")), record.get("input") or ""
    else:
        raise ValueError("a prompt is a string or an object with a string `prompt` or `instruction`.")
    if not content.strip():
        raise ValueError("the prompt is empty.")
    return {"role": "user", "content": content, "input": task_input}


def run(args: argparse.Namespace) -> list[dict]:
    """Decode prompts from parsed arguments; prints or writes one JSON line per prompt and returns the records."""
    command = GenerateCommand(**values(args, GenerateCommand))
    generation = GenerationSettings(**values(args, GenerationSettings))
    engine_arguments = EngineArguments(**values(args, EngineArguments))
    name = command.method or ("ctd" if given_method_flag(args, "--prefix") else "od")
    check_method_arguments(args, [name])
    method = method_from_flags(args, name)
    messages = read_prompts(command)
    output = command.output
    if output and Path(output).is_dir():
        raise IsADirectoryError(f"--output {output} is a folder; name a file to write JSONL to.")
    if output and command.prompts_file and Path(output).resolve() == Path(command.prompts_file).resolve():
        raise ValueError(f"--output {output} is the prompts file: writing the answers would overwrite the prompts. "
                         "Name another file.")
    model, tokenizer = engine_arguments.load(args.model, args.dtype)
    bound = method.bind(model, tokenizer)
    engine = engine_arguments.build(model, command.seed)
    transformers.set_seed(command.seed)  # after loading, which may draw from the generator (see tuning.tune)
    check_prompt_lengths(bound, messages, command.prompt_format, generation.max_new_tokens,
                         fix=f"shorten it or lower {args.flags['max_new_tokens']}", engine=engine)
    records, sink = [], open(output, "w") if output else sys.stdout
    try:
        for start in tqdm(range(0, len(messages), command.batch_size), desc="Generating", unit="batch",
                          file=sys.stderr):
            batch = messages[start : start + command.batch_size]
            answers = generate_answers(model, tokenizer, batch, bound, command.prompt_format, engine=engine,
                                       **generation.generate_kwargs())
            for message, answer in zip(batch, answers):
                record = {"prompt": message["content"], "input": message.get("input", ""), "output": answer,
                          **method.settings()}
                records.append(record)
                print(json.dumps(record, ensure_ascii=False), file=sink, flush=True)
    finally:
        if sink is not sys.stdout:
            sink.close()
    return records
