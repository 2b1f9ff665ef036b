"""What :class:`~ctd_hf.integrations.vllm.VLLMEngine` writes into a request and the logits processor reads: the tag in
``SamplingParams.extra_args`` and the sampling settings the processor applies itself.

A tagged request runs at vLLM temperature 0 with the caller's temperature, top-k, top-p and seed in its tag: the
processor draws the token from the contrasted scores and forces it, so vLLM's own sampler keeps it. Settings that
would act on one row of a pair alone, or report the forced rows' scores, are refused.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from .compat import SamplingParams

TAG = "ctd_hf"  # the key of a tagged request's settings in SamplingParams.extra_args
# The rows of a request: a pair's two (main: the prompt, z; contrast: the contrast's second view, z~), or one whose
# second view is another model (or adapter state) that the processor runs beside it as a stream.
MAIN, CONTRAST, STREAM = "main", "contrast", "stream"
ROLES = (MAIN, CONTRAST, STREAM)
# SamplingParams fields that would act on z or z~ alone, or report scores other than the contrasted ones; refused for
# contrasted requests, each with its default.
_REFUSED = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0, "min_p": 0.0,
            "min_tokens": 0, "logit_bias": None, "allowed_token_ids": None, "bad_words": [], "logprobs": None,
            "prompt_logprobs": None, "structured_outputs": None}


def tagged(params: SamplingParams, tag: dict[str, Any]) -> SamplingParams:
    """A tagged request's params: the caller's, at vLLM temperature 0 (the processor chooses the token), with ``tag``
    (pair, role, contrast...) and the caller's sampling settings in ``extra_args``."""
    seed = params.seed if params.seed is not None else random.randrange(2**63)
    tagged_params = params.clone()
    tagged_params.extra_args = {**(params.extra_args or {}), TAG: {
        **tag, "seed": seed, "temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p}}
    tagged_params.temperature, tagged_params.top_k, tagged_params.top_p, tagged_params.seed = 0.0, 0, 1.0, None
    return tagged_params


def sampling_params(generate_kwargs: dict[str, Any]) -> SamplingParams:
    """vLLM's ``SamplingParams`` for ``generate()``'s decoding options, refusing the ones vLLM cannot follow."""
    options = {key: value for key, value in generate_kwargs.items() if key != "pad_token_id"}
    max_tokens, do_sample = options.pop("max_new_tokens"), options.pop("do_sample", False)
    if options.pop("num_beams", 1) != 1:
        raise ValueError("Beam search is not supported on vLLM: use the hf engine for num_beams > 1.")
    sampling = {key: options.pop(key) for key in ("temperature", "top_k", "top_p") if key in options}
    if options:
        raise ValueError(f"The vLLM engine cannot follow generate() options {', '.join(sorted(options))} (scores "
                         "of choice-scored tasks, ...): use the hf engine.")
    if not do_sample:
        return SamplingParams(temperature=0.0, max_tokens=max_tokens)
    seed = int(torch.randint(2**62, ()))  # from torch's generator, which transformers.set_seed seeds
    return SamplingParams(max_tokens=max_tokens, seed=seed, **sampling)


def check_contrasted(params: SamplingParams) -> None:
    """Refuse what a contrasted request cannot run: ``n > 1`` and settings that would act on one row alone."""
    if params.n != 1:
        raise ValueError(f"n={params.n}: a contrastive request yields one answer; submit the prompt n times with "
                         "different seeds instead.")
    given = [name for name, default in _REFUSED.items() if getattr(params, name) not in (default, None)]
    if given:
        raise ValueError(f"SamplingParams {', '.join(given)} are not supported with a contrastive method on vLLM "
                         "(they would act on one row of a pair, or report the forced rows' scores); leave them unset.")
