"""What a decoding method is: a frozen spec of declared settings, registered once by name, and the method bound to a
model, which holds what the spec loads and gives the executors a :class:`~ctd_hf.Contrast` per batch.

The spec is data: its fields generate the command-line flags, its :meth:`DecodingMethod.settings` are the resume key
and the report's record, and it loads nothing. :meth:`DecodingMethod.bind` reads what the method needs beside the model
(a prefix, an amateur, a LoRA adapter) once, refuses what does not fit the model, and returns a :class:`BoundMethod`.
Adding a method is adding one spec class with :func:`register_method` (and its bound class); nothing outside this
package asks a method its name.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ...prompts import encode_prompt, format_prompt
from ...settings import SettingError, check_settings, check_value, setting
from ..contrasts import Contrast
from ..layout import pad_left

BACKENDS = ("auto", "doubled", "stream")
# name -> spec class, in registration order (the built-in methods first): the registry every consumer reads.
METHODS: dict[str, type[DecodingMethod]] = {}


def register_method(cls: type[DecodingMethod]) -> type[DecodingMethod]:
    """Register a spec class under its ``name`` (a class decorator). A name already taken by another class is refused:
    one name, one method."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or any(mark in name for mark in "/@,. ") or name != name.strip():
        raise ValueError(f"{cls.__qualname__}.name must be a non-empty name without '/', '@', ',', '.' or spaces (it "
                         f"labels folders and `--methods` items), got {name!r}.")
    if METHODS.get(name, cls) is not cls:
        raise ValueError(f"A decoding method named {name!r} is already registered ({METHODS[name].__qualname__}): "
                         "give the new class another name.")
    if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):
        raise TypeError(f"{cls.__qualname__} must be a frozen dataclass (@dataclass(frozen=True, kw_only=True)).")
    METHODS[name] = cls
    return cls


def method_class(name: str) -> type[DecodingMethod]:
    """The spec class registered as ``name``."""
    check_value("name", name, choices=tuple(METHODS))
    return METHODS[name]


ALIASES = {"beta": "strength"}  # the paper's word for a method's strength, accepted where settings come by name


def method_settings_names() -> set[str]:
    """Every registered method's setting names, and their aliases: what a request or ``--model_args`` may hold."""
    return {field.name for cls in METHODS.values() for field in dataclasses.fields(cls)} | set(ALIASES)


def method_from_settings(name: str, given: dict[str, Any]) -> DecodingMethod:
    """The registered method ``name`` with settings given by name (lm-eval's ``--model_args``, a served request's
    body), refusing an unknown method, two names for one setting and a setting the method does not use
    (``prefix=...`` without ``method=ctd`` would otherwise decode plainly)."""
    if "beta" in given and "strength" in given:
        raise ValueError("`beta` and `strength` name the same setting: pass one of them.")
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; choose one of {', '.join(METHODS)}.")
    fields = {cls.name: {field.name for field in dataclasses.fields(cls)} for cls in METHODS.values()}
    unused = [key for key in given if ALIASES.get(key, key) not in fields[name]]
    if unused:
        users = sorted({user for key in unused for user, names in fields.items() if ALIASES.get(key, key) in names})
        raise ValueError(f"method={name} does not use {', '.join(unused)}"
                         + (f" (only method={'/'.join(users)} does)" if users else "")
                         + ": choose that method, or leave the setting out.")
    return METHODS[name](**{ALIASES.get(key, key): value for key, value in given.items()})


@dataclass(frozen=True, kw_only=True)
class DecodingMethod(ABC):
    """A decoding method's settings: frozen, checked on creation, loading nothing.

    Subclasses set ``name`` and ``help`` (class variables), declare their settings with
    :func:`ctd_hf.settings.setting` (``flag=`` the command-line spelling, ``needed=`` for a setting without which the
    method cannot run, ``answers=False`` for one that does not change the answers and stays out of the resume key)
    and define :meth:`bind`. Build one by its class (``ctd_hf.CTDMethod(prefix=...)``) or by name
    (``DecodingMethod.from_name("ctd", prefix=...)``).
    """

    name: ClassVar[str]
    help: ClassVar[str]

    def __post_init__(self) -> None:
        if type(self) is DecodingMethod or self.name not in METHODS:
            raise TypeError(f"{type(self).__qualname__} is not a registered decoding method: build one with "
                            "DecodingMethod.from_name(name, ...) or a registered class such as ctd_hf.CTDMethod.")
        check_settings(self)
        for field in dataclasses.fields(self):
            if field.metadata.get("needed") and getattr(self, field.name) is None:
                raise SettingError(field.name, f"is needed by method {self.name}: {field.metadata['needed']}.")

    @classmethod
    def from_name(cls, name: str, **settings: Any) -> DecodingMethod:
        """The registered method ``name`` with ``settings``."""
        return method_class(name)(**settings)

    def replace(self, **changes: Any) -> DecodingMethod:
        """A copy with ``changes`` (checked like a new method)."""
        return dataclasses.replace(self, **changes)

    def settings(self) -> dict[str, Any]:
        """The settings that decide this method's answers, as JSON-ready values: the resume key of every job that
        writes answers, and what reports and dataset cards record. Subclasses name a model or file by what identifies
        its content (:meth:`_setting`)."""
        values = {"method": self.name}
        for field in dataclasses.fields(self):
            if field.metadata.get("answers", True):
                values.update(self._setting(field.name, getattr(self, field.name)))
        return values

    def _setting(self, name: str, value: Any) -> dict[str, Any]:
        """The resume-key entries of one setting (by default the value itself)."""
        return {name: value}

    @abstractmethod
    def bind(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, loaded: dict | None = None
    ) -> BoundMethod:
        """This method on ``model``: read and check what it needs beside the model (once), ready to decode.

        ``loaded`` is a memo the caller may share between the methods of one run, so that what several of them need
        (one amateur for several strengths) is loaded once."""


