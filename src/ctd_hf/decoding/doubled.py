"""The doubled executor: both views in ONE forward of 2B rows per step (the CTD paper's implementation).

:func:`generate_doubled` runs stock ``model.generate()`` while two forward hooks, attached for that call only, rewrite
each forward: the pre-hook turns the B rows ``generate()`` asks for into 2B rows (the originals, then the second view
the contrast defines, both left-padded to one length so they share one cache); the post-hook hands ``generate()`` the
original half and keeps the second half for a logits processor that combines the two where the stream executor's
processor would (:func:`with_contrast`). Every decoding mode of ``generate()`` (greedy, sampling, beam search,
stopping criteria, streamers) then works on the contrasted scores; under beam search :class:`DoubledCache` moves both
halves together. :func:`check_doubled` refuses what the executor cannot run, for :func:`generate_doubled` and
:func:`ctd_hf.custom_generate` alike.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import (DynamicCache, EpsilonLogitsWarper, EtaLogitsWarper, GenerationConfig, LogitNormalization,
                          LogitsProcessor, LogitsProcessorList, MinPLogitsWarper, PreTrainedModel,
                          SynthIDTextWatermarkLogitsProcessor, TemperatureLogitsWarper, TopHLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper, TypicalLogitsWarper, WatermarkLogitsProcessor)

from .._compat import CACHE_ARGUMENT, CACHE_ARGUMENTS, find_cache
from .contrasts import Contrast, decoding_model
from .layout import check_left_padded, check_positions, max_positions, positions_from_mask
from .recording import OriginalPredictions
from .stream import ContrastProcessor

# generate()'s options the doubled executor refuses by name; cache_implementation before the cache generate() builds
# from it, so that both entry points name the option the caller gave.
_UNSUPPORTED = ("inputs_embeds", "cache_implementation", *CACHE_ARGUMENTS, "assistant_model",
                "prompt_lookup_num_tokens")
# What generate() appends after merging its processors with the caller's: the sampling warpers, watermarking and the
# final renormalisation. A contrast goes right before the first of them (see with_contrast).
_AFTER_CONTRAST = (TemperatureLogitsWarper, TopHLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper,
                   TypicalLogitsWarper, EpsilonLogitsWarper, EtaLogitsWarper, WatermarkLogitsProcessor,
                   SynthIDTextWatermarkLogitsProcessor, LogitNormalization)


class DoubledCache(DynamicCache):
    """A KV cache of 2B rows (originals, then contrast rows) that ``generate()`` reorders as B rows under beams."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(torch.cat([beam_idx, beam_idx + beam_idx.shape[0]]))  # one index per original row


