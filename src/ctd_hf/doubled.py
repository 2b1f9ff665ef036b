"""The doubled batch: original and contrast rows in ONE forward of 2B rows per step (the CTD paper's implementation).

:func:`generate` runs stock ``model.generate()`` while two forward hooks rewrite each forward: the pre-hook turns the
B rows ``generate()`` asks for into 2B rows (the originals, then the contrast prompts a processor defines, both
left-padded to one length so they share one cache), the post-hook hands ``generate()`` the processor's combination
of the two halves. Every decoding mode of ``generate()`` (greedy, sampling, beam search, stopping criteria,
streamers) then works on the contrasted scores; under beam search :class:`DoubledCache` moves both halves together.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel

from .prefix import check_left_padded, positions_from_mask
from .stream import ContrastProcessor


class DoubledCache(DynamicCache):
    """A KV cache of 2B rows (originals, then contrast rows) that ``generate()`` reorders as B rows under beams."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        rows = self.layers[0].keys.shape[0] // 2 if self.layers and self.layers[0].keys is not None else 0
        super().reorder_cache(torch.cat([beam_idx, beam_idx + rows]))


class _DoubledForward:
    """The pair of forward hooks that double ``generate()``'s batch and combine the two halves."""

    def __init__(self, model: PreTrainedModel, processor: ContrastProcessor) -> None:
        self.model, self.processor = model, processor
        self.rows, self.original_pads = 0, 0
        self.contrast_mask: torch.Tensor | None = None

    def _embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if "inputs_embeds" in inputs:
            return inputs["inputs_embeds"]
        return self.model.get_input_embeddings()(inputs["input_ids"])

    def before(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        input_ids = kwargs.pop("input_ids", args[0] if args else None)
        cache = kwargs.get("past_key_values")
        if input_ids is None or not isinstance(cache, DoubledCache):
            raise ValueError(
                "ctd_hf.generate() needs input_ids and its own DoubledCache: do not pass inputs_embeds, "
                "past_key_values or cache_implementation, and do not call the model while it runs."
            )
        mask = kwargs.get("attention_mask")
        if mask is None:
            # generate() leaves out an all-ones mask (unpadded prompts, e.g. one prompt): rebuild it over the whole
            # sequence of the B rows, which is the doubled cache minus the pads put before the originals.
            past = cache.get_seq_length()
            mask = input_ids.new_ones(input_ids.shape[0], (past - self.original_pads if past else 0) + input_ids.shape[1])
        embeds = self.model.get_input_embeddings()(input_ids)
        if cache.get_seq_length() == 0:  # the prompt pass: both halves left-padded to one length
            check_left_padded(mask)
            self.rows = input_ids.shape[0]
            contrast = self.processor.contrast_inputs(input_ids, mask)
            contrast_embeds, contrast_mask = self._embed(contrast), contrast["attention_mask"]
            length = max(embeds.shape[1], contrast_embeds.shape[1])
            self.original_pads = length - embeds.shape[1]
            contrast_pads = length - contrast_embeds.shape[1]
            embeds = F.pad(embeds, (0, 0, self.original_pads, 0))
            contrast_embeds = F.pad(contrast_embeds, (0, 0, contrast_pads, 0))
            self.contrast_mask = F.pad(contrast_mask, (contrast_pads, 0), value=0)
        else:  # one new token per row; the contrast rows' masks only grow (beams reorder within a prompt's rows)
            contrast_embeds = embeds
            self.contrast_mask = F.pad(self.contrast_mask, (0, 1), value=1)
        doubled_mask = torch.cat([F.pad(mask, (self.original_pads, 0), value=0), self.contrast_mask])
        doubled_embeds = torch.cat([embeds, contrast_embeds.to(embeds.dtype)])
        positions = positions_from_mask(doubled_mask)[:, -doubled_embeds.shape[1] :]
        kwargs.update(inputs_embeds=doubled_embeds, attention_mask=doubled_mask, position_ids=positions)
        return (), kwargs

    def after(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], outputs: Any) -> Any:
        logits = outputs.logits.float()
        outputs.logits = self.processor.process(logits[: self.rows, -1], logits[self.rows :, -1]).unsqueeze(1)
        return outputs


@torch.no_grad()
def generate(model: PreTrainedModel, processor: ContrastProcessor, **generate_kwargs: Any) -> Any:
    """``model.generate(**generate_kwargs)`` with ``processor``'s contrast computed in one doubled batch per step.

    ``processor`` is a :class:`~ctd_hf.CTDProcessor` or :class:`~ctd_hf.InstructiveDecodingProcessor` built on
    ``model`` (Contrastive Decoding needs a second model, so it has only the stream path). Same arguments and return
    value as ``model.generate()``; ``input_ids`` with a left-padded ``attention_mask`` are required. The contrast
    replaces the model's logits before every other processor. Under greedy decoding the tokens equal those of
    ``model.generate(..., logits_processor=[processor])``.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from ctd_hf import CTDProcessor
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                      num_hidden_layers=1, num_attention_heads=2)).eval()
        >>> generate(model, CTDProcessor(model, torch.randn(4, 16), beta=0.3), input_ids=torch.tensor([[1, 5, 7]]),
        ...          max_new_tokens=3, do_sample=False, pad_token_id=0).shape
        torch.Size([1, 6])
    """
    if processor.model is not model or processor.stream.model is not model:
        raise ValueError(
            f"The doubled batch runs one model; {type(processor).__name__} contrasts {type(processor.stream.model).__name__} "
            "with another model or was built on another model: pass it to model.generate(logits_processor=[...])."
        )
    for unsupported in ("past_key_values", "inputs_embeds", "assistant_model", "prompt_lookup_num_tokens"):
        if generate_kwargs.get(unsupported) is not None:
            raise ValueError(f"ctd_hf.generate() does not support `{unsupported}`; pass the processor to model.generate().")
    if generate_kwargs.get("use_cache") is False:
        raise ValueError("ctd_hf.generate() shares one KV cache between the two halves: use_cache=False is not supported.")
    hooks = _DoubledForward(model, processor)
    handles = [
        model.register_forward_pre_hook(hooks.before, with_kwargs=True),
        model.register_forward_hook(hooks.after, with_kwargs=True),
    ]
    try:
        return model.generate(past_key_values=DoubledCache(config=model.config), **generate_kwargs)
    finally:
        for handle in handles:
            handle.remove()
