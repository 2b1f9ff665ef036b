"""``ctd-hf generate``: decode prompts with od (plain), id, cd or ctd."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import transformers
from tqdm.auto import tqdm

from ..decoding.batch import check_prompt_lengths, generate_answers
from ..decoding.methods import METHODS, DecodingMethod
from ..models import load_model_and_tokenizer
from ..records import load_json_records
from .arguments import (
    add_decoding_arguments,
    add_method_arguments,
    add_model_arguments,
    add_prompt_format_argument,
    check_method_arguments,
    decoding_options,
    load_amateur,
    method_kwargs,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser("generate", help="Decode prompts with od (plain), id, cd or ctd.")
    add_model_arguments(gen)
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="A user message (repeat for several).")
    source.add_argument("--prompts-file", help="JSON list / JSONL of prompts (strings, or objects with `prompt` or "
                                               "`instruction` and optional `input`), or a text file of one prompt a "
                                               "line.")
    add_prompt_format_argument(gen)
    gen.add_argument("--method", default=None, choices=METHODS,
                     help="od: plain; id: Instructive Decoding; cd: Contrastive Decoding; ctd: CTD (default: ctd "
                          "with --prefix, else od).")
    add_method_arguments(gen)
    add_decoding_arguments(gen)
    gen.add_argument("--output", default=None, help="Write JSONL here instead of printing.")
    gen.set_defaults(func=run)


def read_prompts(args: argparse.Namespace) -> list[dict]:
    """User messages from --prompt or --prompts-file: a JSON list or JSONL of records with ``prompt`` or
    ``instruction`` (and optional ``input``), or strings; any other file holds one prompt per line."""
    if args.prompt:
        return [{"role": "user", "content": text} for text in args.prompt]
    path = Path(args.prompts_file)
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
    name = args.method or ("ctd" if args.prefix else "od")
    check_method_arguments(args, [name])
    messages = read_prompts(args)
    if args.output and Path(args.output).is_dir():
        raise IsADirectoryError(f"--output {args.output} is a folder; name a file to write JSONL to.")
    if args.output and args.prompts_file and Path(args.output).resolve() == Path(args.prompts_file).resolve():
        raise ValueError(f"--output {args.output} is the prompts file: writing the answers would overwrite the "
                         "prompts. Name another file.")
    transformers.set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    amateur = load_amateur(args, args.model, model) if name == "cd" else None
    method = DecodingMethod(name, amateur=amateur, **method_kwargs(args, name))
    method.check(model, tokenizer)
    check_prompt_lengths(model, tokenizer, messages, args.prompt_format, args.max_new_tokens, method.prefix_length)
    records, sink = [], open(args.output, "w") if args.output else sys.stdout
    try:
        for start in tqdm(range(0, len(messages), args.batch_size), desc="Generating", unit="batch", file=sys.stderr):
            batch = messages[start : start + args.batch_size]
            answers = generate_answers(model, tokenizer, batch, method, args.prompt_format, **decoding_options(args))
            for message, answer in zip(batch, answers):
                record = {"prompt": message["content"], "input": message.get("input", ""), "output": answer,
                          **method.settings()}
                records.append(record)
                print(json.dumps(record, ensure_ascii=False), file=sink, flush=True)
    finally:
        if sink is not sys.stdout:
            sink.close()
    return records