class DoubledBatch(LogitsProcessor):
    """The forward hooks that double ``generate()``'s batch (attached with :meth:`attached`), and the logits processor
    that combines the halves; :func:`generate_doubled` and :func:`ctd_hf.custom_generate` put them around a loop."""

    supports_continuous_batching = False  # stateful: it follows the rows of one generate() call

    def __init__(self, contrast: Contrast, record: OriginalPredictions | None) -> None:
        self.contrast, self.record = contrast, record
        self.model = contrast.model
        self.rows, self.original_pads, self.longest = 0, 0, 0
        self.contrast_mask: torch.Tensor | None = None
        self.pending: torch.Tensor | None = None  # the second half's last-position logits, until combined

    @contextmanager
    def attached(self) -> Iterator[None]:
        handles = [self.model.register_forward_pre_hook(self.before, with_kwargs=True),
                   self.model.register_forward_hook(self.after, with_kwargs=True)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if "inputs_embeds" in inputs:
            return inputs["inputs_embeds"]
        return self.model.get_input_embeddings()(inputs["input_ids"])

    def before(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        input_ids = kwargs.pop("input_ids", args[0] if args else None)
        cache = find_cache(args, kwargs)
        if input_ids is None or not isinstance(cache, DoubledCache):
            raise ValueError(
                "The doubled executor needs input_ids and its own DoubledCache: do not pass inputs_embeds, a cache "
                "or cache_implementation, and do not call the model while it runs."
            )
        mask = kwargs.get("attention_mask")
        if mask is None:
            # generate() leaves out an all-ones mask (unpadded prompts, e.g. one prompt): rebuild it over the whole
            # sequence of the B rows, which is the doubled cache minus the pads put before the originals.
            past = cache.get_seq_length()
            length = (past - self.original_pads if past else 0) + input_ids.shape[1]
            mask = input_ids.new_ones(input_ids.shape[0], length)
        embeds = self.model.get_input_embeddings()(input_ids)
        if cache.get_seq_length() == 0:  # the prompt pass: both halves left-padded to one length
            check_left_padded(mask)
            self.rows = input_ids.shape[0]
            contrast = self.contrast.second_view(input_ids, mask)
            contrast_embeds, contrast_mask = self._embed(contrast), contrast["attention_mask"]
            length = max(embeds.shape[1], contrast_embeds.shape[1])
            self.original_pads = length - embeds.shape[1]
            contrast_pads = length - contrast_embeds.shape[1]
            embeds = F.pad(embeds, (0, 0, self.original_pads, 0))
            contrast_embeds = F.pad(contrast_embeds, (0, 0, contrast_pads, 0))
            self.contrast_mask = F.pad(contrast_mask, (contrast_pads, 0), value=0)
            self.longest = int(torch.cat([mask.sum(dim=1), contrast_mask.sum(dim=1)]).max())
        else:  # one new token per row; the contrast rows' masks only grow (beams reorder within a prompt's rows)
            if input_ids.shape[1] != 1:
                raise ValueError("The doubled executor follows generate() one token at a time; assisted/speculative "
                                 "decoding is not supported.")
            contrast_embeds = embeds
            self.contrast_mask = F.pad(self.contrast_mask, (0, 1), value=1)
            self.longest += 1
        doubled_mask = torch.cat([F.pad(mask, (self.original_pads, 0), value=0), self.contrast_mask])
        doubled_embeds = torch.cat([embeds, contrast_embeds.to(embeds.dtype)])
        check_positions(max_positions(self.model), self.longest, "The doubled batch")
        positions = positions_from_mask(doubled_mask)[:, -doubled_embeds.shape[1] :]
        kwargs.update(inputs_embeds=doubled_embeds, attention_mask=doubled_mask, position_ids=positions)
        return (), kwargs

    def after(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], outputs: Any) -> Any:
        self.pending = outputs.logits[self.rows :, -1].float()
        outputs.logits = outputs.logits[: self.rows]
        for name in ("hidden_states", "attentions"):  # output_hidden_states / output_attentions: the original rows
            if getattr(outputs, name, None) is not None:
                setattr(outputs, name, tuple(layer[: self.rows] for layer in getattr(outputs, name)))
        return outputs

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.pending is None:
            raise RuntimeError(
                f"The doubled executor's hooks on {type(self.model).__name__} saw no forward for this step: generate() "
                "ran another module (a wrapper such as a PeftModel?). Pass the model the contrast was built for."
            )
        second_logits, self.pending = self.pending.to(scores.device), None
        if self.record is not None:
            self.record.add(scores)
        return self.contrast.contrasted_scores(scores, second_logits)


def with_contrast(processors: LogitsProcessorList | list, contrast: LogitsProcessor) -> LogitsProcessorList:
    """``processors`` with ``contrast`` inserted before the first sampling warper (or at the end): after
    ``generate()``'s own processors and the caller's, where ``generate()`` puts a stream processor passed last in
    ``logits_processor=``.

    ``generate()`` merges the caller's list after its own processors and appends its warpers after both, so inserting
    into the caller's list (:func:`generate_doubled`) and into the merged list (:func:`ctd_hf.custom_generate`) give
    the same order.
    """
    index = next((i for i, p in enumerate(processors) if isinstance(p, _AFTER_CONTRAST)), len(processors))
    return LogitsProcessorList([*processors[:index], contrast, *processors[index:]])


def check_doubled(
    model: PreTrainedModel | PeftModel,
    contrast: Contrast,
    input_ids: torch.Tensor | None,
    options: Mapping[str, Any],
    generation_config: GenerationConfig,
    record: OriginalPredictions | None,
) -> PreTrainedModel:
    """Refuse what the doubled executor cannot run, with one message whichever entry point asked; return the model
    whose ``generate()`` it follows.

    ``options`` are the ``generate()`` options the caller passed (a cache only if the caller passed it), which take
    precedence over ``generation_config``.
    """

    def asked(name: str) -> Any:
        return options.get(name, getattr(generation_config, name, None))

    if contrast.shares_model:
        model = decoding_model(model)
    if contrast.model is not model or not contrast.shares_model:
        raise ValueError(
            f"The doubled executor runs both views as one forward of one model; this {type(contrast).__name__} needs "
            "two (another model, or one model in two adapter states) or was built on another model: use the stream "
            "executor, `with ContrastProcessor(contrast) as p: model.generate(..., logits_processor=[p])`, or "
            "custom_generate's backend='stream'."
        )
    for unsupported in _UNSUPPORTED:
        if asked(unsupported) is not None:
            raise ValueError(f"The doubled executor does not support `{unsupported}`: it runs decoder-only models from "
                             "input_ids with the default dynamic cache (its own), one token per step. Use the stream "
                             "executor (ctd_hf.ContrastProcessor, or custom_generate's backend='stream') for anything "
                             "else.")
    if input_ids is None or input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError("The doubled executor needs `input_ids` of shape (batch, prompt length >= 1), with their "
                         "left-padded `attention_mask`.")
    if asked("use_cache") is False:
        raise ValueError("The doubled executor shares one KV cache (its DoubledCache) between the two halves: "
                         "use_cache=False is not supported.")
    if record is not None and (asked("num_beams") or 1) > 1:
        raise ValueError("Recording the original predictions follows generate()'s rows, which beam search reorders: "
                         "record with greedy decoding or sampling.")
    return model


@torch.no_grad()
def generate_doubled(
    model: PreTrainedModel | PeftModel,
    contrast: Contrast | ContrastProcessor,
    record: OriginalPredictions | None = None,
    **generate_kwargs: Any,
) -> Any:
    """``model.generate(**generate_kwargs)`` with ``contrast`` computed in one doubled batch per step.

    ``contrast`` is a :class:`~ctd_hf.CTDContrast` or :class:`~ctd_hf.InstructiveContrast` built on ``model`` (or a
    stream processor holding one); Contrastive Decoding needs a second model, so it has only the stream executor.
    Same arguments and return value as ``model.generate()``; ``input_ids`` with a left-padded ``attention_mask`` are
    required. The contrast runs after ``generate()``'s processors and those in ``logits_processor``, before the
    sampling warpers (:func:`with_contrast`): where a stream processor passed last in ``logits_processor`` runs, so
    under greedy decoding the tokens equal those of the stream executor. ``output_logits`` returns the original
    model's logits, ``output_scores`` the processed (contrasted) scores, on both executors.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from ctd_hf import CTDContrast
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                      num_hidden_layers=1, num_attention_heads=2)).eval()
        >>> generate_doubled(model, CTDContrast(model, torch.randn(4, 16), strength=0.3),
        ...                  input_ids=torch.tensor([[1, 5, 7]]), max_new_tokens=3, min_new_tokens=3, do_sample=False,
        ...                  pad_token_id=0).shape
        torch.Size([1, 6])
    """
    if isinstance(contrast, ContrastProcessor):
        record = contrast.record if record is None else record
        contrast = contrast.contrast
    config = generate_kwargs.get("generation_config") or model.generation_config
    model = check_doubled(model, contrast, generate_kwargs.get("input_ids"), generate_kwargs, config, record)
    doubled = DoubledBatch(contrast, record)
    processors = with_contrast(generate_kwargs.pop("logits_processor", None) or [], doubled)
    with doubled.attached():
        return model.generate(logits_processor=processors, **{CACHE_ARGUMENT: DoubledCache(config=model.config)},
                              **generate_kwargs)
