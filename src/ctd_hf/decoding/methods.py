"""Decoding methods by name (``od``, ``id``, ``cd``, ``ctd``): one specification shared by the CLI, evaluation,
synthesis and the lm-eval model.

A :class:`DecodingMethod` says which contrast, with which settings, on which executor; :meth:`DecodingMethod.contrast`
is the one place it becomes a :class:`~ctd_hf.Contrast`. :mod:`ctd_hf.decoding.answers` runs it on chat messages.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import KW_ONLY, InitVar, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..adapter import resolve_prefix
from ..models import load_model_and_tokenizer, resolve_model_path
from ..prompts import encode_prompt, format_prompt
from ..settings import (SettingError, check_settings, contrast_strength, positive_number, probability, setting,
                        unit_interval)
from .contrasts import Contrast, ContrastiveDecodingContrast, CTDContrast, InstructiveContrast
from .layout import pad_left
from .noise import NOISE_TYPES, noisy_message

METHODS = ("od", "id", "cd", "ctd")
BACKENDS = ("auto", "doubled", "stream")
DEFAULT_STRENGTH = {"od": 0.0, "id": 0.3, "cd": 1.0, "ctd": 0.3}


@dataclass
class DecodingMethod:
    """A decoding method and its settings.

    ``strength`` is CTD's beta, ID's strength or CD's amateur weight (defaults 0.3, 0.3, 1.0). ``backend`` picks the
    executor: ``"doubled"`` (one 2B-row forward per step; CTD and ID), ``"stream"`` (a processor with its own cache
    in ``model.generate()``) or ``"auto"`` (doubled where possible).
    """

    name: str = setting("od", choices=METHODS, cli=False, help="The method.")
    _: KW_ONLY
    strength: float | None = setting(
        None, check=contrast_strength, help="Contrast strength; None: the method's default (ctd 0.3, id 0.3, cd 1.0).",
        flags={"ctd": (("--beta",), "ctd: contrast strength beta (default 0.3)."),
               "id": (("--id-strength",), "id: contrast strength (default 0.3)."),
               "cd": (("--cd-beta",), "cd: weight of the amateur (default 1.0).")})
    prefix: str | Path | torch.Tensor | None = setting(None, help="ctd: prefix folder written by `ctd-hf tune`.")
    noise: str = setting("opposite", choices=NOISE_TYPES, help="id: the noisy instruction.")
    noise_rate: float = setting(0.6, check=probability, help="id: share of words trunc_shuf keeps.")
    amateur: PreTrainedModel | str | None = setting(None, flag_type=str, help=(
        "cd: the amateur model (folder, hub name or 'default'; the expert itself when both name one model)."))
    plausibility: float = setting(0.1, check=unit_interval, help="cd: alpha of the plausible set.")
    amateur_temperature: float = setting(1.0, check=positive_number, help="cd: temperature of the amateur.")
    backend: str = setting("auto", choices=BACKENDS, aliases=("--path",),
                           help="doubled: one 2B-row forward per step (ctd, id); stream: a processor with its own "
                                "cache; auto: doubled where possible. (--path is the deprecated name.)")
    path: InitVar[str | None] = None  # deprecated name of `backend`
    _prefix_tensor: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _amateur_tokenizer: PreTrainedTokenizerBase | None = field(default=None, init=False, repr=False, compare=False)
    _built: tuple[PreTrainedModel, Contrast] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self, path: str | None) -> None:
        if path is not None:
            warnings.warn("DecodingMethod(path=...) is deprecated; use backend=...", DeprecationWarning, stacklevel=3)
            self.backend = path
        check_settings(self)
        if self.name == "ctd" and self.prefix is None:
            raise SettingError("prefix", "is needed by method ctd: a folder written by `ctd-hf tune`.")
        if self.name == "cd" and self.amateur is None:
            raise SettingError("amateur", "is needed by method cd: a smaller model with the same tokenizer.")
        if self.name == "cd" and self.backend == "doubled":
            raise SettingError("backend", "doubled cannot run Contrastive Decoding, which runs two models: use "
                                          "stream.")
        if self.strength is None:
            self.strength = DEFAULT_STRENGTH[self.name]
        if self.name == "ctd" and not isinstance(self.prefix, torch.Tensor):
            if not Path(self.prefix, "adapter_model.safetensors").is_file():
                raise FileNotFoundError(f"The prefix folder {self.prefix} holds no adapter_model.safetensors: point "
                                        "`prefix` at a folder written by `ctd-hf tune`.")

    def check(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        """Read what the method needs beside ``model`` (CTD's prefix; CD's amateur, loaded on the model's device and
        dtype when named) and refuse what does not fit it (a prefix trained for another model, an amateur with another
        vocabulary), before any answer is generated or written."""
        self._read(model, tokenizer)
        if self.name == "cd":
            self.contrast(model, tokenizer)  # its constructor compares the vocabularies

    def _read(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        """Read CTD's prefix (checked against ``model``) or load CD's named amateur, once."""
        if self.name == "ctd" and self._prefix_tensor is None:
            self._prefix_tensor = resolve_prefix(model, self.prefix)
        if self.name == "cd" and isinstance(self.amateur, (str, Path)):
            self.amateur, self._amateur_tokenizer = self._load_amateur(model, tokenizer)

    def _load_amateur(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        try:
            path = resolve_model_path(str(self.amateur))
            if path == str(model.name_or_path):
                return model, tokenizer  # one copy in memory
            amateur, amateur_tokenizer = load_model_and_tokenizer(path, dtype=model.dtype, device=model.device)
        except OSError as error:
            raise SettingError("amateur", str(error)) from None
        return amateur.eval(), amateur_tokenizer

    @property
    def prefix_length(self) -> int:
        """Positions the second view adds before the prompt (CTD's prefix; known after :meth:`check`)."""
        return 0 if self._prefix_tensor is None else self._prefix_tensor.shape[0]

    @property
    def doubled(self) -> bool:
        """Whether this method runs on the doubled executor."""
        return self.name != "cd" and self.backend != "stream"

    def settings(self) -> dict[str, Any]:
        """The settings that define this method's outputs, for reports, resume keys and dataset cards; a CTD prefix
        is named and fingerprinted (SHA-256 of its weights)."""
        keep = {"od": (), "ctd": ("strength",), "id": ("strength", "noise", "noise_rate"),
                "cd": ("strength", "plausibility", "amateur_temperature")}[self.name]
        values = {"method": self.name, **{key: getattr(self, key) for key in keep}}
        if self.name == "cd":
            values["amateur"] = str(getattr(self.amateur, "name_or_path", self.amateur))
        if self.name == "ctd":
            values.update(prefix_fingerprint(self.prefix))
        return values

    def contrast(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        noisy: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Contrast | None:
        """The method's :class:`~ctd_hf.Contrast` on ``model`` (``None`` for plain decoding): the one place a method
        becomes a contrast, for the CLI, evaluation, synthesis and the lm-eval model. Instructive Decoding contrasts
        with this batch's noisy prompts, ``noisy`` (left-padded ids and mask, e.g. from :meth:`noisy_prompts`)."""
        if self.name == "od":
            return None
        if self.name == "id":
            if noisy is None:
                raise ValueError("Instructive Decoding contrasts with the batch's noisy prompts: pass `noisy`.")
            return InstructiveContrast(model, *noisy, strength=self.strength)
        # CTD's and CD's contrasts hold no per-batch state: built once per model (CD's compares two vocabularies).
        if self._built is None or self._built[0] is not model:
            self._read(model, tokenizer)
            if self.name == "ctd":
                built = CTDContrast(model, self._prefix_tensor, self.strength)
            else:
                built = ContrastiveDecodingContrast(model, self.amateur, self.plausibility, self.strength,
                                                    self.amateur_temperature, tokenizer=tokenizer,
                                                    amateur_tokenizer=self._amateur_tokenizer)
            self._built = (model, built)
        return self._built[1]

    def noisy_prompts(
        self, tokenizer: PreTrainedTokenizerBase, messages: list[dict], prompt_format: str, device: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Instructive Decoding's second view of a batch of single-turn prompts (user messages), left-padded; ``None``
        for the other methods, whose second view needs no other prompt."""
        if self.name != "id":
            return None
        noisy = [noisy_message(message, self.noise, self.noise_rate) for message in messages]
        encoded = [encode_prompt(format_prompt([message], prompt_format, tokenizer), tokenizer, prompt_format)
                   for message in noisy]
        batch = pad_left(tokenizer, encoded).to(device)
        return batch["input_ids"], batch["attention_mask"]


def prefix_fingerprint(prefix: str | Path | torch.Tensor) -> dict[str, str]:
    """``prefix`` (its folder, or a tensor's shape) and ``prefix_sha256`` (of the adapter weights file, or of the
    tensor's float32 bytes)."""
    if isinstance(prefix, torch.Tensor):
        data = prefix.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        return {"prefix": f"tensor{tuple(prefix.shape)}", "prefix_sha256": hashlib.sha256(data).hexdigest()}
    weights = Path(prefix) / "adapter_model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
    return {"prefix": str(prefix), "prefix_sha256": digest}
