"""The doubled batch: original and prefixed rows in ONE forward of 2B rows per step (the CTD paper's implementation).

:func:`generate` runs stock ``model.generate()`` while two forward hooks rewrite each forward: the pre-hook turns the
B rows ``generate()`` asks for into 2B rows (the originals shifted right by P pad slots, then the same rows with the
prefix before their first token, so both halves have one length and share one cache), the post-hook hands
``generate()`` the contrasted logits ``z - beta * z~`` of the B rows. Every decoding mode of ``generate()``
(greedy, sampling, beam search, stopping criteria, streamers) then works on the contrasted scores; under beam
search :class:`DoubledCache` moves both halves with the beams.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import DynamicCache, PreTrainedModel

from .contrast import check_strength, contrast_logits
from .prefix import check_left_padded, insert_prefix, positions_from_mask, resolve_prefix


class DoubledCache(DynamicCache):
    """A KV cache of 2B rows (originals, then prefixed) that ``generate()`` treats as B rows when reordering beams."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        rows = self.layers[0].keys.shape[0] // 2 if self.layers and self.layers[0].keys is not None else 0
        super().reorder_cache(torch.cat([beam_idx, beam_idx + rows]))


class _DoubledForward:
    """The pair of forward hooks that double ``generate()``'s batch and contrast the two halves."""

    def __init__(self, model: PreTrainedModel, prefix: torch.Tensor, beta: float) -> None:
        self.model, self.prefix, self.beta = model, prefix, beta
        self.rows = 0

    def before(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        input_ids = kwargs.pop("input_ids", args[0] if args else None)
        cache = kwargs.get("past_key_values")
        if input_ids is None or not isinstance(cache, DoubledCache):
            raise ValueError(
                "ctd_hf.generate() needs input_ids and its own DoubledCache: do not pass inputs_embeds, "
                "past_key_values or cache_implementation, and do not call the model while it runs."
            )
        mask = kwargs.get("attention_mask")
        num_virtual = self.prefix.shape[0]
        if mask is None:
            # generate() leaves out an all-ones mask (unpadded prompts); it covers the B rows' cache and new tokens,
            # and the doubled cache holds P more slots than those.
            past = cache.get_seq_length()
            mask = input_ids.new_ones(input_ids.shape[0], (past - num_virtual if past else 0) + input_ids.shape[1])
        check_left_padded(mask)
        self.rows = input_ids.shape[0]
        original_mask = F.pad(mask, (num_virtual, 0), value=0)
        embeds = self.model.get_input_embeddings()(input_ids)
        if cache.get_seq_length() == 0:  # the prompt pass
            prefixed_embeds, prefixed_mask = insert_prefix(embeds, mask, self.prefix)
            original_embeds = F.pad(embeds, (0, 0, num_virtual, 0))
        else:
            prefixed_embeds, prefixed_mask = embeds, F.pad(mask, (0, num_virtual), value=1)
            original_embeds = embeds
        doubled_embeds, doubled_mask = torch.cat([original_embeds, prefixed_embeds]), torch.cat([original_mask, prefixed_mask])
        positions = positions_from_mask(doubled_mask)[:, -doubled_embeds.shape[1] :]
        kwargs.update(inputs_embeds=doubled_embeds, attention_mask=doubled_mask, position_ids=positions)
        return (), kwargs

    def after(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], outputs: Any) -> Any:
        logits = outputs.logits
        outputs.logits = contrast_logits(logits[: self.rows], logits[self.rows :], self.beta)
        return outputs


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    prefix: str | Path | PeftModel | torch.Tensor,
    beta: float = 0.3,
    **generate_kwargs: Any,
) -> Any:
    """``model.generate(**generate_kwargs)`` with CTD scores ``z - beta * z~`` from one doubled batch per step.

    Same arguments and return value as ``model.generate()`` (``input_ids`` and a left-padded ``attention_mask``
    required). The contrast replaces the model's logits before every other processor. Under greedy decoding the
    tokens equal those of :class:`~ctd_hf.CTDProcessor`.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                      num_hidden_layers=1, num_attention_heads=2)).eval()
        >>> generate(model, torch.randn(4, 16), beta=0.3, input_ids=torch.tensor([[1, 5, 7]]),
        ...          max_new_tokens=3, do_sample=False, pad_token_id=0).shape
        torch.Size([1, 6])
    """
    check_strength(beta, "beta")
    for unsupported in ("past_key_values", "inputs_embeds", "assistant_model", "prompt_lookup_num_tokens"):
        if generate_kwargs.get(unsupported) is not None:
            raise ValueError(f"ctd_hf.generate() does not support `{unsupported}`; use CTDProcessor instead.")
    if generate_kwargs.get("use_cache") is False:
        raise ValueError("ctd_hf.generate() shares one KV cache between the two halves: use_cache=False is not supported.")
    hooks = _DoubledForward(model, resolve_prefix(model, prefix), beta)
    handles = [
        model.register_forward_pre_hook(hooks.before, with_kwargs=True),
        model.register_forward_hook(hooks.after, with_kwargs=True),
    ]
    try:
        return model.generate(past_key_values=DoubledCache(config=model.config), **generate_kwargs)
    finally:
        for handle in handles:
            handle.remove()
