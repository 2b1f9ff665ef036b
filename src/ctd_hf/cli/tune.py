"""``ctd-hf tune``: contrastive tuning of a correction prefix (or LoRA adapter) on SFT data, resumable."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from ..settings import output_folder, setting
from ..training.tuning import TuneSettings, tune
from .arguments import ModelArguments
from .flags import add_flags, values


@dataclass(kw_only=True)
class TuneCommand:
    output_dir: str = setting(check=output_folder, help="Checkpoints and the final adapter go here.")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tune", help="Contrastive tuning: train a correction prefix (or LoRA) on SFT data; "
                                                "a rerun resumes.")
    flags: dict[str, str] = {}
    for settings in (ModelArguments, TuneCommand, TuneSettings):
        add_flags(parser, settings, flags)
    parser.set_defaults(func=run, flags=flags)


def run(args: argparse.Namespace) -> dict:
    """Run contrastive tuning from parsed arguments; prints and returns the training metrics."""
    settings = TuneSettings(**values(args, TuneSettings))
    metrics = tune(settings, args.output_dir, args.model, args.dtype)
    print(json.dumps(metrics, indent=2))
    return metrics
