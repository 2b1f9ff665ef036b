"""``ctd-hf sweep``: search tuning settings and decoding strengths on training tasks, with a leaderboard."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..settings import output_folder, positive_int, positive_number, setting
from ..study.sweep import SweepSettings, SweepSpace, run_sweep
from .flags import add_flags, values


@dataclass(kw_only=True)
class SweepCommand:
    output_dir: str = setting(check=output_folder, help="The sweep folder (a rerun resumes it).")
    time_budget: float | None = setting(None, check=positive_number,
                                        help="Minutes; no trial starts after (rerun to go on).")
    workers: int = setting(1, check=positive_int, help="Processes running trials side by side.")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep", help="Search tuning settings and decoding strengths on SuperNI training tasks (resumable; successive "
                      "halving; leaderboard.md/json/png).")
    flags: dict[str, str] = {}
    add_flags(parser, SweepCommand, flags)
    add_flags(parser, SweepSettings, flags)
    add_flags(parser.add_argument_group("the search space (comma-separated values per knob)"), SweepSpace, flags)
    parser.set_defaults(func=run, flags=flags)


def run(args: argparse.Namespace) -> dict:
    """Run the sweep from parsed arguments; prints and returns the leaderboard."""
    space = SweepSpace(**values(args, SweepSpace))
    settings = SweepSettings(space=space, **values(args, SweepSettings))
    board = run_sweep(settings, args.output_dir, args.time_budget, args.workers)
    print(Path(args.output_dir, "leaderboard.md").read_text())
    return board
