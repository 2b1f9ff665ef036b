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
# second view is another model (Contrastive Decoding's amateur) that the processor runs beside it as a stream.
MAIN, CONTRAST, STREAM = "main", "contrast", "stream"
ROLES = (MAIN, CONTRAST, STREAM)
_SAMPLING = ("seed", "temperature", "top_k", "top_p")
# SamplingParams fields that would act on z or z~ alone, or report scores other than the contrasted ones; refused for
# contrasted requests, each with its default.
_REFUSED = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0, "min_p": 0.0,
            "min_tokens": 0, "logit_bias": None, "allowed_token_ids": None, "bad_words": [], "logprobs": None,
            "prompt_logprobs": None, "structured_outputs": None}


def tag_of(params: Any) -> dict[str, Any] | None:
    """The ctd_hf tag of a request's ``SamplingParams`` (None for an untagged request)."""
    return (getattr(params, "extra_args", None) or {}).get(TAG)


def check_tag(params: Any) -> None:
    """Refuse a malformed tag (vLLM calls this when a request arrives, before it is scheduled)."""
    tag = tag_of(params)
    if tag is None:
        return
    contrast = tag.get("contrast") if isinstance(tag, dict) else None
    if (not isinstance(tag.get("pair"), str) or tag.get("role") not in ROLES or not isinstance(contrast, dict)
            or not all(key in tag for key in _SAMPLING)):
        raise ValueError(f"extra_args[{TAG!r}] needs a str `pair`, a `role` ({', '.join(ROLES)}), the `contrast` "
                         f"settings and {', '.join(_SAMPLING)}: submit contrasted requests through "
                         "ctd_hf.integrations.vllm (VLLMEngine, or `ctd-hf serve`).")
    needed = "amateur" if tag["role"] == STREAM else "strength"
    if needed not in contrast:
        raise ValueError(f"extra_args[{TAG!r}]: a {tag['role']} row's contrast settings need `{needed}`.")


def tagged(params: SamplingParams, tag: dict[str, Any], logprobs: int | None = None) -> SamplingParams:
    """A tagged request's params: the caller's, at vLLM temperature 0 (the processor chooses the token), with ``tag``
    (pair, role, contrast) and the caller's sampling settings in ``extra_args``; ``logprobs`` asks vLLM for the top
    log-probabilities of the model's own logits (the original predictions)."""
    seed = params.seed if params.seed is not None else random.randrange(2**63)
    request = params.clone()
    request.extra_args = {**(params.extra_args or {}), TAG: {
        **tag, "seed": seed, "temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p}}
    request.temperature, request.top_k, request.top_p, request.seed = 0.0, 0, 1.0, None
    request.logprobs = logprobs
    return request


def sampling_params(generate_kwargs: dict[str, Any], seeds: torch.Generator) -> SamplingParams:
    """vLLM's ``SamplingParams`` for ``generate()``'s decoding options, refusing the ones vLLM cannot follow; a
    sampled request's seed is drawn from ``seeds`` (the engine's, seeded by the job's seed)."""
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
    seed = int(torch.randint(2**62, (), generator=seeds))
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
