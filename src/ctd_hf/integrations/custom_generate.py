"""``model.generate(custom_generate=ctd_hf.custom_generate, contrast=...)``: contrastive decoding through transformers'
own hook for replacing the decoding loop.

A callable ``custom_generate`` is not handed ``generate()``'s arguments: ``generate()`` (transformers 5) first does
all its preparation (generation config, input expansion for beams, cache, logits processors, stopping criteria) and
then calls it in place of its decoding loop, as ``custom_generate(model, input_ids, logits_processor=...,
stopping_criteria=..., generation_config=..., **model_kwargs)``, plus the callable's own keyword arguments taken out of
``generate()``'s ``**kwargs`` (here ``contrast`` and ``backend``). This function adds the contrast to that prepared
state and runs the loop ``generate()`` would have run (greedy/sampling or beam search), so it returns what
``generate()`` returns.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList, PreTrainedModel, StoppingCriteriaList
from transformers.generation import BaseStreamer

from .._compat import cache_keyword, calling_generate_streamer, decoding_loop
from ..decoding.contrasts import Contrast
from ..decoding.doubled import DoubledBatch, DoubledCache, check_doubled, with_contrast
from ..decoding.stream import ContrastProcessor

BACKENDS = ("doubled", "stream")


def custom_generate(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    contrast: Contrast | ContrastProcessor | None = None,
    backend: str = "doubled",
    token_streamer: BaseStreamer | None = None,
    **model_kwargs: Any,
) -> Any:
    """The decoding loop of ``generate()`` with ``contrast`` applied; pass it as ``custom_generate=``.

    ``contrast`` is any :class:`~ctd_hf.Contrast` built on the model (or a stream processor holding one, whose
    ``record`` it fills); ``backend="doubled"`` (default; CTD and ID) runs both views in one 2B-row forward per step,
    with :func:`~ctd_hf.generate_doubled`'s checks, ``"stream"`` gives the second view its own KV cache (required for
    Contrastive Decoding's amateur model). The contrast runs where both executors run it: after the processors
    ``generate()`` builds and yours in ``logits_processor``, before the sampling warpers. Under greedy decoding the
    tokens equal ``generate_doubled``'s and the stream executor's.

    ``generate(streamer=...)`` works as with any decoding loop: the streamer gets the prompt, each new token and the
    end (transformers does not hand a callable ``custom_generate`` its ``streamer`` argument; this function finds it
    in the ``generate()`` call that runs it). ``token_streamer=`` is the deprecated way to pass one.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from ctd_hf import CTDContrast, generate_doubled
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                      num_hidden_layers=1, num_attention_heads=2)).eval()
        >>> contrast = CTDContrast(model, torch.randn(4, 16), strength=0.3)
        >>> options = dict(input_ids=torch.tensor([[1, 5, 7]]), max_new_tokens=3, do_sample=False, pad_token_id=0)
        >>> bool((model.generate(custom_generate=custom_generate, contrast=contrast, **options)
        ...       == generate_doubled(model, contrast, **options)).all())
        True
    """
    record = None
    if isinstance(contrast, ContrastProcessor):
        contrast, record = contrast.contrast, contrast.record
    if not isinstance(contrast, Contrast):
        raise TypeError("custom_generate needs `contrast=`, a ctd_hf.Contrast (CTDContrast, InstructiveContrast, "
                        f"ContrastiveDecodingContrast) built on this model; got {type(contrast).__name__}.")
    if backend not in BACKENDS:
        raise ValueError(f"`backend` is one of {BACKENDS}, got {backend!r}.")
    # A prompt-tuning PeftModel's generate() runs its base model's generate() with its own input preparation, which
    # feeds the prefix as inputs_embeds. (inputs_embeds given to generate() are refused by either backend.)
    if getattr(model.prepare_inputs_for_generation, "__self__", model) is not model:
        raise ValueError("custom_generate decodes from input_ids on the model itself, but generate() runs through "
                         "another module's input preparation (a prompt-tuning PeftModel's generate() feeds its prefix "
                         "as inputs_embeds). Call generate() on the base model (peft_model.get_base_model()); "
                         "CTDContrast(peft_model) holds the prefix.")
    loop = decoding_loop(model, generation_config)
    if loop is None:
        raise ValueError(f"custom_generate runs greedy decoding, sampling and beam search; generate() asked for "
                         f"{generation_config.get_generation_mode().value}. Drop the options that select it "
                         "(penalty_alpha, num_beam_groups, constraints, dola_layers, assistant_model...).")
    streamer = calling_generate_streamer()  # generate() has put the prompt into it
    if token_streamer is not None:
        warnings.warn("custom_generate's `token_streamer` is deprecated: pass `streamer=` to generate(), which now "
                      "reaches custom_generate.", FutureWarning, stacklevel=2)
        if streamer is not None:
            raise ValueError("Pass one streamer: generate(streamer=...) (token_streamer is its deprecated name).")
        streamer = token_streamer
        streamer.put(input_ids.cpu())  # what generate() does with its own streamer before the loop
    if streamer is not None and generation_config.num_beams > 1:
        raise ValueError("A streamer receives one sequence per prompt; beam search keeps several: drop the streamer "
                         "or num_beams.")
    cache_name = cache_keyword(model_kwargs)
    if backend == "doubled":
        cache = model_kwargs.get(cache_name)
        fresh = type(cache) is DynamicCache and not cache.get_seq_length()  # the one generate() made, not the caller's
        asked = {"inputs_embeds": model_kwargs.get("inputs_embeds"), cache_name: None if fresh else cache}
        check_doubled(model, contrast, input_ids, asked, generation_config, record)
    arguments = dict(stopping_criteria=stopping_criteria, generation_config=generation_config, **model_kwargs)
    if streamer is not None:
        arguments["streamer"] = streamer
    if backend == "stream":
        with ContrastProcessor(contrast, record) as processor:
            return loop(input_ids, logits_processor=with_contrast(logits_processor, processor), **arguments)
    # generate_doubled() wraps a whole generate() call; here generate() has already prepared the loop, so the same
    # hooks and processor are put around the loop, and its fresh cache is swapped for a doubled one.
    doubled = DoubledBatch(contrast, record)
    arguments[cache_name] = DoubledCache(config=model.config)
    with doubled.attached():
        return loop(input_ids, logits_processor=with_contrast(logits_processor, doubled), **arguments)
