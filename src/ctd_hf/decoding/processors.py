"""The stream executor named per method: ``CTDProcessor``, ``InstructiveDecodingProcessor`` and
``ContrastiveDecodingProcessor`` are :class:`~ctd_hf.ContrastProcessor` objects that build their contrast from the
method's own arguments, for ``model.generate(logits_processor=[...])`` inside their ``with`` block."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..formula import DEFAULT_CD_STRENGTH, DEFAULT_PLAUSIBILITY, DEFAULT_STRENGTH
from ..settings import renamed_arguments
from .contrasts import ContrastiveDecodingContrast, CTDContrast, InstructiveContrast
from .recording import OriginalPredictions
from .stream import ContrastProcessor


class CTDProcessor(ContrastProcessor):
    r"""Contrastive Tuning and Decoding in ``generate()``: scores ``log_softmax(z - strength * z~)``.

    ``z`` are the scores ``generate()`` hands the processor and ``z~`` the logits of the same model with the tuned
    soft prefix placed right before each prompt's first token (:class:`~ctd_hf.CTDContrast`).

    Args:
        model: the model whose ``generate()`` the processor is passed to.
        prefix: an adapter folder written by ``ctd-hf tune``, a prompt-tuning ``PeftModel`` or a
            ``(num_virtual_tokens, hidden)`` tensor.
        strength: contrast strength, the paper's ``beta`` (0 gives plain decoding; ``beta=`` is its deprecated name
            here).
        record: an :class:`~ctd_hf.OriginalPredictions` to fill with the original model's per-step predictions.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                      num_hidden_layers=1, num_attention_heads=2)).eval()
        >>> with CTDProcessor(model, torch.randn(4, 16), strength=0.3) as processor:
        ...     model.generate(torch.tensor([[1, 5, 7]]), logits_processor=[processor], max_new_tokens=3,
        ...                    min_new_tokens=3, do_sample=False, pad_token_id=0).shape
        torch.Size([1, 6])
    """

    @renamed_arguments(beta="strength")
    def __init__(
        self,
        model: PreTrainedModel,
        prefix: str | Path | PeftModel | torch.Tensor,
        strength: float = DEFAULT_STRENGTH,
        record: OriginalPredictions | None = None,
    ) -> None:
        super().__init__(CTDContrast(model, prefix, strength), record)


class InstructiveDecodingProcessor(ContrastProcessor):
    r"""Instructive Decoding (Kim et al. 2023) in ``generate()``: scores ``log_softmax(z - strength * z~)``, ``z~``
    the same model's logits when it is given a noisy instruction (:class:`~ctd_hf.InstructiveContrast`).

    Args:
        model: the model whose ``generate()`` the processor is passed to.
        noisy_input_ids: one left-padded noisy prompt per prompt of the ``generate()`` batch, in the same prompt
            format (build them with :func:`ctd_hf.noisy_instruction`); copies made by ``num_beams`` or
            ``num_return_sequences`` are matched automatically.
        noisy_attention_mask: their attention mask; may be left out only for a single noisy prompt.
        strength: contrast strength (official default 0.3; 0 gives plain decoding).
        record: an :class:`~ctd_hf.OriginalPredictions` to fill with the original model's per-step predictions.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                      num_hidden_layers=1, num_attention_heads=2)).eval()
        >>> with InstructiveDecodingProcessor(model, torch.tensor([[1, 9]]), strength=0.3) as processor:
        ...     model.generate(torch.tensor([[1, 5, 7]]), logits_processor=[processor], max_new_tokens=3,
        ...                    min_new_tokens=3, do_sample=False, pad_token_id=0).shape
        torch.Size([1, 6])
    """

    def __init__(
        self,
        model: PreTrainedModel,
        noisy_input_ids: torch.Tensor,
        noisy_attention_mask: torch.Tensor | None = None,
        strength: float = DEFAULT_STRENGTH,
        record: OriginalPredictions | None = None,
    ) -> None:
        super().__init__(InstructiveContrast(model, noisy_input_ids, noisy_attention_mask, strength), record)


class ContrastiveDecodingProcessor(ContrastProcessor):
    r"""Contrastive Decoding (Li et al. 2022) in ``generate()``: ``log p_expert - strength * log p_amateur`` on the
    plausible set ``p_expert >= plausibility * max p_expert`` (:class:`~ctd_hf.ContrastiveDecodingContrast`).

    Args:
        model: the expert, whose ``generate()`` runs.
        amateur: the amateur model (usually smaller, same tokenizer), run as the contrast stream.
        plausibility: the plausibility threshold, the paper's ``alpha`` (default 0.1).
        strength: weight of the amateur, the paper's ``beta`` (1.0 in Li et al.; 0 gives the expert restricted to
            the plausible set). ``alpha=`` and ``beta=`` are the deprecated names of these two.
        amateur_temperature: temperature of the amateur's distribution.
        tokenizer, amateur_tokenizer: when given, their vocabularies must be equal; ``tokenizer`` also tells padded
            embedding rows from a real vocabulary mismatch.
        record: an :class:`~ctd_hf.OriginalPredictions` to fill with the expert's per-step predictions.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> def tiny(layers):
        ...     return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                         num_hidden_layers=layers, num_attention_heads=2)).eval()
        >>> expert = tiny(2)
        >>> with ContrastiveDecodingProcessor(expert, tiny(1), plausibility=0.1) as processor:
        ...     expert.generate(torch.tensor([[1, 5, 7]]), logits_processor=[processor], max_new_tokens=3,
        ...                     min_new_tokens=3, do_sample=False, pad_token_id=0).shape
        torch.Size([1, 6])
    """

    @renamed_arguments(alpha="plausibility", beta="strength")
    def __init__(
        self,
        model: PreTrainedModel,
        amateur: PreTrainedModel,
        plausibility: float = DEFAULT_PLAUSIBILITY,
        strength: float = DEFAULT_CD_STRENGTH,
        amateur_temperature: float = 1.0,
        tokenizer: PreTrainedTokenizerBase | None = None,
        amateur_tokenizer: PreTrainedTokenizerBase | None = None,
        record: OriginalPredictions | None = None,
    ) -> None:
        contrast = ContrastiveDecodingContrast(model, amateur, plausibility, strength, amateur_temperature, tokenizer,
                                               amateur_tokenizer)
        super().__init__(contrast, record)
