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
from ..training.prefix import resolve_prefix
from .arguments import (add_decoding_arguments, add_method_arguments, add_model_arguments,
                        add_prompt_format_argument, decoding_options, method_kwargs)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser("generate", help="Decode prompts with od (plain), id, cd or ctd.")
    add_model_arguments(gen)
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="A user message (repeat for several).")
    source.add_argument("--prompts-file", help="Text file (one prompt a line) or JSONL with instruction[/input] or prompt.")
    add_prompt_format_argument(gen)
    gen.add_argument("--method", default=None, choices=METHODS,
                     help="od: plain; id: Instructive Decoding; cd: Contrastive Decoding; ctd: CTD (default: ctd "
                          "with --prefix, else od).")
    add_method_arguments(gen)
    add_decoding_arguments(gen)
    gen.add_argument("--output", default=None, help="Write JSONL here instead of printing.")
    gen.set_defaults(func=run)


def read_prompts(args: argparse.Namespace) -> list[dict]:
    """User messages from --prompt or --prompts-file (plain lines, or JSONL with instruction/input or prompt)."""
    if args.prompt:
        return [{"role": "user", "content": text} for text in args.prompt]
    messages = []
    for number, line in enumerate(Path(args.prompts_file).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if args.prompts_file.endswith(".jsonl"):
            record = json.loads(line)
            if "prompt" not in record and "instruction" not in record:
                raise ValueError(f"{args.prompts_file}:{number} has neither `prompt` nor `instruction`.")
            content = record.get("prompt", record.get("instruction"))
            messages.append({"role": "user", "content": content, "input": record.get("input") or ""})
        else:
            messages.append({"role": "user", "content": line})
    if not messages:
        raise ValueError(f"{args.prompts_file} holds no prompt.")
    return messages


def run(args: argparse.Namespace) -> list[dict]:
    """Decode prompts from parsed arguments; prints or writes one JSON line per prompt and returns the records."""
    transformers.set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    name = args.method or ("ctd" if args.prefix else "od")
    amateur = load_model_and_tokenizer(args.amateur, dtype=args.dtype)[0] if name == "cd" and args.amateur else None
    method = DecodingMethod(name, amateur=amateur, **method_kwargs(args, name))
    messages = read_prompts(args)
    prefix_length = resolve_prefix(model, args.prefix).shape[0] if method.name == "ctd" else 0
    check_prompt_lengths(model, tokenizer, messages, args.prompt_format, args.max_new_tokens, prefix_length)
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
