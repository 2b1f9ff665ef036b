"""Contrasted log-likelihood of given continuations (teacher forcing): how CTD, ID and CD score answer options.

Decoding picks tokens from ``contrast.combine(z, z~)``; scoring reads the same distribution at every position of a
known continuation. ``z`` comes from the model on ``context + continuation``, ``z~`` from ``contrast.contrast_model``
on ``contrast.second_view(context)`` followed by the same continuation tokens (for CTD the view puts the soft prefix
before the context; for ID it is the noisy prompt; for CD the same prompt read by the amateur), with positions
counted from the mask as the executors count them. The CTD paper scores MMLU this way.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from .contrasts import Contrast, check_loaded
from .layout import check_left_padded, check_positions, max_positions, pad_ids, positions_from_mask


class ContinuationScore(NamedTuple):
    """The contrasted log-probability of each continuation token, and whether each was the distribution's argmax."""

    log_probs: torch.Tensor
    greedy: bool


@torch.no_grad()
def continuation_log_probs(
    contrast: Contrast | PreTrainedModel, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]
) -> list[ContinuationScore]:
    """Score ``continuations[i]`` after ``contexts[i]`` (token ids) under ``contrast.combine(z, z~)``, as one batch
    (``contrast`` a model: under its own ``log_softmax(z)``, plain decoding's distribution).

    ``log_probs`` of a continuation of ``n`` tokens has shape ``(n,)``; its sum is the continuation's contrasted
    log-likelihood. With strength 0, CTD and ID give the model's own ``log_softmax(z)``.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from ctd_hf import CTDContrast
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                      num_hidden_layers=1, num_attention_heads=2)).eval()
        >>> scores = continuation_log_probs(CTDContrast(model, torch.randn(4, 16), strength=0.3), [[1, 5, 7], [1]],
        ...                                 [[9, 3], [4]])
        >>> [tuple(score.log_probs.shape) for score in scores]
        [(2,), (1,)]
    """
    if len(contexts) != len(continuations) or not contexts:
        raise ValueError(f"Got {len(contexts)} contexts and {len(continuations)} continuations; pass one context per "
                         "continuation, at least one of each.")
    if any(len(tokens) == 0 for tokens in continuations):
        raise ValueError("Every continuation needs at least one token.")
    # Fed after the context: all continuation tokens but the last, which is only predicted.
    scores = _scores(contrast, contexts, [tokens[:-1] for tokens in continuations])  # (batch, width, vocab)
    width = scores.shape[1]
    # Every row ends with its continuation, so row i's scores are its last len(continuations[i]) positions.
    targets, valid = pad_ids(continuations, scores.device, side="left")
    log_probs = scores.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    greedy = ((scores.argmax(dim=-1) == targets) | (valid == 0)).all(dim=1)
    return [ContinuationScore(row[width - len(tokens):].cpu(), bool(ok))
            for row, tokens, ok in zip(log_probs, continuations, greedy)]


@torch.no_grad()
def next_token_log_probs(contrast: Contrast | PreTrainedModel, contexts: Sequence[Sequence[int]]) -> torch.Tensor:
    """The ``(batch, vocab)`` distribution of the token after each context, as :func:`continuation_log_probs` scores
    it: how a method answers a multiple-choice question by the first token of each option (MMLU's letters)."""
    if not contexts:
        raise ValueError("Pass at least one context.")
    return _scores(contrast, contexts, [[] for _ in contexts])[:, -1]


def _scores(
    contrast: Contrast | PreTrainedModel, contexts: Sequence[Sequence[int]], tails: Sequence[Sequence[int]]
) -> torch.Tensor:
    """The contrasted scores (or the model's log-probabilities) at the last ``1 + longest tail`` positions of each
    context followed by its tail tokens, left-aligned."""
    if any(len(context) == 0 for context in contexts):
        raise ValueError("Every context needs at least one token (start an empty context with the BOS token).")
    model = contrast.model if isinstance(contrast, Contrast) else contrast
    check_loaded(model)
    context_ids, context_mask = pad_ids(contexts, model.device, side="left")
    tail_ids = pad_ids(tails, model.device)
    width = 1 + max(len(tail) for tail in tails)
    original = _logits(model, {"input_ids": context_ids, "attention_mask": context_mask}, tail_ids, width)
    if not isinstance(contrast, Contrast):
        return F.log_softmax(original, dim=-1)
    second = _logits(contrast.contrast_model, contrast.second_view(context_ids, context_mask), tail_ids, width)
    return contrast.contrasted_scores(original, second.to(original.device))


def _left_aligned(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real positions (mask 1, in order) to its end: the left-padded layout of the executors."""
    order = torch.sort(mask, dim=1, stable=True).indices
    gather = order if values.ndim == 2 else order.unsqueeze(-1).expand_as(values)
    return values.gather(1, gather), mask.gather(1, order)


def _logits(
    model: PreTrainedModel, view: dict[str, torch.Tensor], tails: tuple[torch.Tensor, torch.Tensor], width: int
) -> torch.Tensor:
    """Float logits of the last ``width`` positions of ``model`` on a left-padded view followed by the tail tokens."""
    check_left_padded(view["attention_mask"])
    embed = model.get_input_embeddings()
    tail_ids, tail_mask = (tensor.to(model.device) for tensor in tails)
    prompt = view["inputs_embeds"] if "inputs_embeds" in view else embed(view["input_ids"].to(model.device))
    embeds = torch.cat([prompt.to(model.device), embed(tail_ids).to(prompt.dtype)], dim=1)
    mask = torch.cat([view["attention_mask"].to(model.device).long(), tail_mask], dim=1)
    embeds, mask = _left_aligned(embeds, mask)
    check_positions(max_positions(model), int(mask.sum(dim=1).max()), "Scoring a continuation")
    outputs = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask),
                    use_cache=False, logits_to_keep=width)
    return outputs.logits.float()
