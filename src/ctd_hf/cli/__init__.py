"""The ``ctd-hf`` command line: one module per subcommand, its flags generated from settings dataclasses
(``flags``), the flags several subcommands share in ``arguments``.

Library modules never parse arguments or exit; the subcommands turn parsed arguments into library calls. The library
reports progress through ``logging`` (logger ``ctd_hf``); the command line shows it on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, NoReturn

from .._version import __version__
from ..settings import SettingError
from . import eval as eval_command
from . import demo, export_hub, generate, serve, sweep, synth, tune

SUBCOMMANDS = (demo, tune, generate, eval_command, synth, sweep, export_hub, serve)


class Parser(argparse.ArgumentParser):
    """argparse's parser (subcommands inherit it), with the fix named where argparse's message hides it."""

    def parse_args(self, args: list[str] | None = None, namespace: argparse.Namespace | None = None) -> Any:
        self._argv = list(sys.argv[1:] if args is None else args)  # for error(): what was typed before a bad token
        return super().parse_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        if message.endswith("expected one argument"):  # e.g. `--lr -1,0.01`: argparse took the value for a flag
            message += " (a value that starts with '-' is written with '=': --flag=-1)"
        elif "ignored explicit argument" in message:  # e.g. `--bf16=false`
            message += " (this flag is a switch and takes no value: give it alone, or leave it out)"
        elif message.startswith("unrecognized arguments:"):  # e.g. `--no-token-changes false`
            argv, switches = getattr(self, "_argv", []), _switches(self)
            given = [flag for flag, value in zip(argv, argv[1:]) if flag in switches and value in message.split()[2:]]
            if given:
                message += f" ({given[0]} is a switch and takes no value: give it alone, or leave it out)"
        super().error(message)


def _switches(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings of every flag that takes no value, in ``parser`` and its subcommands."""
    switches = set()
    for action in parser._actions:  # argparse offers no public list of a parser's arguments
        if action.option_strings and action.nargs == 0:
            switches.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                switches |= _switches(subparser)
    return switches


def build_parser() -> argparse.ArgumentParser:
    """The ``ctd-hf`` argument parser with all subcommands."""
    parser = Parser(prog="ctd-hf", description="Contrastive tuning and decoding for HF models.")
    parser.add_argument("--version", action="version", version=f"ctd-hf {__version__}")
    parser.add_argument("--debug", action="store_true", help="Show the full traceback of an error.")
    subparsers = parser.add_subparsers(required=True, dest="command")
    for command in SUBCOMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``ctd-hf`` console script. An error ends it with one line on stderr and exit status 2
    (argparse's convention for bad usage), or with the traceback under ``--debug``."""
    args = build_parser().parse_args(argv)
    _show_progress()
    try:
        args.func(args)
    except KeyboardInterrupt:
        raise
    except Exception as error:
        if args.debug:
            raise
        known = isinstance(error, (ValueError, TypeError, OSError, RuntimeError, ImportError))
        hint = "" if known else f" ({type(error).__name__}; run with --debug for the traceback)"
        print(f"ctd-hf {args.command}: error: {_with_flag(error, args)}{hint}", file=sys.stderr)
        raise SystemExit(2) from None


def _with_flag(error: Exception, args: argparse.Namespace) -> str:
    """The error, naming the flag that set a refused setting (the library names the parameter)."""
    flag = getattr(args, "flags", {}).get(getattr(error, "name", None)) if isinstance(error, SettingError) else None
    return f"argument {flag}: {error.problem}" if flag else str(error)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message comes (test runners and notebooks replace it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):  # noqa: ANN201 (the handler's attribute)
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def _show_progress() -> None:
    """The library's progress and phase messages on stderr, as plain lines (once per process)."""
    logger = logging.getLogger("ctd_hf")
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        logger.addHandler(_StderrHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False  # a library that configures the root logger (absl, via rouge_score) would repeat it
