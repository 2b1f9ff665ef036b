"""Decoding methods by name (``od``, ``id``, ``cd``, ``ctd``): the registry the CLI, synthesis and evaluation share.

A :class:`DecodingMethod` is a specification: which contrast, with which settings, on which executor. It builds the
:class:`~ctd_hf.Contrast` for a batch of chat messages; :mod:`ctd_hf.decoding.batch` runs it.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import KW_ONLY, InitVar, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..contrast import check_strength
from ..prompts import encode_prompt, format_prompt
from ..training.prefix import resolve_prefix
from .contrasts import Contrast, ContrastiveDecodingContrast, CTDContrast, InstructiveContrast
from .layout import pad_left
from .noise import NOISE_TYPES, noisy_message

METHODS = ("od", "id", "cd", "ctd")
BACKENDS = ("auto", "doubled", "stream")
DEFAULT_STRENGTH = {"od": 0.0, "id": 0.3, "cd": 1.0, "ctd": 0.3}
STRENGTH_NAMES = {"od": "strength", "id": "id strength", "cd": "cd beta", "ctd": "beta"}


@dataclass
class DecodingMethod:
    """A decoding method and its settings.

    ``strength`` is CTD's beta, ID's strength or CD's amateur weight (defaults 0.3, 0.3, 1.0). ``backend`` picks the
    executor: ``"doubled"`` (one 2B-row forward per step; CTD and ID), ``"stream"`` (a processor with its own cache
    in ``model.generate()``) or ``"auto"`` (doubled where possible).
    """

    name: str = field(default="od", metadata={"help": f"One of {METHODS}."})
    _: KW_ONLY
    strength: float | None = field(default=None, metadata={"help": "Contrast strength; None: the method's default."})
    prefix: str | Path | torch.Tensor | None = field(default=None, metadata={"help": "ctd: the tuned soft prefix."})
    noise: str = field(default="opposite", metadata={"help": f"id: the noisy instruction, one of {NOISE_TYPES}."})
    noise_rate: float = field(default=0.6, metadata={"help": "id: share of words trunc_shuf keeps."})
    amateur: PreTrainedModel | None = field(default=None, metadata={"help": "cd: the amateur model."})
    plausibility: float = field(default=0.1, metadata={"help": "cd: alpha of the plausible set."})
    amateur_temperature: float = field(default=1.0, metadata={"help": "cd: temperature of the amateur."})
    backend: str = field(default="auto", metadata={"help": f"Executor, one of {BACKENDS}."})
    path: InitVar[str | None] = None  # deprecated name of `backend`
    _prefix_tensor: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self, path: str | None) -> None:
        if path is not None:
            warnings.warn("DecodingMethod(path=...) is deprecated; use backend=...", DeprecationWarning, stacklevel=3)
            self.backend = path
        if self.name not in METHODS:
            raise ValueError(f"Unknown method {self.name!r}; choose one of {METHODS}.")
        if self.name == "ctd" and self.prefix is None:
            raise ValueError("Method ctd needs a prefix (--prefix DIR written by `ctd-hf tune`).")
        if self.name == "cd" and self.amateur is None:
            raise ValueError("Method cd needs an amateur model (--amateur).")
        if self.backend not in BACKENDS:
            raise ValueError(f"`backend` is one of {BACKENDS}, got {self.backend!r}.")
        if self.name == "cd" and self.backend == "doubled":
            raise ValueError("Contrastive Decoding runs two models, so it has no doubled batch: use backend='stream'.")
        if self.strength is None:
            self.strength = DEFAULT_STRENGTH[self.name]
        self.strength = check_strength(self.strength, STRENGTH_NAMES[self.name])
        if self.noise not in NOISE_TYPES:
            raise ValueError(f"Unknown noise {self.noise!r}; choose one of {NOISE_TYPES}.")
        if not 0 <= self.noise_rate <= 1:
            raise ValueError(f"`noise_rate` (the share of words trunc_shuf keeps) must be in [0, 1], got "
                             f"{self.noise_rate}.")
        if not 0 < self.plausibility <= 1:
            raise ValueError(f"`plausibility` (CD's alpha) must be in (0, 1], got {self.plausibility}.")
        if not (math.isfinite(self.amateur_temperature) and self.amateur_temperature > 0):
            raise ValueError(f"`amateur_temperature` must be a finite number > 0, got {self.amateur_temperature}.")
        if self.name == "ctd" and not isinstance(self.prefix, torch.Tensor):
            if not Path(self.prefix, "adapter_model.safetensors").is_file():
                raise FileNotFoundError(f"The prefix folder {self.prefix} holds no adapter_model.safetensors: point "
                                        "--prefix at a folder written by `ctd-hf tune`.")

    def check(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        """Refuse settings that do not fit ``model`` (a prefix trained for another model, an amateur with another
        vocabulary) before any answer is generated or written."""
        if self.name == "ctd" and self._prefix_tensor is None:
            self._prefix_tensor = resolve_prefix(model, self.prefix)
        if self.name == "cd":
            ContrastiveDecodingContrast(model, self.amateur, self.plausibility, self.strength, self.amateur_temperature,
                                        tokenizer=tokenizer)

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
            values["amateur"] = str(self.amateur.name_or_path)
        if self.name == "ctd":
            values.update(prefix_fingerprint(self.prefix))
        return values

    def contrast(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        messages: list[dict],
        prompt_format: str,
    ) -> Contrast | None:
        """The contrast for one batch of single-turn prompts (user messages); ``None`` for plain decoding."""
        if self.name == "ctd":
            self.check(model, tokenizer)  # the prefix is read and checked once, then reused for every batch
            return CTDContrast(model, self._prefix_tensor, self.strength)
        if self.name == "id":
            noisy = [noisy_message(message, self.noise, self.noise_rate) for message in messages]
            encoded = [encode_prompt(format_prompt([message], prompt_format, tokenizer), tokenizer, prompt_format)
                       for message in noisy]
            batch = pad_left(tokenizer, encoded).to(model.device)
            return InstructiveContrast(model, batch["input_ids"], batch["attention_mask"], self.strength)
        if self.name == "cd":
            return ContrastiveDecodingContrast(model, self.amateur, self.plausibility, self.strength,
                                               self.amateur_temperature, tokenizer=tokenizer)
        return None


def prefix_fingerprint(prefix: str | Path | torch.Tensor) -> dict[str, str]:
    """``prefix`` (its folder, or a tensor's shape) and ``prefix_sha256`` (of the adapter weights file, or of the
    tensor's float32 bytes)."""
    if isinstance(prefix, torch.Tensor):
        data = prefix.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        return {"prefix": f"tensor{tuple(prefix.shape)}", "prefix_sha256": hashlib.sha256(data).hexdigest()}
    weights = Path(prefix) / "adapter_model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
    return {"prefix": str(prefix), "prefix_sha256": digest}
