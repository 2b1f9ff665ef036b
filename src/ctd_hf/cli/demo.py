"""``ctd-hf demo``: does CTD help the model? Tune, decode a held-out SuperNI sample with od, id and ctd, report the
differences with their 95% intervals."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..settings import output_folder, setting
from ..study.demo import FULL, QUICK, run_demo, summary
from ..training.tuning import seeds_setting
from .arguments import ModelArguments
from .flags import add_flags


@dataclass(kw_only=True)
class DemoCommand:
    output_dir: str | None = setting(None, check=output_folder, help=(
        "The prefix, predictions and report go here (default runs/demo, or runs/demo-quick with --quick, so the two "
        "never meet in one folder); a rerun resumes."))
    prefix: str | None = setting(None, help="Reuse a prefix folder (written by `ctd-hf tune`) instead of tuning one.")
    quick: bool = setting(False, help="A small run that shows the pipeline (a few minutes); too small to answer the "
                                      "question.")
    seeds: tuple[int, ...] | None = seeds_setting()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="Does CTD help this model? Tune a prefix, decode a held-out SuperNI "
                                                "sample with od, id and ctd, and report differences with intervals.")
    flags: dict[str, str] = {}
    add_flags(parser, DemoCommand, flags)
    add_flags(parser, ModelArguments, flags, names=["model"])
    parser.set_defaults(func=run, flags=flags)


def run(args: argparse.Namespace) -> dict:
    output_dir = args.output_dir or ("runs/demo-quick" if args.quick else "runs/demo")
    settings = QUICK if args.quick else FULL
    if args.seeds:
        settings = dataclasses.replace(settings, seeds=args.seeds)
    report = run_demo(output_dir, settings, args.prefix, args.model)
    print(summary(report, Path(output_dir, "eval")))
    return report
