"""The ``ctd-hf`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import transformers
from peft import LoraConfig, TaskType, get_peft_model
from tqdm.auto import tqdm
from transformers.trainer_utils import get_last_checkpoint

from .data import RightPaddingCollator, load_sft_data, tokenize_sft
from .evaluation import EvalSettings, run_evaluation
from .methods import METHODS, DecodingMethod
from .models import load_model_and_tokenizer
from .noise import NOISE_TYPES
from .prefix import add_soft_prefix, model_id, resolve_prefix
from .prompts import PROMPT_FORMATS, encode_prompt, format_prompt
from .synth import add_synth_parser
from .trainer import CTDConfig, CTDTrainer


def _add_tune_parser(subparsers: argparse._SubParsersAction) -> None:
    tune = subparsers.add_parser("tune", help="Contrastive tuning: train a correction prefix (or LoRA) on SFT data.")
    tune.add_argument("--model", default="default", help="Local folder or hub name; 'default' is SmolLM2-135M-Instruct.")
    tune.add_argument("--data", required=True, help="SFT data: JSON/JSONL file, save_to_disk folder or dataset name.")
    tune.add_argument("--prompt-format", default="chatml", choices=PROMPT_FORMATS)
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
    tune.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    tune.set_defaults(func=tune_command)


def tune_command(args: argparse.Namespace) -> dict:
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


def _add_generate_parser(subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser("generate", help="Decode prompts with od (plain), id, cd or ctd.")
    gen.add_argument("--model", default="default", help="Local folder or hub name; 'default' is SmolLM2-135M-Instruct.")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="A user message (repeat for several).")
    source.add_argument("--prompts-file", help="Text file (one prompt a line) or JSONL with instruction[/input] or prompt.")
    gen.add_argument("--prompt-format", default="chatml", choices=PROMPT_FORMATS)
    _add_method_arguments(gen)
    _add_decoding_arguments(gen)
    gen.add_argument("--output", default=None, help="Write JSONL here instead of printing.")
    gen.set_defaults(func=generate_command)


def _add_method_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default=None, choices=METHODS,
                        help="od: plain; id: Instructive Decoding; cd: Contrastive Decoding; ctd: CTD (default: ctd "
                             "with --prefix, else od).")
    parser.add_argument("--prefix", default=None, help="ctd: prefix folder written by `ctd-hf tune`.")
    parser.add_argument("--beta", type=float, default=None,
                        help="Contrast strength: ctd beta / id strength (default 0.3), cd amateur weight (default 1.0).")
    parser.add_argument("--noise", default="opposite", choices=NOISE_TYPES, help="id: the noisy instruction.")
    parser.add_argument("--noise-rate", type=float, default=0.6, help="id: share of words trunc_shuf keeps.")
    parser.add_argument("--amateur", default=None, help="cd: the amateur model (folder or hub name, or 'default').")
    parser.add_argument("--plausibility", type=float, default=0.1, help="cd: alpha of the plausible set.")
    parser.add_argument("--amateur-temperature", type=float, default=1.0)
    parser.add_argument("--path", default="auto", choices=("auto", "doubled", "stream"),
                        help="doubled: one 2B-row forward per step (ctd, id); stream: a processor in generate().")


def _add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--do-sample", action="store_true")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))


def method_from_args(args: argparse.Namespace) -> DecodingMethod:
    """The DecodingMethod the method arguments describe (loading the amateur model for cd)."""
    name = args.method or ("ctd" if args.prefix else "od")
    amateur = load_model_and_tokenizer(args.amateur, dtype=args.dtype)[0] if name == "cd" and args.amateur else None
    return DecodingMethod(name, args.beta, args.prefix, args.noise, args.noise_rate, amateur, args.plausibility,
                          args.amateur_temperature, args.path)


def decoding_options(args: argparse.Namespace) -> dict:
    """generate() keyword arguments from the decoding arguments."""
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, num_beams=args.num_beams)
    if args.do_sample:
        options.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    return options


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


def check_prompt_lengths(
    messages: list[dict], tokenizer: Any, model: Any, prompt_format: str, max_new_tokens: int, extra: int = 0
) -> None:
    """Refuse prompts that cannot fit the model's positions together with the answer (and a prefix)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    for message in messages:
        needed = len(encode_prompt(format_prompt([message], prompt_format, tokenizer), tokenizer, prompt_format))
        needed += max_new_tokens + extra
        if limit and needed > limit:
            raise ValueError(f"The prompt {message['content'][:40]!r}... needs {needed} positions, more than the "
                             f"model's {limit}: shorten it or lower --max-new-tokens.")


def generate_command(args: argparse.Namespace) -> list[dict]:
    """Decode prompts from parsed arguments; prints or writes one JSON line per prompt and returns the records."""
    transformers.set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    method = method_from_args(args)
    messages = read_prompts(args)
    prefix_length = resolve_prefix(model, args.prefix).shape[0] if method.name == "ctd" else 0
    check_prompt_lengths(messages, tokenizer, model, args.prompt_format, args.max_new_tokens, prefix_length)
    records, sink = [], open(args.output, "w") if args.output else sys.stdout
    try:
        for start in tqdm(range(0, len(messages), args.batch_size), desc="Generating", unit="batch", file=sys.stderr):
            batch = messages[start : start + args.batch_size]
            answers = method.generate(model, tokenizer, batch, args.prompt_format, **decoding_options(args))
            for message, answer in zip(batch, answers):
                record = {"prompt": message["content"], "input": message.get("input", ""), "output": answer,
                          **method.settings()}
                records.append(record)
                print(json.dumps(record, ensure_ascii=False), file=sink, flush=True)
    finally:
        if sink is not sys.stdout:
            sink.close()
    return records


