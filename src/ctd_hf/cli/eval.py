"""``ctd-hf eval``: several methods on the registered tasks in one run, one report. Each task's options become
``--<task>-<option>`` flags, so adding a task adds its flags."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

import transformers

from ..decoding.methods import DecodingMethod
from ..evaluation.runner import EvalSettings, run_evaluation
from ..evaluation.tasks import Task, get_task, task_names
from ..models import load_model_and_tokenizer, model_id
from .arguments import (
    add_method_arguments,
    add_model_arguments,
    add_prompt_format_argument,
    check_method_arguments,
    comma_list,
    load_amateur,
    method_kwargs,
    output_folder,
    positive_int,
    strength,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser("eval", help="Evaluate methods on SuperNI, DROP, MMLU and AlpacaEval; one report.")
    add_model_arguments(ev)
    ev.add_argument("--methods", type=comma_list, default="od,id,ctd",
                    help="Comma-separated: od, id, cd, ctd; `name@strength` runs a method at another strength (e.g. "
                         "ctd@0.1,ctd@0.3,ctd@0.5 evaluates three betas of one prefix in one run).")
    ev.add_argument("--benchmarks", type=comma_list, default="superni",
                    help=f"Comma-separated: {', '.join(task_names())}.")
    ev.add_argument("--output-dir", type=output_folder, required=True,
                    help="Predictions, report.json, report.md and plots go here.")
    add_method_arguments(ev)
    add_prompt_format_argument(ev)
    ev.add_argument("--max-new-tokens", type=positive_int, default=None,
                    help="New tokens of every generation task (default: each task's own, e.g. SuperNI 128, DROP 32).")
    ev.add_argument("--max-source-tokens", type=positive_int, default=1024,
                    help="Instruction + input tokens, where a task cuts.")
    ev.add_argument("--batch-size", type=positive_int, default=8)
    ev.add_argument("--no-token-changes", action="store_true", help="Do not record the original model's predictions.")
    ev.add_argument("--seed", type=int, default=0)
    for name in task_names():
        _add_task_options(ev, get_task(name))
    ev.set_defaults(func=run)


def _add_task_options(parser: argparse.ArgumentParser, task: Task) -> None:
    """``--<task>-<field>`` for every field of the task's options (absent unless given: the task's default holds)."""
    group = parser.add_argument_group(f"{task.name} options")
    hints = typing.get_type_hints(task.options)
    for option in dataclasses.fields(task.options):
        flags = [f"--{task.name}-{option.name.replace('_', '-')}", *option.metadata.get("aliases", ())]
        hint = hints[option.name]
        kinds = [kind for kind in typing.get_args(hint) or (hint,) if kind is not type(None)]
        group.add_argument(*flags, dest=f"{task.name}:{option.name}", type=kinds[0], default=argparse.SUPPRESS,
                           help=f"{option.metadata.get('help', '')} (default: {option.default})")


def task_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The task options given on the command line, per task."""
    options: dict[str, dict[str, Any]] = {}
    for key, value in vars(args).items():
        if ":" in key:
            task, option = key.split(":", 1)
            options.setdefault(task, {})[option] = value
    return options


def method_specs(specs: list[str]) -> dict[str, tuple[str, float | None]]:
    """``name`` or ``name@strength`` specs -> report label -> (method, strength or None for the flags' value)."""
    methods = {}
    for spec in specs:
        name, _, value = spec.partition("@")
        try:
            methods[spec] = (name, strength(value) if value else None)
        except (argparse.ArgumentTypeError, ValueError) as error:
            raise ValueError(f"--methods {spec}: the strength after @ {error}.") from None
    return methods


def run(args: argparse.Namespace) -> dict | None:
    """Run an evaluation from parsed arguments; prints the Markdown report on the main process."""
    specs = method_specs(args.methods)
    check_method_arguments(args, sorted({name for name, _ in specs.values()}))
    tasks = [get_task(name) for name in args.benchmarks]
    options = task_options(args)
    for task in tasks:
        task.make_options(options.get(task.name))  # refuse bad task options before any model loads
    budgets = {} if args.max_new_tokens is None else {task.name: args.max_new_tokens for task in tasks}
    settings = EvalSettings(benchmarks=tuple(args.benchmarks), options=options, prompt_format=args.prompt_format,
                            batch_size=args.batch_size, max_new_tokens=budgets,
                            max_source_tokens=args.max_source_tokens, token_changes=not args.no_token_changes)
    transformers.set_seed(args.seed)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    uses_cd = any(name == "cd" for name, _ in specs.values())
    amateur = load_amateur(args, args.model, model) if uses_cd else None
    methods = {}
    for label, (name, value) in specs.items():
        kwargs = method_kwargs(args, name)
        if value is not None:
            kwargs["strength"] = value
        methods[label] = DecodingMethod(name, amateur=amateur, **kwargs)
    report = run_evaluation(model, tokenizer, methods, settings, args.output_dir, model_id(model), args.seed)
    if report is not None:
        print(Path(args.output_dir, "report.md").read_text())
    return report
