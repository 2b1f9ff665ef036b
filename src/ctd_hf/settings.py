"""Settings declared once: each field of a settings dataclass carries its default, help, allowed values and check.

Every settings dataclass (``TuneSettings``, ``EvalSettings``, ``SweepSettings``, ``SynthSettings``,
``GenerationSettings``, each decoding method, the tasks' options) declares its fields with :func:`setting` and calls
:func:`check_settings` in ``__post_init__``; ``ctd_hf.cli.flags`` generates the command line from the same fields and
runs the same checks on the parsed values. So a value is refused by one function, with one message, whether it comes
from Python or from a flag. Errors name the parameter (:class:`SettingError`); the CLI prints the flag instead.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Check = Callable[[Any], Any]  # returns the value (possibly normalised, e.g. an int strength as a float) or raises


class SettingError(ValueError):
    """A setting's value was refused. ``name`` is the parameter, ``problem`` what is wrong with its value."""

    def __init__(self, name: str, problem: str) -> None:
        self.name, self.problem = name, problem
        super().__init__(f"`{name}` {problem}")


class SettingTypeError(SettingError, TypeError):
    """A setting's value is of the wrong type (a string where a number belongs)."""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    check: Check | None = None,
    choices: Sequence[Any] | None = None,
    aliases: Sequence[str] = (),
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    **metadata: Any,
) -> Any:
    """A dataclass field holding one setting: ``check`` (see the checks below) and ``choices`` are enforced by
    :func:`check_settings`; ``aliases`` are extra flag spellings; further ``metadata`` is read by its owner (e.g.
    ``length=True`` in ``TuneSettings``, ``needed`` in a decoding method) or by the CLI (``flag``, ``cli=False``)."""
    metadata = {"help": help, "check": check, "choices": tuple(choices) if choices else None,
                "aliases": tuple(aliases), **metadata}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def check_value(name: str, value: Any, check: Check | None = None, choices: Sequence[Any] | None = None) -> Any:
    """``value`` checked (and normalised) by ``check`` and ``choices``, or a :class:`SettingError` naming ``name``."""
    if choices and value not in choices:
        raise SettingError(name, f"is {value!r}; choose one of {', '.join(map(str, choices))}.")
    if check is None:
        return value
    try:
        return check(value)
    except TypeError as error:
        raise SettingTypeError(name, str(error)) from None
    except ValueError as error:
        raise SettingError(name, str(error)) from None


def setting_kind(hint: Any) -> tuple[Any, bool]:
    """The element type of a setting's annotation and whether it is a tuple of them (``X | None`` counts as
    ``X``)."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) is tuple:
        return args[0], True
    if args and typing.get_origin(hint) is not None:  # a union: its first type (a tuple only if alone beside None)
        kind, many = setting_kind(args[0])
        return kind, many and len(args) == 1
    return hint, False


def check_settings(settings: Any) -> None:
    """Check every declared field of the dataclass ``settings`` in place, frozen or not (a ``None`` default may stay
    ``None``; the values of a tuple field are checked one by one, and there must be at least one)."""
    hints = typing.get_type_hints(type(settings))
    for field in dataclasses.fields(settings):
        check, choices = field.metadata.get("check"), field.metadata.get("choices")
        value = getattr(settings, field.name)
        if (check is None and not choices) or (value is None and field.default is None):
            continue
        if setting_kind(hints[field.name])[1]:
            values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            if not values:
                raise SettingError(field.name, "must hold at least one value.")
            value = tuple(check_value(field.name, item, check, choices) for item in values)
        else:
            value = check_value(field.name, value, check, choices)
        object.__setattr__(settings, field.name, value)  # the normalised value, also in a frozen dataclass


def renamed_arguments(**renames: str) -> Callable[[Callable], Callable]:
    """Accept each old keyword ``name=`` of ``renames`` (old name -> new name) for one more release, with a
    ``DeprecationWarning`` that names the new one. (transformers' ``deprecate_kwarg`` is internal to transformers and
    its message names transformers' own versions.)"""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"`{old}` is the old name of `{new}`: pass `{new}` only.")
                    warnings.warn(f"`{old}=` is deprecated and will be removed in the next release; pass `{new}=`.",
                                  DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper

    return decorate


# ------------------------------------------------------------------------------------------------------------ checks
# Each takes a value and returns it (normalised) or raises with the problem, phrased to follow the setting's name.
def positive_int(value: Any) -> int:
    """An integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"must be an integer >= 1, got {value!r}.")
    return value


def non_negative_int(value: Any) -> int:
    """An integer >= 0 (a seed)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"must be an integer >= 0, got {value!r}.")
    return value


def _number(value: Any) -> float:
    """``value`` as a float: a Python, numpy or one-element (0-d) torch/numpy number; bools are refused."""
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):  # a 0-d tensor or array
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"must be a number, got {value!r}.")
    return float(value)


def positive_number(value: Any) -> float:
    """A finite number > 0."""
    number = _number(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"must be a finite number > 0, got {value!r}.")
    return number


MIN_TEMPERATURE = 1e-6


def sampling_temperature(value: Any) -> float:
    """A temperature: a finite number >= :data:`MIN_TEMPERATURE` (scores divided by less can overflow to inf; so
    cold a temperature is greedy decoding in all but name)."""
    number = positive_number(value)
    if number < MIN_TEMPERATURE:
        raise ValueError(f"must be at least {MIN_TEMPERATURE:g}, got {value!r}: dividing the scores by less can "
                         "overflow them. Raise it (greedy decoding, without sampling, is where a colder one leads).")
    return number


def contrast_strength(value: Any) -> float:
    """A contrast strength: a finite number >= 0."""
    number = _number(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"must be a finite number >= 0, got {value!r}.")
    return number


def unit_interval(value: Any) -> float:
    """A number in (0, 1], e.g. a share of the data."""
    number = _number(value)
    if not 0 < number <= 1:
        raise ValueError(f"must be in (0, 1], got {value!r}.")
    return number


def probability(value: Any) -> float:
    """A number in [0, 1]."""
    number = _number(value)
    if not 0 <= number <= 1:
        raise ValueError(f"must be in [0, 1], got {value!r}.")
    return number


def output_folder(value: Any) -> str:
    """A folder that may exist (a resume) but is not a file."""
    if Path(value).exists() and not Path(value).is_dir():
        raise ValueError(f"{value} is a file, not a folder.")
    return str(value)


def like(owner: type, name: str, default: Any = dataclasses.MISSING, **overrides: Any) -> Any:
    """A field declaring the same setting as ``owner``'s field ``name`` (its check, choices and help), where another
    job passes that setting through; ``default`` and ``overrides`` (e.g. ``help``) replace the owner's. A ``tuple``
    field made with it holds several values of the setting, each checked."""
    source = {field.name: field for field in dataclasses.fields(owner)}[name]
    metadata = {**source.metadata, "aliases": (), **overrides}
    if default is dataclasses.MISSING:
        default = source.default
    return setting(default, **metadata)
