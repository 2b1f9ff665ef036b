"""``id``: Instructive Decoding (Kim et al. 2023), the model contrasted with itself given a noisy instruction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ...formula import DEFAULT_STRENGTH
from ...settings import contrast_strength, probability, setting
from ..contrasts import Contrast, InstructiveContrast
from ..noise import NOISE_TYPES, noisy_message
from .base import BoundMethod, ContrastMethod, register_method


@register_method
@dataclass(frozen=True, kw_only=True)
class IDMethod(ContrastMethod):
    """Instructive Decoding: ``z~`` is the model's logits on the same task input under a noisy instruction
    (:class:`~ctd_hf.InstructiveContrast`); ``noise`` is how the instruction is damaged (the official code's kinds)."""

    name = "id"
    help = "Instructive Decoding"

    strength: float = setting(DEFAULT_STRENGTH, check=contrast_strength, flag="--id-strength",
                              help="contrast strength.")
    noise: str = setting("opposite", choices=NOISE_TYPES, help="the noisy instruction.")
    noise_rate: float = setting(0.6, check=probability, help="share of words trunc_shuf keeps.")

    def bind(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, loaded: dict | None = None
    ) -> BoundMethod:
        return _BoundID(self, model, tokenizer)


class _BoundID(BoundMethod):
    spec: IDMethod

    def second_message(self, message: dict) -> dict:
        return noisy_message(message, self.spec.noise, self.spec.noise_rate)

    def contrast(self, second_prompts: tuple[torch.Tensor, torch.Tensor] | None = None) -> Contrast:
        if second_prompts is None:
            raise ValueError("Instructive Decoding contrasts with the batch's noisy prompts: pass `second_prompts` "
                             "(left-padded ids and mask), or decode messages with contrast_for().")
        return InstructiveContrast(self.model, *second_prompts, strength=self.spec.strength)
