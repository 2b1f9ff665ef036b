"""``VLLMEngine``: one ``vllm.LLM`` (one copy of the weights, vLLM's defaults: the engine core in its own process,
chunked prefill, the model runner vLLM picks) that decodes any portable :class:`~ctd_hf.Contrast`, an
:class:`~ctd_hf.decoding.engine.Engine` for evaluation, synthesis and ``ctd-hf generate``.

A contrast whose two views are one model's forward (CTD, ID) runs each prompt as a pair of requests, the prompt and
``contrast.second_view`` of it (token ids, or ``prompt_embeds`` for CTD's prefix rows and the prompt's embeddings);
Contrastive Decoding runs each prompt as one request whose amateur the logits processor runs beside it
(:mod:`~ctd_hf.integrations.vllm.processor`). The pair scheduler (:mod:`~ctd_hf.integrations.vllm.scheduler`,
vLLM's ``scheduler_cls``) keeps a pair's requests together through admission, preemption and finishing; the processor
refuses any step that holds one without the other. The original model's prediction at each step (token-change
analysis) is vLLM's own top log-probability of the main row, computed before any logits processor.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, BatchEncoding, PreTrainedModel

from ...decoding.contrasts import Contrast
from ...decoding.layout import check_positions, max_positions, pad_ids
from ...decoding.recording import OriginalPredictions
from .compat import (LLM, BeamSearchParams, EmbedsPrompt, RequestOutput, SamplingParams, TokensPrompt, engine_facts,
                     require_vllm, shutdown, uses_model_runner_v2)
from .processor import PairedContrastProcessor, PairedContrastProcessorV2
from .requests import CONTRAST, MAIN, STREAM, check_contrasted, sampling_params, tagged
from .scheduler import SCHEDULER

MAX_NUM_SEQS = 8  # requests per step when not given
CPU_MEMORY = 0.3  # gpu_memory_utilization on CPU, the share of host memory the KV cache reserves (measured)
_FIXED = ("logits_processors", "scheduler_cls", "enable_prompt_embeds")
_REFUSED = {"pipeline_parallel_size": 1, "data_parallel_size": 1, "enable_batch_sharded_sampling": False,
            "scheduling_policy": "fcfs"}


def engine_arguments(
    model: str | Path | PreTrainedModel,
    max_model_len: int | None = None,
    max_num_seqs: int | None = None,
    memory: float | None = None,
    **llm_kwargs: Any,
) -> dict[str, Any]:
    """vLLM engine arguments for ``model`` with ctd_hf's scheduler and processor and the engine's defaults (what
    :class:`VLLMEngine` and ``ctd-hf serve`` build their engines from)."""
    require_vllm()
    if isinstance(model, PreTrainedModel):
        folder = str(model.name_or_path)
        llm_kwargs.setdefault("dtype", str(model.dtype).removeprefix("torch."))
        max_model_len = max_model_len or max_positions(model)
    else:
        folder = str(model)
        max_model_len = max_model_len or AutoConfig.from_pretrained(folder).max_position_embeddings
    if clash := sorted(set(_FIXED) & set(llm_kwargs)):
        raise ValueError(f"ctd_hf's vLLM engine sets {', '.join(clash)} itself (its pair scheduler and logits "
                         "processor); leave it out.")
    refused = {key: llm_kwargs[key] for key, default in _REFUSED.items() if llm_kwargs.get(key, default) != default}
    if refused:
        raise NotImplementedError(
            f"{refused} is not supported: a pair's two requests must be scheduled by one scheduler (data parallel "
            "engines each have their own), in first-come-first-served order, and sampled on one rank together "
            "(batch-sharded sampling splits them); pipeline parallelism has not been measured. Tensor parallelism "
            "works; for data parallelism run one engine per group of devices.")
    on_cpu = not torch.cuda.is_available()
    if on_cpu:
        llm_kwargs.setdefault("enforce_eager", True)
    memory = memory or (CPU_MEMORY if on_cpu else None)
    if memory is not None:
        _check_memory(model, memory, on_cpu, llm_kwargs.get("tensor_parallel_size", 1))
        llm_kwargs.setdefault("gpu_memory_utilization", memory)
    # A pair's two prompts are read in one step: any two requests of max_model_len fit it.
    llm_kwargs.setdefault("max_num_batched_tokens", 2 * max_model_len)
    arguments = dict(model=folder, max_model_len=max_model_len, max_num_seqs=max_num_seqs or MAX_NUM_SEQS,
                     scheduler_cls=SCHEDULER, enable_prompt_embeds=True, **llm_kwargs)
    processor = PairedContrastProcessorV2 if uses_model_runner_v2(arguments) else PairedContrastProcessor
    return {**arguments, "logits_processors": [processor]}


def _check_memory(model: str | Path | PreTrainedModel, memory: float, on_cpu: bool, devices: int) -> None:
    """Refuse a memory share smaller than the weights it must hold (one device's share of them under tensor
    parallelism): vLLM would load them and then fail, asking to free memory that other processes use."""
    if isinstance(model, PreTrainedModel):
        weights = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    elif Path(model).is_dir():
        weights = sum(path.stat().st_size for pattern in ("*.safetensors", "*.bin")
                      for path in Path(model).glob(pattern))
    else:
        return  # a hub name: its size is not known here
    if on_cpu:
        import psutil  # a dependency of vLLM

        total = psutil.virtual_memory().total
    else:
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    if memory * total <= weights / devices:
        raise ValueError(
            f"memory={memory} (--vllm-memory) reserves {memory * total / 2**20:.0f} MiB of the "
            f"{total / 2**30:.1f} GiB of {'host' if on_cpu else 'GPU'} memory, less than the model's weights "
            f"({weights / devices / 2**20:.0f} MiB a device) alone, leaving nothing for the KV cache: raise it"
            + (f" (the default on CPU is {CPU_MEMORY})." if on_cpu else " (vLLM's default is 0.9)."))


class VLLMEngine:
    """One ``vllm.LLM`` that decodes prompts with a contrast (or plainly).

    Args:
        model: a Hugging Face model (its folder, dtype and position table are used) or the model folder or hub name
            (what ``vllm.LLM(model=...)`` takes).
        max_model_len: the longest request in positions (prompt, CTD's prefix and answer; default: the model's
            ``max_position_embeddings``).
        max_num_seqs: requests per step (default 8; a pair takes two).
        memory: vLLM's ``gpu_memory_utilization``, the share of GPU memory (on CPU: host memory) it reserves (default:
            vLLM's on a GPU, 0.3 on CPU).
        seed: seeds the engine and the seeds of the sampled requests :meth:`generate` makes (a job's seed: another
            seed, other samples; the same, the same).
        llm_kwargs: further ``vllm.LLM`` arguments (``dtype``, ``tensor_parallel_size``, ``enforce_eager``...; on CPU
            ``enforce_eager`` defaults to True; ``max_num_batched_tokens`` to ``2 * max_model_len``, so that any
            pair's two prompts fit one step). The scheduler and logits processor are set here.
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
        seed: int = 0,
        **llm_kwargs: Any,
    ) -> None:
        self.llm = LLM(**engine_arguments(model, max_model_len, max_num_seqs, memory, seed=seed, **llm_kwargs))
        self.max_model_len, self.dtype = engine_facts(self.llm)
        self._seeds = torch.Generator().manual_seed(seed)
        self._failed: Exception | None = None

    def max_positions(self, model: PreTrainedModel) -> int:
        return self.max_model_len

    def close(self) -> None:
        """Stop the engine's processes (also what leaving a ``with VLLMEngine(...) as engine:`` block does)."""
        shutdown(self.llm)

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        1); sampling seeds each request from the engine's ``seed``: reproducible, not equal to ``generate()``'s
        draws."""
        if backend != "auto":
            raise ValueError(f"backend={backend!r} picks one of transformers' executors; the vLLM engine runs its own: "
                             "leave backend at 'auto'.")
        pad_token_id = generate_kwargs.get("pad_token_id")
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        prompts = [row[keep.bool()].tolist() for row, keep in zip(ids, mask)]
        params = sampling_params(generate_kwargs, self._seeds)
        outputs = self._decode(prompts, contrast, params, record=record is not None)
        answers = [list(output.outputs[0].token_ids) for output in outputs]
        padded = torch.full((len(answers), max(map(len, answers))), pad_token_id, dtype=ids.dtype)
        for row, answer in enumerate(answers):
            padded[row, : len(answer)] = torch.tensor(answer, dtype=padded.dtype)
        if record is not None:
            record.add_rows([original_predictions(output) for output in outputs])
        return torch.cat([ids.cpu(), padded], dim=1)

    def decode(
        self, prompts: Sequence[Sequence[int]], contrast: Contrast | None, sampling_params: SamplingParams
    ) -> list[RequestOutput]:
        """Decode token-id ``prompts`` (unpadded) with ``contrast`` (``None``: plainly); the prompts' outputs, in
        order.

        ``contrast`` is built on the Hugging Face model with the engine's weights and dtype (a bound method's
        ``contrast()``, or a :class:`~ctd_hf.Contrast` built by hand, e.g. an ``InstructiveContrast`` on the
        prompts' noisy versions); it must be portable (:meth:`~ctd_hf.Contrast.portable`). ``sampling_params`` is
        vLLM's (``temperature=0`` for greedy; ``seed`` makes sampling reproducible: each request draws from its own
        generator). Log-probabilities are refused: vLLM would report those of the forced rows.
        """
        return self._decode(prompts, contrast, sampling_params)

    def _decode(
        self,
        prompts: Sequence[Sequence[int]],
        contrast: Contrast | None,
        sampling_params: SamplingParams,
        record: bool = False,
    ) -> list[RequestOutput]:
        """:meth:`decode`; with ``record``, each contrasted prompt's outputs carry vLLM's top log-probability of each
        step, which :func:`original_predictions` reads."""
        if isinstance(sampling_params, BeamSearchParams):
            raise ValueError("Beam search is not supported on vLLM (its beam search is a loop outside the engine that "
                             "cannot follow pairs): use ctd_hf.generate_doubled(..., num_beams=k) on transformers.")
        if not prompts:
            raise ValueError("No prompt to decode: pass at least one.")
        if contrast is None:
            return self._run([(TokensPrompt(prompt_token_ids=list(prompt)), sampling_params) for prompt in prompts])
        check_contrasted(sampling_params)
        requests = contrasted_requests(prompts, contrast, sampling_params, self.dtype, record)
        outputs = self._run(requests)
        return outputs[::2] if contrast.shares_model else outputs  # the main rows

    def _run(self, requests: list[tuple[Any, SamplingParams]]) -> list[RequestOutput]:
        """Run every request to its end. A step that failed (a lone row) leaves the engine's state unknown: it is
        stopped, and later calls are refused."""
        if self._failed is not None:
            raise RuntimeError(f"This engine failed a step ({self._failed}) and was stopped: start a new "
                               "VLLMEngine.")
        for prompt, params in requests:
            length = prompt["prompt_embeds"].shape[0] if "prompt_embeds" in prompt else len(prompt["prompt_token_ids"])
            check_positions(self.max_model_len, length + params.max_tokens, "A request",
                            fix="shorten the prompt (an Instructive Decoding noisy prompt counts too) or lower "
                                "max_tokens, or build the engine with a larger max_model_len",
                            holder="vllm engine")
        try:
            return self.llm.generate([prompt for prompt, _ in requests], [params for _, params in requests],
                                     use_tqdm=False)
        except Exception as error:
            self._failed = error
            self.close()
            raise


def contrasted_requests(
    prompts: Sequence[Sequence[int]],
    contrast: Contrast,
    params: SamplingParams,
    dtype: torch.dtype,
    record: bool = False,
) -> list[tuple[TokensPrompt | EmbedsPrompt, SamplingParams]]:
    """The requests of ``prompts`` under ``contrast``: a pair per prompt (main, then contrast) for a contrast of one
    model, else one stream request per prompt; tagged with a fresh pair id and the contrast's portable settings."""
    settings = contrast.portable()
    if settings is None:
        raise NotImplementedError(
            f"{type(contrast).__name__} cannot run on vLLM: its second view or its scores exist only as Python objects "
            "in this process (a LoRA adapter's second state, a custom combine), while vLLM runs the contrast in its "
            "engine core. Decode it with the hf engine.")
    seconds = second_views(prompts, contrast, dtype) if contrast.shares_model else [None] * len(prompts)
    requests = []
    for prompt, second in zip(prompts, seconds):
        pair = uuid.uuid4().hex
        rows = [(STREAM, TokensPrompt(prompt_token_ids=list(prompt)))] if second is None else [
            (MAIN, TokensPrompt(prompt_token_ids=list(prompt))), (CONTRAST, second)]
        for role, request in rows:
            tag = {"contrast": settings, "pair": pair, "role": role}
            requests.append((request, tagged(params, tag, logprobs=1 if record and role != CONTRAST else None)))
    return requests


