"""Contrastive decoding processors for stock ``model.generate()``."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import PreTrainedModel

from .contrast import check_strength, contrast_logits
from .prefix import insert_prefix, resolve_prefix
from .stream import ContrastProcessor


class CTDProcessor(ContrastProcessor):
    r"""Contrastive Tuning and Decoding: scores ``log_softmax(z - beta * z~)``.

    ``z`` are the scores ``generate()`` hands the processor and ``z~`` the logits of the same model with the tuned
    soft prefix placed before the prompt (a contrast stream with its own KV cache, one new token per step). The
    output is normalised so that beam search adds up log-probabilities of the contrasted distribution; greedy and
    sampling are unaffected by that normalisation. User processors run before ``generate()``'s temperature, top-k and
    top-p warpers, so those act on the contrasted scores.

    Args:
        model: the model whose ``generate()`` the processor is passed to.
        prefix: an adapter folder written by ``ctd-hf tune``, a prompt-tuning ``PeftModel`` or a
            ``(num_virtual_tokens, hidden)`` tensor.
        beta: contrast strength (0 gives plain decoding).

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> import torch
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                      num_hidden_layers=1, num_attention_heads=2)).eval()
        >>> processor = CTDProcessor(model, torch.randn(4, 16), beta=0.3)
        >>> model.generate(torch.tensor([[1, 5, 7]]), logits_processor=[processor], max_new_tokens=3,
        ...                do_sample=False, pad_token_id=0).shape
        torch.Size([1, 6])
    """

    def __init__(
        self, model: PreTrainedModel, prefix: str | Path | PeftModel | torch.Tensor, beta: float = 0.3
    ) -> None:
        self.beta = check_strength(beta, "beta")
        self.prefix = resolve_prefix(model, prefix)
        super().__init__(model)

    def contrast_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        embeds, mask = insert_prefix(self.model.get_input_embeddings()(input_ids), attention_mask, self.prefix)
        return {"inputs_embeds": embeds, "attention_mask": mask}

    def combine(self, scores: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(contrast_logits(scores, contrast, self.beta), dim=-1)
