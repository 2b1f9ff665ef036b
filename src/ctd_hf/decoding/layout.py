"""Where tokens sit in a left-padded batch: checks, position ids, the soft prefix's place and left padding."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase


def check_left_padded(attention_mask: torch.Tensor) -> None:
    """Refuse masks that are not of 0s and 1s, not left-padded (zeros, then ones), or rows without any token."""
    if attention_mask.ndim != 2:
        raise ValueError(
            f"Contrastive decoding needs the 2D attention mask, got {attention_mask.ndim}D. It supports decoder-only "
            "models with the default dynamic cache (a static or compiled cache turns the mask 4D)."
        )
    if attention_mask.is_floating_point() or attention_mask.is_complex() or \
            ((attention_mask != 0) & (attention_mask != 1)).any():
        raise ValueError(f"The attention mask must hold integer or bool 0s and 1s (the tokenizer's), got dtype "
                         f"{attention_mask.dtype}: pass the tokenizer's mask, or mask.long() of a 0/1 mask.")
    if (attention_mask.sum(dim=1) == 0).any():
        raise ValueError("A prompt in the batch is empty (its attention mask has no ones); remove it.")
    ones = attention_mask.long()
    rises = (ones[:, 1:] > ones[:, :-1]).sum(dim=1) + ones[:, 0]  # runs of ones in each row
    if (rises > 1).any():
        row = int((rises > 1).nonzero()[0])
        raise ValueError(f"Row {row} of the attention mask has a hole (a 0 between 1s): each row is one prompt, "
                         "padded on the left only. Remove the hole (pad each prompt as the tokenizer does).")
    if (ones[:, 1:] < ones[:, :-1]).any():
        raise ValueError(
            "The batch is right-padded, but generation continues each row at its end: pad on the left "
            "(tokenizer(..., padding_side='left')) so that every row ends with its last prompt token."
        )


def max_positions(model: PreTrainedModel) -> int | None:
    """The length of ``model``'s position table (``max_position_embeddings``), if it declares one."""
    return getattr(model.config, "max_position_embeddings", None)


def check_positions(
    limit: int | None,
    needed: int,
    what: str,
    fix: str = "shorten the prompt or lower max_new_tokens",
    holder: str = "model",
) -> None:
    """Refuse ``what`` when it needs more than ``limit`` positions (a model's position table, or an engine's
    ``max_model_len``), where positions would wrap or extrapolate without a word: the one position-limit check,
    before decoding and at every step."""
    if limit and needed > limit:
        raise ValueError(f"{what} needs {needed} positions (prompt, any soft prefix and the new tokens), more than the "
                         f"{holder}'s {limit}: {fix}.")


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows, counted over real tokens only, as ``generate()`` computes them."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def insert_prefix(
    inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, prefix: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put the prefix right before each left-padded row's first real token: ``[pads][prefix][tokens]``.

    With :func:`positions_from_mask` the prefix takes positions ``0..P-1`` and the tokens ``P..``, exactly as in a
    forward over ``[prefix][tokens]`` without padding, which is what the trainer computes on right-padded rows.
    """
    check_left_padded(attention_mask)
    batch, length, hidden = inputs_embeds.shape
    num_virtual = prefix.shape[0]
    pads = (length - attention_mask.sum(dim=1)).unsqueeze(1)
    index = torch.arange(num_virtual + length, device=inputs_embeds.device).unsqueeze(0)
    source = torch.where(index < pads, index, index - num_virtual).clamp(0, length - 1)
    embeds = inputs_embeds.gather(1, source.unsqueeze(-1).expand(batch, -1, hidden))
    in_prefix = (index >= pads) & (index < pads + num_virtual)
    prefix_rows = prefix[(index - pads).clamp(0, num_virtual - 1)]
    embeds = torch.where(in_prefix.unsqueeze(-1), prefix_rows.to(embeds.dtype), embeds)
    # A left-padded mask is zeros then ones: P more ones keep that shape and line up with the layout above.
    mask = torch.cat([attention_mask, attention_mask.new_ones(batch, num_virtual)], dim=1)
    return embeds, mask


def pad_left(tokenizer: PreTrainedTokenizerBase, encoded: list[list[int]]) -> BatchEncoding:
    """Left-pad token id lists into ``input_ids``/``attention_mask`` tensors (the tokenizer is not changed)."""
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"The tokenizer {tokenizer.name_or_path!r} has no pad token, so prompts of different lengths cannot be "
            "batched. Fix: tokenizer.pad_token = tokenizer.eos_token (ctd_hf.load_model_and_tokenizer does this)."
        )
    return tokenizer.pad({"input_ids": encoded}, padding_side="left", return_tensors="pt")


def pad_ids(
    rows: Sequence[Sequence[int]], device: torch.device | str | None = None, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as a ``(rows, longest)`` tensor and its mask, padded on ``side`` with id 0 (masked: never read
    as a token)."""
    width = max(len(row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for index, row in enumerate(rows):
        if row:
            place = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[index, place] = torch.as_tensor(list(row), device=device)
            mask[index, place] = 1
    return ids, mask
