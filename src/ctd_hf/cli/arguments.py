"""What several subcommands share: the model flags, the decoding-method flags and the methods they build. One place,
so a flag means the same in every subcommand."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..decoding.methods import METHODS, DecodingMethod
from ..settings import setting
from .flags import Flags, add_flags, values

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(kw_only=True)
class ModelArguments:
    """The model a subcommand loads."""

    model: str = setting("default", help="Local folder or hub name; 'default' is the embedded SmolLM2-135M-Instruct.")
    dtype: str = setting("float32", choices=DTYPES, help="Weights' dtype.")


def add_method_flags(parser: argparse.ArgumentParser, flags: Flags) -> None:
    """The decoding methods' settings (``DecodingMethod``'s fields); each method's strength has its own flag."""
    add_flags(parser.add_argument_group("decoding methods"), DecodingMethod, flags)


def strength_flag(flags: Flags, name: str) -> str | None:
    """The flag setting method ``name``'s strength (none for od)."""
    return flags.get(f"strength:{name}")


def check_method_arguments(args: argparse.Namespace, names: list[str]) -> None:
    """Refuse method flags that do not fit the chosen methods, before any model is loaded."""
    flags = args.flags
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}.")
    if "ctd" in names and not args.prefix:
        raise ValueError(f"Method ctd needs {flags['prefix']} (a folder written by `ctd-hf tune`).")
    if "cd" in names and not args.amateur:
        raise ValueError(f"Method cd needs {flags['amateur']} (a smaller model with the same tokenizer).")
    for method in ("ctd", "id", "cd"):
        if getattr(args, f"strength:{method}") is not None and method not in names:
            raise ValueError(f"{strength_flag(flags, method)} sets the strength of method {method}, which is not run "
                             f"here (methods: {', '.join(names)}).")


def decoding_method(args: argparse.Namespace, name: str, strength: float | None = None) -> DecodingMethod:
    """Method ``name`` from the method flags (``strength`` replaces its strength flag)."""
    chosen = values(args, DecodingMethod)
    chosen["strength"] = getattr(args, f"strength:{name}", None) if strength is None else strength
    return DecodingMethod(name, **chosen)
