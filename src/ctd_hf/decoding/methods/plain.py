"""``od``: plain decoding, the model's own ``generate()``."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .base import BoundMethod, DecodingMethod, register_method


@register_method
@dataclass(frozen=True, kw_only=True)
class ODMethod(DecodingMethod):
    """Plain decoding (the baseline every contrast is measured against): no settings, no contrast."""

    name = "od"
    help = "plain decoding"

    def bind(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, loaded: dict | None = None
    ) -> BoundMethod:
        return BoundMethod(self, model, tokenizer)
