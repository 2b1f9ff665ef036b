"""Decoding methods by name (``od``, ``id``, ``cd``, ``ctd``): one place that builds their processors and runs a
batch of prompts, shared by the CLI, dataset synthesis and evaluation."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .doubled import generate
from .noise import noisy_instruction
from .prefix import resolve_prefix
from .processors import ContrastiveDecodingProcessor, CTDProcessor, InstructiveDecodingProcessor
from .prompts import encode_prompt, format_prompt
from .stream import ContrastProcessor

METHODS = ("od", "id", "cd", "ctd")
_DEFAULT_STRENGTH = {"od": 0.0, "id": 0.3, "cd": 1.0, "ctd": 0.3}


@dataclass
class DecodingMethod:
    """A decoding method and its settings.

    ``strength`` is CTD's beta, ID's strength or CD's amateur weight (defaults 0.3, 0.3, 1.0). ``path`` is
    ``"doubled"`` (one 2B-row forward per step; CTD and ID), ``"stream"`` (a processor in ``model.generate()``) or
    ``"auto"`` (doubled where possible).
    """

    name: str = "od"
    strength: float | None = None
    prefix: str | Path | torch.Tensor | None = None
    noise: str = "opposite"
    noise_rate: float = 0.6
    amateur: PreTrainedModel | None = None
    plausibility: float = 0.1
    amateur_temperature: float = 1.0
    path: str = "auto"
    _prefix_tensor: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"Unknown method {self.name!r}; choose one of {METHODS}.")
        if self.name == "ctd" and self.prefix is None:
            raise ValueError("Method ctd needs a prefix (--prefix DIR written by `ctd-hf tune`).")
        if self.name == "cd" and self.amateur is None:
            raise ValueError("Method cd needs an amateur model (--amateur).")
        if self.path not in ("auto", "doubled", "stream"):
            raise ValueError(f"`path` is auto, doubled or stream, got {self.path!r}.")
        if self.name == "cd" and self.path == "doubled":
            raise ValueError("Contrastive Decoding runs two models, so it has no doubled batch: use path='stream'.")
        if self.strength is None:
            self.strength = _DEFAULT_STRENGTH[self.name]

    def settings(self) -> dict[str, Any]:
        """The settings that define this method's outputs, for reports and dataset cards."""
        keep = {"od": (), "ctd": ("strength", "prefix"), "id": ("strength", "noise", "noise_rate"),
                "cd": ("strength", "plausibility", "amateur_temperature")}[self.name]
        values = {"method": self.name, **{key: getattr(self, key) for key in keep}}
        if self.name == "cd":
            values["amateur"] = str(self.amateur.name_or_path)
        if "prefix" in values:
            values["prefix"] = values["prefix"] if isinstance(values["prefix"], str) else str(values["prefix"])
        return values

    def processor(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        messages: list[dict],
        prompt_format: str,
    ) -> ContrastProcessor | None:
        """The processor for one batch of single-turn prompts (``None`` for plain decoding)."""
        if self.name == "ctd":
            if self._prefix_tensor is None:  # read and checked once, reused for every batch
                self._prefix_tensor = resolve_prefix(model, self.prefix)
            return CTDProcessor(model, self._prefix_tensor, self.strength)
        if self.name == "id":
            noisy = [
                {"role": "user", "content": noisy_instruction(
                    m["content"].removeprefix(m.get("label", "")), m.get("input") or "", self.noise, self.noise_rate,
                    seed=zlib.crc32(m["content"].encode()), label=m.get("label", ""))}
                for m in messages
            ]
            encoded = [encode_prompt(format_prompt([m], prompt_format, tokenizer), tokenizer, prompt_format) for m in noisy]
            batch = _pad_left(tokenizer, encoded).to(model.device)
            return InstructiveDecodingProcessor(model, batch["input_ids"], batch["attention_mask"], self.strength)
        if self.name == "cd":
            return ContrastiveDecodingProcessor(model, self.amateur, self.plausibility, self.strength,
                                                self.amateur_temperature, tokenizer=tokenizer)
        return None

    @torch.no_grad()
    def run(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        messages: list[dict],
        prompt_format: str = "chatml",
        record_original: bool = False,
        **generate_kwargs: Any,
    ) -> tuple[Any, int, ContrastProcessor | None]:
        """Run ``generate()`` on a batch of single-turn prompts (user messages).

        Returns ``generate()``'s output, the prompt length and the processor (whose ``original`` holds the
        original model's per-step predictions when ``record_original``).
        """
        encoded = [encode_prompt(format_prompt([m], prompt_format, tokenizer), tokenizer, prompt_format) for m in messages]
        inputs = _pad_left(tokenizer, encoded).to(model.device)
        processor = self.processor(model, tokenizer, messages, prompt_format)
        if processor is not None and record_original:
            processor.original = []
        options = {"pad_token_id": tokenizer.pad_token_id, **generate_kwargs}
        if processor is None:
            output = model.generate(**inputs, **options)
        elif self.path == "stream" or (self.path == "auto" and self.name == "cd"):
            output = model.generate(**inputs, logits_processor=[processor], **options)
        else:
            output = generate(model, processor, **inputs, **options)
        return output, inputs["input_ids"].shape[1], processor

    def generate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        messages: list[dict],
        prompt_format: str = "chatml",
        **generate_kwargs: Any,
    ) -> list[str]:
        """Answer a batch of single-turn prompts (user messages); returns the decoded answers."""
        output, prompt_length, _ = self.run(model, tokenizer, messages, prompt_format, **generate_kwargs)
        return [answer.strip() for answer in tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)]


def _pad_left(tokenizer: PreTrainedTokenizerBase, encoded: list[list[int]]) -> Any:
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return tokenizer.pad({"input_ids": encoded}, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
