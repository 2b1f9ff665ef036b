"""``ctd-hf synth``: CoDIT, answer instructions by contrastive decoding between an instruct model and its base model,
writing an instruction-tuning dataset (resumable; shards under ``accelerate launch``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import datasets

from ..decoding.batch import check_prompt_lengths
from ..decoding.methods import METHODS, DecodingMethod
from ..distributed import process_state
from ..models import load_model_and_tokenizer
from ..prompts import PROMPT_FORMATS
from ..synthesis import OUTPUT_FORMATS, load_instructions, synthesize
from .arguments import (
    add_decoding_arguments,
    add_method_arguments,
    add_model_arguments,
    check_method_arguments,
    decoding_options,
    load_amateur,
    method_kwargs,
    output_folder,
    positive_int,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    synth = subparsers.add_parser(
        "synth", help="CoDIT: answer instructions with contrastive decoding (an instruct model vs its base model), "
                      "writing an instruction-tuning dataset (resumable; shards under `accelerate launch`).")
    add_model_arguments(synth, "--expert")
    synth.add_argument("--instructions", required=True,
                       help="JSON/JSONL file (gzip allowed) of records with `instruction`, optional `input`/`id`.")
    synth.add_argument("--output-dir", type=output_folder, required=True,
                       help="Shards, data.jsonl, dataset/ and synthesis_config.json.")
    synth.add_argument("--limit", type=positive_int, default=None, help="Answer only the first N instructions.")
    synth.add_argument("--also-plain", action="store_true", help="Also store the expert's plain answer (output_plain).")
    synth.add_argument("--format", dest="output_format", default="alpaca", choices=OUTPUT_FORMATS)
    synth.add_argument("--prompt-format", default="chatml", choices=PROMPT_FORMATS)
    synth.add_argument("--method", default=None, choices=METHODS,
                       help="Default: cd (CoDIT; --amateur is the expert's pre-trained base model), or ctd with "
                            "--prefix.")
    add_method_arguments(synth)
    add_decoding_arguments(synth)
    synth.set_defaults(func=run)


def run(args: argparse.Namespace) -> datasets.Dataset | None:
    """Run ``ctd-hf synth`` from parsed arguments (method cd unless --method, or --prefix for ctd, says otherwise)."""
    name = args.method or ("ctd" if args.prefix else "cd")
    if name == "cd" and not args.amateur:
        raise ValueError("Method cd needs --amateur: the expert's pre-trained base model (CoDIT contrasts the two).")
    check_method_arguments(args, [name])
    device = process_state().device
    records = load_instructions(args.instructions, args.limit)
    expert, tokenizer = load_model_and_tokenizer(args.expert, dtype=args.dtype, device=device)
    amateur = load_amateur(args, args.expert, expert, device) if name == "cd" else None
    method = DecodingMethod(name, amateur=amateur, **method_kwargs(args, name))
    method.check(expert, tokenizer)
    messages = [{"role": "user", "content": r["instruction"], "input": r["input"]} for r in records]
    check_prompt_lengths(expert, tokenizer, messages, args.prompt_format, args.max_new_tokens, method.prefix_length)
    dataset = synthesize(expert, tokenizer, args.instructions, args.output_dir, method, args.prompt_format,
                         args.batch_size, decoding_options(args), args.also_plain, args.output_format, args.limit,
                         args.seed)
    if dataset is not None:
        print(f"Wrote {len(dataset)} examples to {Path(args.output_dir, 'data.jsonl')} and "
              f"{Path(args.output_dir, 'dataset')}", file=sys.stderr)
    return dataset
