"""``ctd-hf tune``: contrastive tuning of a correction prefix (or LoRA adapter) on SFT data, resumable."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import transformers
from peft import LoraConfig, TaskType, get_peft_model
from transformers.trainer_utils import get_last_checkpoint

from ..models import load_model_and_tokenizer
from ..resources import resource_path
from ..training.config import CTDConfig
from ..training.data import RightPaddingCollator, load_sft_data, tokenize_sft
from ..training.prefix import add_soft_prefix
from ..training.trainer import CTDTrainer
from .arguments import add_model_arguments, add_prompt_format_argument


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    tune = subparsers.add_parser("tune", help="Contrastive tuning: train a correction prefix (or LoRA) on SFT data.")
    add_model_arguments(tune)
    tune.add_argument("--data", default=str(resource_path("sft", "alpaca_en_demo.json")),
                      help="SFT data: JSON/JSONL file, save_to_disk folder or dataset name (default: the shipped "
                           "999-example Alpaca sample).")
    add_prompt_format_argument(tune)
    tune.add_argument("--fraction", type=float, default=1.0, help="Seeded random fraction of the data to tune on.")
    tune.add_argument("--max-length", type=int, default=256, help="Tokens per example; longer ones lose their end.")
    tune.add_argument("--output-dir", required=True, help="Checkpoints and the final adapter go here.")
    tune.add_argument("--adapter", default="prefix", choices=("prefix", "lora"), help="What the correction model adds.")
    tune.add_argument("--num-virtual-tokens", type=int, default=20)
    tune.add_argument("--init", default="vocab", choices=("vocab", "random", "text"), help="Prefix initialisation.")
    tune.add_argument("--init-text", default=None, help="Text whose token embeddings start the prefix (--init text).")
    tune.add_argument("--lora-r", type=int, default=8)
    tune.add_argument("--alpha", type=float, default=0.3, help="Contrast strength of the loss.")
    tune.add_argument("--lr", type=float, default=1e-2, help="Learning rate (the paper's 9e-4 barely moves a 135M model).")
    tune.add_argument("--epochs", type=float, default=1.0)
    tune.add_argument("--max-steps", type=int, default=-1, help="Stop after this many optimizer steps (overrides epochs).")
    tune.add_argument("--batch-size", type=int, default=8)
    tune.add_argument("--grad-accum", type=int, default=1)
    tune.add_argument("--save-steps", type=int, default=50, help="Checkpoint every N steps; a rerun resumes from the last.")
    tune.add_argument("--seed", type=int, default=0)
    tune.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    """Run contrastive tuning from parsed arguments; returns the training metrics."""
    transformers.set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    if args.adapter == "prefix":
        model = add_soft_prefix(model, args.num_virtual_tokens, init=args.init, init_text=args.init_text)
    else:
        model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=args.lora_r, lora_alpha=2 * args.lora_r))
    data = load_sft_data(args.data, fraction=args.fraction, seed=args.seed)
    train_dataset = tokenize_sft(data, tokenizer, args.prompt_format, args.max_length)
    config = CTDConfig(
        output_dir=args.output_dir,
        alpha=args.alpha,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        save_steps=args.save_steps,
        save_total_limit=2,
        logging_steps=1,
        seed=args.seed,
        report_to="none",
    )
    trainer = CTDTrainer(
        model=model,
        args=config,
        train_dataset=train_dataset,
        data_collator=RightPaddingCollator(tokenizer.pad_token_id),
    )
    checkpoint = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    if checkpoint:
        print(f"Resuming from {checkpoint}", file=sys.stderr)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(args.output_dir)
    metrics = {**result.metrics, "examples": len(train_dataset), "output_dir": args.output_dir}
    Path(args.output_dir, "train_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return metrics
