"""The ``ctd-hf`` command line: one module per subcommand, shared argument groups in ``arguments``.

Library modules never parse arguments or exit; the subcommands turn parsed arguments into library calls.
"""

from __future__ import annotations

import argparse

from .._version import __version__
from . import eval as eval_command
from . import generate, synth, tune

SUBCOMMANDS = (tune, generate, eval_command, synth)


def build_parser() -> argparse.ArgumentParser:
    """The ``ctd-hf`` argument parser with all subcommands."""
    parser = argparse.ArgumentParser(prog="ctd-hf", description="Contrastive tuning and decoding for HF models.")
    parser.add_argument("--version", action="version", version=f"ctd-hf {__version__}")
    subparsers = parser.add_subparsers(required=True, dest="command")
    for command in SUBCOMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``ctd-hf`` console script."""
    args = build_parser().parse_args(argv)
    args.func(args)
