"""Contrastive decoding processors for stock ``model.generate()``: CTD, Instructive Decoding, Contrastive Decoding.

Each is a :class:`~ctd_hf.stream.ContrastProcessor`: a contrast stream with its own KV cache follows the tokens
``generate()`` picks. User processors run before ``generate()``'s temperature, top-k and top-p warpers, so those act
on the contrasted scores.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .contrast import check_strength, contrastive_decoding_scores
from .prefix import check_left_padded, insert_prefix, resolve_prefix
from .stream import ContrastProcessor


class CTDProcessor(ContrastProcessor):
    r"""Contrastive Tuning and Decoding: scores ``log_softmax(z - beta * z~)``.

    ``z`` are the scores ``generate()`` hands the processor and ``z~`` the logits of the same model with the tuned
    soft prefix placed right before each prompt's first token.

    Args:
        model: the model whose ``generate()`` the processor is passed to.
        prefix: an adapter folder written by ``ctd-hf tune``, a prompt-tuning ``PeftModel`` or a
            ``(num_virtual_tokens, hidden)`` tensor.
        beta: contrast strength (0 gives plain decoding).

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
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
        self.prefix = resolve_prefix(model, prefix)
        super().__init__(model, check_strength(beta, "beta"))

    def contrast_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        embeds, mask = insert_prefix(self.model.get_input_embeddings()(input_ids), attention_mask, self.prefix)
        return {"inputs_embeds": embeds, "attention_mask": mask}


class InstructiveDecodingProcessor(ContrastProcessor):
    r"""Instructive Decoding (Kim et al. 2023): scores ``log_softmax(z - strength * z~)``, ``z~`` the same model's
    logits when it is given a noisy instruction instead of the real one.

    Args:
        model: the model whose ``generate()`` the processor is passed to.
        noisy_input_ids: one noisy prompt per prompt of the ``generate()`` batch, left-padded, in the same prompt
            format (build them with :func:`ctd_hf.noisy_instruction`); copies made by ``num_beams`` or
            ``num_return_sequences`` are matched automatically.
        noisy_attention_mask: their attention mask (all ones when omitted).
        strength: contrast strength (official default 0.3; 0 gives plain decoding).

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                      num_hidden_layers=1, num_attention_heads=2)).eval()
        >>> processor = InstructiveDecodingProcessor(model, torch.tensor([[1, 9]]), strength=0.3)
        >>> model.generate(torch.tensor([[1, 5, 7]]), logits_processor=[processor], max_new_tokens=3,
        ...                do_sample=False, pad_token_id=0).shape
        torch.Size([1, 6])
    """

    def __init__(
        self,
        model: PreTrainedModel,
        noisy_input_ids: torch.Tensor,
        noisy_attention_mask: torch.Tensor | None = None,
        strength: float = 0.3,
    ) -> None:
        mask = torch.ones_like(noisy_input_ids) if noisy_attention_mask is None else noisy_attention_mask
        check_left_padded(mask)
        self.noisy_input_ids, self.noisy_attention_mask = noisy_input_ids, mask
        super().__init__(model, check_strength(strength, "strength"))

    def contrast_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        rows, noisy_rows = input_ids.shape[0], self.noisy_input_ids.shape[0]
        if rows % noisy_rows:
            raise ValueError(
                f"generate() runs {rows} rows but {noisy_rows} noisy prompts were given: pass one noisy prompt per "
                "prompt of the batch."
            )
        copies = rows // noisy_rows
        return {
            "input_ids": self.noisy_input_ids.repeat_interleave(copies, dim=0),
            "attention_mask": self.noisy_attention_mask.repeat_interleave(copies, dim=0),
        }


class ContrastiveDecodingProcessor(ContrastProcessor):
    r"""Contrastive Decoding (Li et al. 2022): ``log p_expert - beta * log p_amateur`` on the plausible set
    ``p_expert >= alpha * max p_expert`` (``-inf`` elsewhere).

    The expert is the model whose ``generate()`` runs; the amateur (usually smaller, same tokenizer) runs as the
    contrast stream on the same tokens. Vocabulary sizes may differ only by padded rows of an embedding matrix,
    which needs ``tokenizer`` to tell them apart.

    Args:
        model: the expert.
        amateur: the amateur model.
        alpha: plausibility threshold (default 0.1).
        beta: weight of the amateur (1.0 in Li et al.; 0 gives the expert restricted to the plausible set).
        amateur_temperature: temperature of the amateur's distribution.
        tokenizer, amateur_tokenizer: when given, their vocabularies must be equal.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> def tiny(layers):
        ...     return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                         num_hidden_layers=layers, num_attention_heads=2)).eval()
        >>> expert = tiny(2)
        >>> processor = ContrastiveDecodingProcessor(expert, tiny(1), alpha=0.1)
        >>> expert.generate(torch.tensor([[1, 5, 7]]), logits_processor=[processor], max_new_tokens=3,
        ...                 do_sample=False, pad_token_id=0).shape
        torch.Size([1, 6])
    """

    def __init__(
        self,
        model: PreTrainedModel,
        amateur: PreTrainedModel,
        alpha: float = 0.1,
        beta: float = 1.0,
        amateur_temperature: float = 1.0,
        tokenizer: PreTrainedTokenizerBase | None = None,
        amateur_tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"`alpha` (the plausibility threshold) must be in (0, 1], got {alpha}.")
        if not amateur_temperature > 0:
            raise ValueError(f"`amateur_temperature` must be > 0, got {amateur_temperature}.")
        self.vocab_size = _shared_vocab_size(model, amateur, tokenizer, amateur_tokenizer)
        self.alpha, self.amateur_temperature = alpha, amateur_temperature
        super().__init__(model, check_strength(beta, "beta"), contrast_model=amateur)

    def contrast_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def combine(self, scores: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
        vocab = self.vocab_size
        expert = F.log_softmax(scores[..., :vocab].float(), dim=-1)
        amateur = F.log_softmax(contrast[..., :vocab].float() / self.amateur_temperature, dim=-1)
        combined = contrastive_decoding_scores(expert, amateur, self.alpha, self.strength)
        return F.pad(combined, (0, scores.shape[-1] - vocab), value=float("-inf"))


def _shared_vocab_size(
    expert: PreTrainedModel,
    amateur: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    amateur_tokenizer: PreTrainedTokenizerBase | None,
) -> int:
    """The logit width both models share, refusing models whose vocabularies really differ."""
    if tokenizer is not None and amateur_tokenizer is not None and tokenizer.get_vocab() != amateur_tokenizer.get_vocab():
        raise ValueError("The expert's and the amateur's tokenizers differ: Contrastive Decoding needs one vocabulary.")
    sizes = expert.get_output_embeddings().weight.shape[0], amateur.get_output_embeddings().weight.shape[0]
    if sizes[0] == sizes[1]:
        return sizes[0]
    if tokenizer is None or len(tokenizer) > min(sizes):
        raise ValueError(
            f"The expert has {sizes[0]} output rows and the amateur {sizes[1]}. That is fine only when the extra rows "
            "are padding beyond the tokenizer's vocabulary: pass `tokenizer=` so it can be checked "
            + ("" if tokenizer is None else f"(here the tokenizer has {len(tokenizer)} tokens, so it is not)")
            + "."
        )
    return min(sizes)
