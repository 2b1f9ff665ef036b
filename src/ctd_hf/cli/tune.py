"""``ctd-hf tune``: contrastive tuning of a correction prefix (or LoRA adapter) on SFT data, resumable."""

from __future__ import annotations

import argparse
import json

from ..training.tuning import ADAPTERS, INITS, TuneSettings, tune
from .arguments import (add_model_arguments, add_prompt_format_argument, output_folder, positive_float, positive_int,
                        unit_interval)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    defaults = TuneSettings()
    tune_parser = subparsers.add_parser("tune", help="Contrastive tuning: train a correction prefix (or LoRA) on "
                                                     "SFT data; a rerun resumes.")
    add_model_arguments(tune_parser)
    add = tune_parser.add_argument
    add("--data", default=defaults.data, help="SFT data: JSON/JSONL file, save_to_disk folder or dataset name "
                                              "(default: the shipped 999-example Alpaca sample).")
    add_prompt_format_argument(tune_parser)
    add("--fraction", type=unit_interval, default=defaults.fraction, help="Seeded random fraction of the data.")
    add("--max-length", type=positive_int, default=defaults.max_length, help="Tokens per example; longer ones lose "
                                                                             "their end.")
    add("--output-dir", type=output_folder, required=True, help="Checkpoints and the final adapter go here.")
    add("--adapter", default=defaults.adapter, choices=ADAPTERS, help="What the correction model adds.")
    add("--num-virtual-tokens", type=positive_int, default=defaults.num_virtual_tokens)
    add("--init", default=defaults.init, choices=INITS, help="Prefix initialisation.")
    add("--init-text", default=None, help="Text whose token embeddings start the prefix (--init text).")
    add("--lora-r", type=positive_int, default=defaults.lora_r)
    add("--alpha", type=positive_float, default=defaults.alpha, help="Contrast strength of the loss.")
    add("--lr", type=positive_float, default=defaults.learning_rate,
        help="Learning rate (the paper's 9e-4 barely moves a 135M model).")
    add("--epochs", type=positive_float, default=defaults.epochs)
    add("--max-steps", type=positive_int, default=None, help="Stop after this many optimizer steps (overrides "
                                                             "--epochs).")
    add("--batch-size", type=positive_int, default=defaults.batch_size)
    add("--grad-accum", type=positive_int, default=defaults.grad_accum)
    add("--save-steps", type=positive_int, default=defaults.save_steps,
        help="Checkpoint every N steps; a rerun resumes from the last.")
    add("--seed", type=int, default=defaults.seed)
    tune_parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    """Run contrastive tuning from parsed arguments; prints and returns the training metrics."""
    settings = TuneSettings(
        data=args.data, prompt_format=args.prompt_format, fraction=args.fraction, max_length=args.max_length,
        adapter=args.adapter, num_virtual_tokens=args.num_virtual_tokens, init=args.init, init_text=args.init_text,
        lora_r=args.lora_r, alpha=args.alpha, learning_rate=args.lr, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, grad_accum=args.grad_accum, save_steps=args.save_steps, seed=args.seed,
    )
    metrics = tune(settings, args.output_dir, args.model, args.dtype)
    print(json.dumps(metrics, indent=2))
    return metrics