def second_views(
    prompts: Sequence[Sequence[int]], contrast: Contrast, dtype: torch.dtype
) -> list[TokensPrompt | EmbedsPrompt]:
    """Each prompt's second view, unpadded: ``contrast.second_view`` of the left-padded batch (token ids, or
    embeddings the engine reads as ``prompt_embeds``)."""
    device = contrast.model.get_input_embeddings().weight.device
    view = contrast.second_view(*pad_ids(prompts, device, side="left"))
    keep = view["attention_mask"].bool()
    if "inputs_embeds" not in view:
        return [TokensPrompt(prompt_token_ids=row[mask].tolist()) for row, mask in zip(view["input_ids"], keep)]
    embeds = view["inputs_embeds"]
    if embeds.dtype != dtype:
        raise ValueError(f"The contrast's model is {embeds.dtype} and the engine {dtype}: load both in one dtype, so "
                         "the prompt embeddings equal those the engine computes for generated tokens.")
    return [EmbedsPrompt(prompt_embeds=row[mask].cpu()) for row, mask in zip(embeds, keep)]


def original_predictions(output: RequestOutput) -> list[tuple[int, float]]:
    """The original model's (argmax, probability) at each step of a request run with ``logprobs=1``: vLLM's top
    log-probability, computed from the model's logits before any logits processor."""
    steps = []
    for step in output.outputs[0].logprobs or []:
        token, top = next((token, logprob) for token, logprob in step.items() if logprob.rank == 1)
        steps.append((token, math.exp(top.logprob)))
    return steps
