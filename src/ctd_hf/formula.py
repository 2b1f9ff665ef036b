"""The one formula of the project, ``s = z - strength * z~``, and the contrastive loss built on it.

Training (``CTDTrainer``) and decoding (the logits processors) both import from here, so the objective the prefix is
tuned for and the rule the decoder applies cannot drift apart.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .settings import renamed_arguments

IGNORE_INDEX = -100
# The contrast strength of CTD (alpha in training, beta in decoding) and of Instructive Decoding, as their papers set
# it.
DEFAULT_STRENGTH = 0.3
# Contrastive Decoding's (Li et al. 2022): the amateur's weight and the plausibility threshold.
DEFAULT_CD_STRENGTH = 1.0
DEFAULT_PLAUSIBILITY = 0.1


def contrast_logits(
    logits: torch.Tensor, second_logits: torch.Tensor, strength: float, inplace: bool = False
) -> torch.Tensor:
    """Contrasted scores ``s = z - strength * z~``.

    Args:
        logits: ``z``, logits of the original model, shape ``(..., vocab)``.
        second_logits: ``z~``, logits of the second view (the prefixed model, the noisy prompt or the amateur) on
            the same tokens, same shape.
        strength: ``alpha`` in training, ``beta`` in decoding.
        inplace: overwrite both inputs instead of allocating two new ``(..., vocab)`` tensors: ``second_logits`` becomes
            ``strength * z~`` and ``logits`` the result, bit for bit what the out-of-place form returns. Only for
            scratch tensors the caller owns and no longer needs (the training loss gathers its own copies); ignored
            when the two dtypes differ.

    Example:
        >>> import torch
        >>> contrast_logits(torch.tensor([2.0, 1.0]), torch.tensor([1.0, 3.0]), 0.5)
        tensor([ 1.5000, -0.5000])
    """
    if logits.shape != second_logits.shape:
        raise ValueError(f"Logits of shape {tuple(logits.shape)} cannot be contrasted with "
                         f"{tuple(second_logits.shape)}.")
    if inplace and logits.dtype == second_logits.dtype:
        return logits.sub_(second_logits.mul_(strength))
    return logits - strength * second_logits


def contrast_log_probs(logits: torch.Tensor, second_logits: torch.Tensor, strength: float) -> torch.Tensor:
    """``log_softmax(z - strength * z~)``: the contrasted distribution decoding draws from (normalised, so that beam
    search adds up log-probabilities of it; greedy decoding and sampling do not see the normalisation)."""
    return F.log_softmax(contrast_logits(logits, second_logits, strength), dim=-1)


def contrastive_loss(
    logits: torch.Tensor,
    second_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``softmax(z - alpha * z~)`` against next-token labels.

    ``logits`` and ``second_logits`` are ``(batch, seq, vocab)`` and aligned with ``labels`` ``(batch, seq)`` as a
    causal LM's outputs are: position ``t`` predicts ``labels[:, t + 1]``. Labels equal to -100 are ignored. The loss is
    the summed token loss divided by ``num_items_in_batch`` when given (the Trainer's count over the whole accumulated
    batch, so gradient accumulation matches the large batch), else by the number of label tokens here. Only label
    positions are contrasted, which keeps the extra memory to the response tokens.
    """
    keep = label_positions(labels)
    return contrastive_token_loss(logits[:, :-1][keep], second_logits[:, :-1][keep], labels[:, 1:][keep], alpha,
                                  num_items_in_batch)


def label_positions(labels: torch.Tensor) -> torch.Tensor:
    """``(batch, seq - 1)`` mask of the positions ``t`` whose next token ``labels[:, t + 1]`` is a label (not -100)."""
    return labels[:, 1:] != IGNORE_INDEX


def contrastive_token_loss(
    logits: torch.Tensor,
    second_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """:func:`contrastive_loss` on rows already gathered at the label positions.

    ``logits`` and ``second_logits`` are ``z`` and ``z~`` as ``(tokens, vocab)`` (``x[:, :-1][keep]`` with
    ``keep = label_positions(labels)``), ``targets`` the ``(tokens,)`` labels ``labels[:, 1:][keep]``.

    It works in place: ``logits`` and ``second_logits`` are overwritten (pass the copies that boolean indexing returns),
    so the loss allocates no ``(tokens, vocab)`` buffer beyond the log-softmax that cross-entropy keeps for backward.
    """
    return token_loss(contrast_logits(logits, second_logits, alpha, inplace=True), targets, num_items_in_batch)


def token_loss(
    scores: torch.Tensor, targets: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """Summed token cross-entropy of ``scores`` ``(tokens, vocab)`` against ``targets`` ``(tokens,)``, divided by
    ``num_items_in_batch`` when given (the Trainer's count over the whole accumulated batch), else by the count here."""
    loss = F.cross_entropy(scores.float(), targets, reduction="sum")
    denominator = targets.numel() if num_items_in_batch is None else num_items_in_batch
    if torch.is_tensor(denominator):
        return loss / denominator.to(loss.device).clamp(min=1)
    return loss / max(denominator, 1)


def plausibility_mask(log_probs: torch.Tensor, plausibility: float) -> torch.Tensor:
    """Contrastive Decoding's plausible set ``{v : p(v) >= plausibility * max p}``, from log-probabilities (the
    paper's ``alpha``)."""
    return log_probs >= log_probs.max(dim=-1, keepdim=True).values + math.log(plausibility)


@renamed_arguments(alpha="plausibility", beta="strength")
def contrastive_decoding_scores(
    expert_log_probs: torch.Tensor, amateur_log_probs: torch.Tensor, plausibility: float, strength: float
) -> torch.Tensor:
    """Contrastive Decoding (Li et al. 2022): ``log p_e - strength * log p_a`` on the plausible set, ``-inf``
    elsewhere (the paper's ``beta`` and ``alpha`` are ``strength`` and ``plausibility``).

    The same formula as :func:`contrast_logits`, with the two models' log-probabilities as ``z`` and ``z~``.
    """
    scores = contrast_logits(expert_log_probs, amateur_log_probs, strength)
    return scores.masked_fill(~plausibility_mask(expert_log_probs, plausibility), float("-inf"))
