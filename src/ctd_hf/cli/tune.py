"""``ctd-hf tune``: contrastive tuning of a correction prefix (or LoRA adapter) on SFT data, resumable."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from ..records import restart_setting
from ..settings import output_folder, setting
from ..training.tuning import TuneSettings, seeds_setting, tune, tune_seeds
from .arguments import ModelArguments
from .flags import add_flags, values


@dataclass(kw_only=True)
class TuneCommand:
    output_dir: str = setting(check=output_folder, help="Checkpoints and the final adapter go here.")
    seeds: tuple[int, ...] | None = seeds_setting()
    restart: bool = restart_setting()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tune", help="Contrastive tuning: train a correction prefix (or LoRA) on SFT data; "
                                                "a rerun resumes.")
    flags: dict[str, str] = {}
    for settings in (ModelArguments, TuneCommand, TuneSettings):
        add_flags(parser, settings, flags)
    parser.set_defaults(func=run, flags=flags)


def run(args: argparse.Namespace) -> dict:
    """Run contrastive tuning from parsed arguments; prints and returns the training metrics (per seed with
    ``--seeds``)."""
    command, settings = TuneCommand(**values(args, TuneCommand)), TuneSettings(**values(args, TuneSettings))
    if command.seeds:
        metrics = tune_seeds(settings, command.seeds, command.output_dir, args.model, args.dtype,
                             restart=command.restart)
    else:
        metrics = tune(settings, command.output_dir, args.model, args.dtype, restart=command.restart)
    print(json.dumps(metrics, indent=2))
    return metrics
