"""Command-line flags generated from settings dataclasses (:mod:`ctd_hf.settings`), and the settings built back.

A field ``max_new_tokens`` becomes ``--max-new-tokens`` (plus its declared ``aliases``), typed from its annotation,
with its help, choices and check; a ``tuple[X, ...]`` field takes comma-separated values. The field's own check runs
while argparse parses, so a bad value gets argparse's one-line error naming the flag.

transformers' ``HfArgumentParser`` (TRL's choice) is not used because it cannot express what these flags are: it
passes every metadata key to ``add_argument`` (so a field cannot carry its check), reads ``tuple`` fields as one
string, spells each flag twice (``--max_new_tokens`` and ``--max-new-tokens``), and cannot give one flag to the fields
of several classes (``--prefix`` for the ctd and ctd-lora methods, ``cli.arguments``).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable, Iterable
from typing import Any

from ..settings import SettingError, check_value, setting_kind

Flags = dict[str, str]  # parameter (dest) -> the flag that sets it, for error messages


def _parser(name: str, kind: type, many: bool, check: Callable | None, choices: Any) -> Callable[[str], Any]:
    """argparse ``type``: convert the text to ``kind`` (each comma-separated item when ``many``) and check it."""
    described = {int: "an integer", float: "a number"}.get(kind, "a value")

    def convert(text: str) -> Any:
        try:
            value = kind(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {described}, got {text!r}") from None
        try:
            return check_value(name, value, check, choices)
        except SettingError as error:
            raise argparse.ArgumentTypeError(error.problem.rstrip(".")) from None

    def parse(text: str) -> Any:
        if not many:
            return convert(text)
        items = [item for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("must name at least one item")
        return tuple(convert(item) for item in items)

    return parse


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings: type,
    flags: Flags,
    *,
    names: Iterable[str] | None = None,
    rename: dict[str, str] | None = None,
    prefix: str = "",
    dest_prefix: str = "",
    absent: bool = False,
) -> None:
    """Add a flag for each declared field of the dataclass ``settings`` (only ``names`` if given), recording in
    ``flags`` which flag sets which parameter.

    ``rename`` gives a field another flag (e.g. ``model`` -> ``--expert``); ``prefix`` goes before every flag name
    and ``dest_prefix`` before every destination (a task's options: ``--superni-tasks`` -> ``superni:tasks``);
    ``absent`` leaves unset flags out of the namespace (the dataclass default then holds).
    """
    hints = typing.get_type_hints(settings)
    chosen = None if names is None else set(names)
    for field in dataclasses.fields(settings):
        if not has_flag(field) or (chosen is not None and field.name not in chosen):
            continue
        main = (rename or {}).get(field.name) or spelling(field, prefix)
        add_field_flag(parser, field, hints[field.name], (main, *field.metadata.get("aliases", ())),
                       dest_prefix + field.name, flags, absent=absent)


def has_flag(field: dataclasses.Field) -> bool:
    """Whether a settings field is on the command line (declared with help, not ``cli=False``)."""
    return "help" in field.metadata and field.metadata.get("cli") is not False


def spelling(field: dataclasses.Field, prefix: str = "") -> str:
    """A field's flag: its declared ``flag``, else ``--<prefix><name>`` with dashes."""
    return field.metadata.get("flag") or f"--{prefix}{field.name.replace('_', '-')}"


def add_field_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    field: dataclasses.Field,
    hint: Any,
    spellings: tuple[str, ...],
    dest: str,
    flags: Flags,
    *,
    absent: bool = False,
    help_text: str | None = None,
) -> None:
    """One field's flag (``spellings``) storing into ``dest``: typed from ``hint``, with the field's help (or
    ``help_text``), choices and check."""
    meta = field.metadata
    kind, many = setting_kind(hint)
    kind = meta.get("flag_type", kind)
    check, choices = meta.get("check"), meta.get("choices")
    declared = _default(field)
    default = argparse.SUPPRESS if absent else declared  # absent flags stay out of the namespace
    help_text = help_text or meta["help"]
    if declared not in (None, (), {}) and kind is not bool and "default" not in help_text:
        help_text += f" (default: {','.join(map(str, declared)) if many else declared})"
    required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    if meta.get("positional"):
        parser.add_argument(dest, type=_parser(field.name, kind, many, check, choices), help=help_text)
    elif meta.get("repeat"):
        parser.add_argument(*spellings, dest=dest, action="append", default=default, help=help_text,
                            type=_parser(field.name, kind, False, check, choices))
    elif kind is bool:
        negated = spellings[0].startswith("--no-")
        parser.add_argument(*spellings, dest=dest, action="store_false" if negated else "store_true",
                            default=argparse.SUPPRESS if absent else negated, help=help_text)
    else:
        listed = {"choices": choices} if choices and not many else {
            "metavar": spellings[0].lstrip("-").replace("-", "_").upper()}
        parser.add_argument(*spellings, dest=dest, type=_parser(field.name, kind, many, check, choices),
                            default=default, required=required and not absent, help=help_text, **listed)
    flags[dest] = field.name if meta.get("positional") else spellings[0]


def _default(field: dataclasses.Field) -> Any:
    """The field's default (None when it has none: the flag is then required)."""
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else None


def values(args: argparse.Namespace, settings: type, dest_prefix: str = "") -> dict[str, Any]:
    """The parsed values of ``settings``' fields present in ``args`` (stored under ``dest_prefix`` + name)."""
    parsed = vars(args)
    return {field.name: parsed[dest_prefix + field.name] for field in dataclasses.fields(settings)
            if dest_prefix + field.name in parsed}