class BoundMethod:
    """A method bound to a model: what its spec loaded, and the :class:`~ctd_hf.Contrast` each batch decodes with.

    A method whose contrast is the same for every batch (CTD's, CD's) binds to this class with that ``contrast``
    (``None``: plain decoding) and the ``models`` it loaded beside ``model`` (``{"amateur": ...}``, which records
    fingerprint); one whose contrast depends on the batch (Instructive Decoding's noisy prompts) overrides
    :meth:`second_message` and :meth:`contrast`.
    """

    def __init__(
        self,
        spec: DecodingMethod,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        contrast: Contrast | None = None,
        models: dict[str, PreTrainedModel] | None = None,
    ) -> None:
        self.spec, self.model, self.tokenizer = spec, model, tokenizer
        self._contrast, self.models = contrast, models or {}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def backend(self) -> str:
        """The executor the spec asks for (``auto``: doubled where the contrast allows)."""
        return getattr(self.spec, "backend", "auto")

    @property
    def prefix_length(self) -> int:
        """Positions the second view adds before each prompt (CTD's prefix), which position limits must count."""
        return 0 if self._contrast is None else self._contrast.prefix_length

    def second_message(self, message: dict) -> dict | None:
        """The user message the second view reads instead of ``message`` (Instructive Decoding's noisy
        instruction), or ``None`` when it reads the same prompt."""
        return None

    def contrast(self, second_prompts: tuple[torch.Tensor, torch.Tensor] | None = None) -> Contrast | None:
        """The contrast of one batch (``None``: plain decoding). ``second_prompts`` are the left-padded ids and mask
        of the batch's :meth:`second_message` prompts, for a method that has them."""
        return self._contrast

    def second_context(self, context: str) -> str | None:
        """The text the second view reads instead of a raw ``context`` (a harness context, a completion prompt),
        whose instruction is its first paragraph (up to the first blank line) and the rest its task input; ``None``
        when it reads the same text."""
        instruction, blank, task_input = context.partition("\n\n")
        if not blank:
            instruction, task_input = "", context
        second = self.second_message({"role": "user", "content": instruction, "input": task_input})
        return None if second is None else second["content"]

    def contrast_for(self, messages: list[dict], prompt_format: str) -> Contrast | None:
        """The contrast of a batch of user ``messages`` rendered in ``prompt_format``."""
        seconds = [self.second_message(message) for message in messages]
        if all(second is None for second in seconds):
            return self.contrast()
        encoded = [encode_prompt(format_prompt([second], prompt_format, self.tokenizer), self.tokenizer,
                                 prompt_format) for second in seconds]
        batch = pad_left(self.tokenizer, encoded).to(self.model.device)
        return self.contrast((batch["input_ids"], batch["attention_mask"]))


@dataclass(frozen=True, kw_only=True)
class ContrastMethod(DecodingMethod):
    """Base of the methods that decode with a contrast: the executor setting they share. ``executors`` are the
    transformers executors its contrast can run on (a contrast of two models or adapter states has no doubled
    batch)."""

    executors: ClassVar[tuple[str, ...]] = ("doubled", "stream")

    backend: str = setting("auto", choices=BACKENDS, aliases=("--path",), answers=False,
                           help="doubled: one 2B-row forward per step (ctd, id); stream: a processor with its own "
                                "cache; auto: doubled where possible. (--path is the deprecated name.)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend != "auto" and self.backend not in self.executors:
            raise SettingError("backend", f"{self.backend} cannot run method {self.name}, whose contrast needs "
                                          f"{' or '.join(self.executors)}: use {self.executors[0]} (or auto).")