def _add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser("eval", help="Evaluate methods on SuperNI, DROP, MMLU and AlpacaEval; one report.")
    ev.add_argument("--model", default="default", help="Local folder or hub name; 'default' is SmolLM2-135M-Instruct.")
    ev.add_argument("--methods", default="od,id,ctd", help="Comma-separated: od, id, cd, ctd.")
    ev.add_argument("--benchmarks", default="superni", help="Comma-separated: superni, drop, mmlu, alpacaeval.")
    ev.add_argument("--output-dir", required=True, help="Predictions, report.json, report.md and plots go here.")
    ev.add_argument("--prefix", default=None, help="ctd: prefix folder written by `ctd-hf tune`.")
    ev.add_argument("--beta", type=float, default=0.3, help="ctd: contrast strength.")
    ev.add_argument("--id-strength", type=float, default=0.3, help="id: contrast strength.")
    ev.add_argument("--noise", default="opposite", choices=NOISE_TYPES, help="id: the noisy instruction.")
    ev.add_argument("--noise-rate", type=float, default=0.6, help="id: share of words trunc_shuf keeps.")
    ev.add_argument("--amateur", default=None, help="cd: the amateur model.")
    ev.add_argument("--cd-beta", type=float, default=1.0, help="cd: weight of the amateur.")
    ev.add_argument("--plausibility", type=float, default=0.1, help="cd: alpha of the plausible set.")
    ev.add_argument("--path", default="auto", choices=("auto", "doubled", "stream"))
    defaults = EvalSettings()
    ev.add_argument("--superni-dir", default=defaults.superni_dir, help="A natural-instructions checkout.")
    ev.add_argument("--superni-tasks", default=defaults.superni_tasks, help="Task list under splits/.")
    ev.add_argument("--superni-categories", default=None, help="task -> category JSON under splits/ (optional).")
    ev.add_argument("--max-instances", type=int, default=defaults.max_instances, help="SuperNI instances per task.")
    ev.add_argument("--max-new-tokens", type=int, default=128, help="SuperNI new tokens (DROP 32, AlpacaEval 512).")
    ev.add_argument("--drop-path", default=defaults.drop_path)
    ev.add_argument("--drop-limit", type=int, default=defaults.drop_limit)
    ev.add_argument("--mmlu-path", default=defaults.mmlu_path)
    ev.add_argument("--mmlu-shots", type=int, default=0)
    ev.add_argument("--mmlu-limit", type=int, default=None, help="Test questions per subject.")
    ev.add_argument("--alpacaeval-path", default=defaults.alpacaeval_path)
    ev.add_argument("--alpacaeval-limit", type=int, default=None)
    ev.add_argument("--prompt-format", default="chatml", choices=PROMPT_FORMATS)
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--no-token-changes", action="store_true", help="Do not record the original model's predictions.")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ev.set_defaults(func=eval_command)


def eval_command(args: argparse.Namespace) -> dict | None:
    """Run an evaluation from parsed arguments; prints the Markdown report on the main process."""
    transformers.set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    names = [name.strip() for name in args.methods.split(",") if name.strip()]
    amateur = load_model_and_tokenizer(args.amateur, dtype=args.dtype)[0] if "cd" in names and args.amateur else None
    strengths = {"od": None, "id": args.id_strength, "ctd": args.beta, "cd": args.cd_beta}
    methods = {name: DecodingMethod(name, strengths.get(name), args.prefix, args.noise, args.noise_rate, amateur,
                                    args.plausibility, path=args.path) for name in names}
    settings = EvalSettings(
        benchmarks=tuple(b.strip() for b in args.benchmarks.split(",") if b.strip()),
        superni_dir=args.superni_dir, superni_tasks=args.superni_tasks, superni_categories=args.superni_categories,
        max_instances=args.max_instances, drop_path=args.drop_path, drop_limit=args.drop_limit,
        mmlu_path=args.mmlu_path, mmlu_shots=args.mmlu_shots, mmlu_limit=args.mmlu_limit,
        alpacaeval_path=args.alpacaeval_path, alpacaeval_limit=args.alpacaeval_limit,
        prompt_format=args.prompt_format, batch_size=args.batch_size,
        max_new_tokens={"superni": args.max_new_tokens, "drop": 32, "alpacaeval": 512},
        token_changes=not args.no_token_changes,
    )
    report = run_evaluation(model, tokenizer, methods, settings, args.output_dir, model_id(model), args.seed)
    if report is not None:
        print(Path(args.output_dir, "report.md").read_text())
    return report


def build_parser() -> argparse.ArgumentParser:
    """The ``ctd-hf`` argument parser with all subcommands."""
    parser = argparse.ArgumentParser(prog="ctd-hf", description="Contrastive tuning and decoding for HF models.")
    subparsers = parser.add_subparsers(required=True, dest="command")
    _add_tune_parser(subparsers)
    _add_generate_parser(subparsers)
    _add_eval_parser(subparsers)
    add_synth_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``ctd-hf`` console script."""
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
