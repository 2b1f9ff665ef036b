"""``ctd-hf eval``: several methods on the registered tasks in one run, one report. Each task's options become
``--<task>-<option>`` flags, so adding a task adds its flags."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers

from ..decoding.methods import METHODS
from ..evaluation.runner import EvalSettings, run_evaluation
from ..evaluation.seeds import seed_labels
from ..evaluation.tasks import get_task, task_names
from ..models import model_id
from ..records import restart_setting
from ..settings import check_settings, contrast_strength, output_folder, setting
from ..training.tuning import seed_prefixes
from .arguments import (EngineArguments, ModelArguments, add_method_flags, check_method_arguments, given_method_flag,
                        method_field, method_flag_value, method_from_flags)
from .flags import add_flags, values


def method_spec(spec: str) -> str:
    """Check of a ``--methods`` item: ``name`` or ``name@strength``."""
    name, at, value = spec.partition("@")
    if at and name in METHODS and "strength" not in {field.name for field in dataclasses.fields(METHODS[name])}:
        raise ValueError(f"{spec}: method {name} has no strength to set with @ (it decodes without a contrast); "
                         f"write {name}")
    if at:
        try:
            contrast_strength(float(value))
        except ValueError:
            raise ValueError(f"{spec}: the strength after @ must be a finite number >= 0, got {value!r}") from None
    return spec


@dataclass(kw_only=True)
class EvalCommand:
    output_dir: str = setting(check=output_folder, help="Predictions, report.json, report.md and plots go here.")
    methods: tuple[str, ...] = setting(("od", "id", "ctd"), check=method_spec, help=(
        "Comma-separated: od, id, cd, ctd; `name@strength` runs a method at another strength (e.g. "
        "ctd@0.1,ctd@0.3,ctd@0.5 evaluates three betas of one prefix in one run)."))
    seed: int = setting(0, help="Seeds sampling and ID's noise.")
    restart: bool = restart_setting()

    def __post_init__(self) -> None:
        check_settings(self)

    def specs(self) -> dict[str, tuple[str, float | None]]:
        """Report label -> (method, strength or None for the flags' value)."""
        specs = {}
        for spec in self.methods:
            name, at, value = spec.partition("@")
            specs[spec] = (name, float(value) if at else None)
        return specs


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="Evaluate methods on SuperNI, DROP, MMLU and AlpacaEval; one report.")
    flags: dict[str, str] = {}
    add_flags(parser, ModelArguments, flags)
    add_flags(parser, EvalCommand, flags)
    add_flags(parser, EvalSettings, flags)
    add_method_flags(parser, flags)
    add_flags(parser.add_argument_group("engine"), EngineArguments, flags)
    for name in task_names():
        task = get_task(name)
        add_flags(parser.add_argument_group(f"{name} options"), task.options, flags, prefix=f"{name}-",
                  dest_prefix=f"{name}:", absent=True)
    parser.set_defaults(func=run, flags=flags)


def task_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The task options given on the command line, per task (stored under ``<task>:<option>``)."""
    given = {name: values(args, get_task(name).options, dest_prefix=f"{name}:") for name in task_names()}
    return {name: options for name, options in given.items() if options}


def run(args: argparse.Namespace) -> dict | None:
    """Run an evaluation from parsed arguments; prints the Markdown report on the main process."""
    command = EvalCommand(**values(args, EvalCommand))
    specs = command.specs()
    check_method_arguments(args, sorted({name for name, _ in specs.values()}))
    options = task_options(args)
    settings = EvalSettings(options=options, **values(args, EvalSettings))
    engine_arguments = EngineArguments(**values(args, EngineArguments))
    for name in settings.benchmarks:  # refuse task options that do not fit together before any model loads
        settings.task_options(get_task(name))
    prefixes = seed_prefixes(method_flag_value(args, "--prefix")) if given_method_flag(args, "--prefix") else [None]
    methods = {}
    for label, (name, value) in specs.items():
        overrides = {} if value is None else {"strength": value}
        field = method_field(name, "--prefix")
        runs = [{}] if field is None else [{field: prefix} for prefix in prefixes]  # one run per prefix (tuning seed)
        methods.update({run_label: method_from_flags(args, name, **overrides, **prefix)
                        for run_label, prefix in zip(seed_labels(label, len(runs)), runs)})
    model, tokenizer = engine_arguments.load(args.model, args.dtype)
    engine = engine_arguments.build(model, command.seed)
    transformers.set_seed(command.seed)  # after loading, which may draw from the generator (see tuning.tune)
    report = run_evaluation(model, tokenizer, methods, settings, args.output_dir, model_id(model), command.seed, engine,
                            restart=command.restart)
    if report is not None:
        print(Path(args.output_dir, "report.md").read_text())
    return report
