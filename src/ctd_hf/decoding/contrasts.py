"""What is contrasted: a second view of the sequence that ``generate()`` writes, and how it combines with the first.

A :class:`Contrast` says which model computes the second view's logits ``z~`` and on which prompt (the generated
tokens follow it), and how ``z~`` and the model's own scores ``z`` combine. It runs nothing: the executors do, the
stream (:class:`~ctd_hf.ContrastProcessor`, own KV cache) and the doubled batch (:func:`~ctd_hf.generate_doubled`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..contrast import check_strength, contrast_logits, contrastive_decoding_scores
from ..training.prefix import resolve_prefix
from .layout import check_left_padded, insert_prefix


def decoding_model(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The model whose ``generate()`` an executor follows: a prompt-tuning ``PeftModel`` stands for its base model.

    peft's prompt tuning leaves the base model's modules untouched (the prefix lives in the wrapper), so the base model
    computes the original logits ``z``. Adapters that change weights (LoRA) leave no such model and are refused.
    """
    if not isinstance(model, PeftModel):
        return model
    if not model.active_peft_config.is_prompt_learning:
        raise ValueError(
            f"Contrastive decoding got a PeftModel with a {model.active_peft_config.peft_type} adapter, whose base "
            "model carries the adapter's weights, so it cannot give the original logits. Pass the model without "
            "the adapter, or decode with ctd_hf.LoRAContrast."
        )
    return model.get_base_model()


class Contrast(ABC):
    """Base of the contrasts: ``model`` is the model whose ``generate()`` runs, ``contrast_model`` computes ``z~``.

    Subclasses define :meth:`second_view` and, where it is not ``log_softmax(z - strength * z~)``, :meth:`combine`.
    """

    def __init__(
        self, model: PreTrainedModel, strength: float, contrast_model: PreTrainedModel | None = None
    ) -> None:
        self.model = decoding_model(model)
        self.strength = strength
        self.contrast_model = self.model if contrast_model is None else decoding_model(contrast_model)

    @property
    def shares_model(self) -> bool:
        """Whether both views come from the same model (then the doubled executor can run them as one batch)."""
        return self.contrast_model is self.model

    @abstractmethod
    def second_view(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The left-padded prompt of the second view for ``generate()``'s prompt rows ``input_ids``.

        Returns ``attention_mask`` and ``input_ids`` or ``inputs_embeds``; one row per row of ``input_ids`` (copies
        made by ``num_beams`` / ``num_return_sequences`` included).
        """

    def combine(self, scores: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
        """The processed scores, ``log_softmax(z - strength * z~)``: normalised so that beam search adds up
        log-probabilities of the contrasted distribution; greedy and sampling do not see the normalisation."""
        return F.log_softmax(contrast_logits(scores, contrast, self.strength), dim=-1)


class CTDContrast(Contrast):
    r"""Contrastive Tuning and Decoding: ``log_softmax(z - beta * z~)``, ``z~`` the logits of the same model with the
    tuned soft prefix placed right before each prompt's first token (where the trainer put it).

    Args:
        model: the model being decoded (the one the prefix was tuned for).
        prefix: an adapter folder written by ``ctd-hf tune``, a prompt-tuning ``PeftModel`` or a
            ``(num_virtual_tokens, hidden)`` tensor.
        beta: contrast strength (0 gives plain decoding).

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from ctd_hf import generate_doubled
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                      num_hidden_layers=1, num_attention_heads=2)).eval()
        >>> contrast = CTDContrast(model, torch.randn(4, 16), beta=0.3)
        >>> generate_doubled(model, contrast, input_ids=torch.tensor([[1, 5, 7]]), max_new_tokens=3,
        ...                  do_sample=False, pad_token_id=0).shape
        torch.Size([1, 6])
    """

    def __init__(
        self, model: PreTrainedModel, prefix: str | Path | PeftModel | torch.Tensor, beta: float = 0.3
    ) -> None:
        super().__init__(model, check_strength(beta, "beta"))
        self.prefix = resolve_prefix(self.model, prefix)

    def second_view(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        embeds, mask = insert_prefix(self.model.get_input_embeddings()(input_ids), attention_mask, self.prefix)
        return {"inputs_embeds": embeds, "attention_mask": mask}


class InstructiveContrast(Contrast):
    r"""Instructive Decoding (Kim et al. 2023): ``log_softmax(z - strength * z~)``, ``z~`` the same model's logits
    when it is given a noisy instruction instead of the real one.

    Noisy prompt ``i`` pairs with prompt ``i`` of the ``generate()`` batch. When ``num_beams`` or
    ``num_return_sequences`` make ``k`` consecutive copies of each prompt, ``k`` is the number of rows over the number of
    noisy prompts, and every group of ``k`` rows is checked to hold copies of one prompt.

    Args:
        model: the model being decoded.
        noisy_input_ids: one left-padded noisy prompt per prompt of the batch, in the same prompt format (build them
            with :func:`ctd_hf.noisy_instruction`).
        noisy_attention_mask: their attention mask; may be left out only for a single noisy prompt.
        strength: contrast strength (official default 0.3; 0 gives plain decoding).

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from ctd_hf import ContrastProcessor
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                      num_hidden_layers=1, num_attention_heads=2)).eval()
        >>> with ContrastProcessor(InstructiveContrast(model, torch.tensor([[1, 9]]), strength=0.3)) as processor:
        ...     model.generate(torch.tensor([[1, 5, 7]]), logits_processor=[processor], max_new_tokens=3,
        ...                    do_sample=False, pad_token_id=0).shape
        torch.Size([1, 6])
    """

    def __init__(
        self,
        model: PreTrainedModel,
        noisy_input_ids: torch.Tensor,
        noisy_attention_mask: torch.Tensor | None = None,
        strength: float = 0.3,
    ) -> None:
        super().__init__(model, check_strength(strength, "strength"))
        if noisy_input_ids.ndim != 2 or noisy_input_ids.shape[1] == 0:
            raise ValueError(f"`noisy_input_ids` must be a (prompts, tokens) tensor, got shape "
                             f"{tuple(noisy_input_ids.shape)}.")
        if noisy_attention_mask is None:
            if noisy_input_ids.shape[0] > 1:
                raise ValueError("Several noisy prompts need their `noisy_attention_mask` (which tokens are padding).")
            noisy_attention_mask = torch.ones_like(noisy_input_ids)
        if noisy_attention_mask.shape != noisy_input_ids.shape:
            raise ValueError(f"`noisy_attention_mask` has shape {tuple(noisy_attention_mask.shape)}, the noisy ids "
                             f"{tuple(noisy_input_ids.shape)}.")
        check_left_padded(noisy_attention_mask)
        self.noisy_input_ids, self.noisy_attention_mask = noisy_input_ids, noisy_attention_mask

    def second_view(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        rows, prompts = input_ids.shape[0], self.noisy_input_ids.shape[0]
        copies = rows // prompts
        groups = input_ids.view(prompts, copies, -1) if rows == prompts * copies else None
        if groups is None or not (groups == groups[:, :1]).all():
            raise ValueError(
                f"generate() runs {rows} rows but {prompts} noisy prompts were given: pass one noisy prompt per "
                "prompt of the batch (copies made by num_beams / num_return_sequences are matched automatically)."
            )
        device = input_ids.device
        return {
            "input_ids": self.noisy_input_ids.to(device).repeat_interleave(copies, dim=0),
            "attention_mask": self.noisy_attention_mask.to(device).repeat_interleave(copies, dim=0),
        }


class ContrastiveDecodingContrast(Contrast):
    r"""Contrastive Decoding (Li et al. 2022): ``log p_expert - beta * log p_amateur`` on the plausible set
    ``p_expert >= alpha * max p_expert`` (``-inf`` elsewhere).

    The expert is the model being decoded; the amateur (usually smaller, same tokenizer) reads the same tokens. Two
    models need two forwards, so only the stream executor runs it. Vocabulary sizes may differ only by padded rows of
    an embedding matrix, which needs ``tokenizer`` to tell them apart.

    Args:
        model: the expert.
        amateur: the amateur model.
        alpha: plausibility threshold (default 0.1).
        beta: weight of the amateur (1.0 in Li et al.; 0 gives the expert restricted to the plausible set).
        amateur_temperature: temperature of the amateur's distribution.
        tokenizer, amateur_tokenizer: when given, their vocabularies must be equal.
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
        if not (math.isfinite(amateur_temperature) and amateur_temperature > 0):
            raise ValueError(f"`amateur_temperature` must be a finite number > 0, got {amateur_temperature}.")
        super().__init__(model, check_strength(beta, "beta"), contrast_model=amateur)
        self.vocab_size = _shared_vocab_size(self.model, self.contrast_model, tokenizer, amateur_tokenizer)
        self.alpha, self.amateur_temperature = alpha, amateur_temperature

    def second_view(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
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
