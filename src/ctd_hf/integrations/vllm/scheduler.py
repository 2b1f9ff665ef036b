"""The pair scheduler: vLLM's v1 scheduler with the two requests of a pair kept together wherever vLLM decides the
batch, loaded through vLLM's ``scheduler_cls`` setting (``ctd_hf.integrations.vllm.scheduler.pair_scheduler``).

vLLM's scheduler admits, chunks, preempts and finishes each request on its own; a pair's two rows (the prompt and
its contrast's second view) must be in every step together, or no contrasted token exists. Without touching the
stock ``schedule()``, each step this scheduler shapes what it sees:

- a pair's first request waits, out of the queue, until its partner arrives (with the engine core in another process
  the core may step between the two), then both enter the queue together;
- before a step, paired running requests go first (partners adjacent), and when the KV cache cannot hold their next
  step, whole pairs are preempted from the back; the stock scheduler's own victims are then never paired requests;
- the waiting queue the stock scheduler sees is its prefix in which every pair fits whole this step (both prompts, or
  both prompts and outputs after a preemption: a pair's prefill is never chunked, so its first token is decided from
  both rows at once); untagged requests keep chunked prefill;
- a request of a pair that finishes or is aborted finishes its partner, and the front-end is told.

A pair that could never be scheduled whole (its prompts and answers exceed one step's token budget or the whole KV
cache) ends at once with an error instead of waiting forever. The logits processor still checks every step.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .compat import (AsyncScheduler, FinishReason, Request, RequestStatus, Scheduler,
                     SchedulerInternals, SchedulingPolicy)
from .requests import CONTRAST, MAIN, tag_of

logger = logging.getLogger(__name__)
_ORDER = {MAIN: 0, CONTRAST: 1}
PARTNER_WAIT_S = 60.0  # how long a pair's first request waits for its partner before it ends with an error


class _PairScheduling(SchedulerInternals):
    """The pairing added to a v1 scheduler class (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.policy != SchedulingPolicy.FCFS:
            raise ValueError("ctd_hf's pair scheduler keeps pairs in first-come-first-served order: run vLLM with "
                             "scheduling_policy='fcfs' (its default).")
        if self.connector is not None or self.vllm_config.speculative_config is not None:
            raise NotImplementedError("ctd_hf's pair scheduler supports neither a KV connector nor speculative "
                                      "decoding (a pair's two rows must decode one token per step, together).")
        if self.scheduler_config.long_prefill_token_threshold:
            raise ValueError("ctd_hf's pair scheduler reads a pair's prompts in one step: leave "
                             "long_prefill_token_threshold at 0.")
        self.partner: dict[str, str] = {}  # request id -> its partner's, both ways, while both live
        self.pending: dict[tuple[int, str], Request] = {}  # (client, pair) -> the member that waits for its partner
        self.ended_here: list[tuple[int, str, Any]] = []  # partners finished here: (client, id, reason) to report

    @staticmethod
    def _pair(request: Request) -> tuple[int, str] | None:
        tag = tag_of(request.sampling_params)
        return None if tag is None or tag["role"] not in _ORDER else (request.client_index, tag["pair"])

    @staticmethod
    def _role(request: Request) -> int:
        return _ORDER[tag_of(request.sampling_params)["role"]]

    # ------------------------------------------------------------------------------------------------- admission
    def add_request(self, request: Request) -> None:
        key = self._pair(request)
        if key is None or request.request_id in self.requests:
            return super().add_request(request)
        first = self.pending.pop(key, None)
        if first is None:
            self.pending[key] = request
            return None
        main, contrast = sorted((first, request), key=self._role)
        if self._role(main) == self._role(contrast):
            return self._reject((main, contrast), f"pair {key[1]} has two {tag_of(main.sampling_params)['role']} rows")
        # Read whole (after a preemption: prompt and outputs), a pair must fit one step and the whole KV cache.
        worst = [min(r.num_prompt_tokens + r.sampling_params.max_tokens, self.max_model_len) for r in (main, contrast)]
        blocks = sum(map(self.kv_blocks_for, worst)) + self.watermark_blocks()
        if sum(worst) > self.step_budget() or blocks > self.cache_config.num_gpu_blocks:
            return self._reject((main, contrast), f"pair {key[1]} needs up to {sum(worst)} tokens in one step and "
                                f"{blocks} KV blocks; this engine has max_num_batched_tokens {self.step_budget()} and "
                                f"{self.cache_config.num_gpu_blocks} blocks: raise them or lower max_tokens")
        self.partner[main.request_id], self.partner[contrast.request_id] = contrast.request_id, main.request_id
        super().add_request(main)
        super().add_request(contrast)
        return None

    def _reject(self, pair: tuple[Request, Request], why: str) -> None:
        """End both requests with an error (raising here would stop the engine core, and every other request)."""
        logger.error("ctd_hf: %s.", why)
        for request in pair:
            super().add_request(request)
        for request in super().finish_requests([r.request_id for r in pair], RequestStatus.FINISHED_ERROR):
            self.ended_here.append((request.client_index, request.request_id, request.get_finished_reason()))

    def _end_lone_members(self) -> None:
        """End, with an error, a pair's first request whose partner has not come within :data:`PARTNER_WAIT_S`."""
        now = time.time()
        for key, request in list(self.pending.items()):
            if now - request.arrival_time > PARTNER_WAIT_S:
                del self.pending[key]
                logger.error("ctd_hf: the partner of request %s (pair %s) never came.", request.request_id, key[1])
                super().add_request(request)
                for ended in super().finish_requests([request.request_id], RequestStatus.FINISHED_ERROR):
                    self.ended_here.append((ended.client_index, ended.request_id, ended.get_finished_reason()))

    def get_num_unfinished_requests(self) -> int:
        return super().get_num_unfinished_requests() + len(self.pending)  # the engine steps while one waits

    # ------------------------------------------------------------------------------------------------- one step
    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        self._end_lone_members()
        preempted = self._pairs_first_in_running()
        hidden = self._waiting_that_fits(admit=not preempted)
        try:
            output = super().schedule(*args, **kwargs)
        finally:
            self.set_waiting([*self.waiting_requests(), *hidden])
        for request_id in output.num_scheduled_tokens:
            partner = self.partner.get(request_id)
            if partner is not None and partner not in output.num_scheduled_tokens:
                logger.error("ctd_hf: request %s was scheduled without its partner %s.", request_id, partner)
        return output

    def _pairs_first_in_running(self) -> bool:
        """Paired running requests first (main, contrast), then the others; while the KV cache cannot hold the
        pairs' next step, preempt the last pair whole. Returns whether it preempted."""
        by_id = {request.request_id: request for request in self.running}
        paired, others = [], []
        for request in self.running:
            partner = by_id.get(self.partner.get(request.request_id, ""))
            if partner is None:
                others.append(request)
            elif self._role(request) == 0:
                paired += [request, partner]
        self.running = paired + others
        preempted = False
        needed = lambda: sum(self.kv_blocks_needed(r, self.remaining_tokens(r)) for r in paired)  # noqa: E731
        while paired and needed() > self.free_kv_blocks():
            now = time.monotonic()
            for victim in (paired.pop(), paired.pop()):  # contrast, then main: main ends first in the queue
                self.preempt(victim, now)
            preempted = True
        return preempted

    def _waiting_that_fits(self, admit: bool) -> list[Request]:
        """Leave in the waiting queue only its prefix that the stock scheduler can admit without splitting a pair
        (each pair whole; counted without prefix-cache hits), partners adjacent; return the rest, which waits."""
        queue, ordered, placed = self.waiting_requests(), [], set()
        by_id = {request.request_id: request for request in queue}
        for request in queue:
            if request.request_id in placed:
                continue
            partner = by_id.get(self.partner.get(request.request_id, ""))
            unit = [request] if partner is None else sorted((request, partner), key=self._role)
            ordered.append(unit)
            placed.update(r.request_id for r in unit)
        tokens, blocks = self.step_budget(), self.free_kv_blocks()
        for request in self.running:
            step = min(self.remaining_tokens(request), tokens)
            tokens -= step
            blocks -= self.kv_blocks_needed(request, step)
        slots = self.max_num_active_reqs - len(self.running) - self.num_waiting_for_streaming_input
        exposed = 0
        for unit in ordered if admit else ():
            if not all(map(self.admissible, unit)):
                break  # the stock scheduler would skip it: no partner may overtake it
            if len(unit) == 1:  # untagged: the stock scheduler may chunk it into what is left
                if tokens <= 0 or slots < 1:
                    break
                step = min(unit[0].num_tokens, tokens)
                tokens, blocks, slots = tokens - step, blocks - self.kv_blocks_needed(unit[0], step), slots - 1
            else:
                step = sum(r.num_tokens for r in unit)
                needed = sum(self.kv_blocks_needed(r, r.num_tokens) for r in unit)
                if step > tokens or slots < 2 or needed + self.watermark_blocks() > blocks:
                    break
                tokens, blocks, slots = tokens - step, blocks - needed, slots - 2
            exposed += 1
        self.set_waiting([r for unit in ordered[:exposed] for r in unit])
        return [r for unit in ordered[exposed:] for r in unit]

    # ------------------------------------------------------------------------------------------------- finishing
    def finish_requests(self, request_ids: Any, finished_status: Any) -> Any:
        if request_ids is None:
            self.pending.clear()
            return super().finish_requests(None, finished_status)
        ids = {request_ids} if isinstance(request_ids, str) else set(request_ids)
        for key, waiting in list(self.pending.items()):  # a member aborted before its partner came
            if waiting.request_id in ids:
                del self.pending[key]
        partners = {self.partner[i] for i in ids if i in self.partner} - ids
        finished = super().finish_requests(ids | partners, finished_status)
        for request in finished:
            self.partner.pop(request.request_id, None)
            if request.request_id in partners:
                self.ended_here.append((request.client_index, request.request_id, request.get_finished_reason()))
        return finished

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        for batch in list(outputs.values()):
            for output in list(batch.outputs):
                partner = self.partner.pop(output.request_id, None) if output.finish_reason is not None else None
                if partner is None:
                    continue
                self.partner.pop(partner, None)
                request = self.requests.get(partner)
                if request is not None and not request.is_finished():
                    status = {FinishReason.LENGTH: RequestStatus.FINISHED_LENGTH_CAPPED,
                              FinishReason.STOP: RequestStatus.FINISHED_STOPPED}.get(output.finish_reason,
                                                                                     RequestStatus.FINISHED_ABORTED)
                    for ended in super().finish_requests([partner], status):
                        self.ended_here.append((ended.client_index, ended.request_id, ended.get_finished_reason()))
        for client, request_id, reason in self.ended_here:
            self.report_finished(outputs, client, request_id, reason)
        self.ended_here.clear()
        return outputs


class PairScheduler(_PairScheduling, Scheduler):
    """vLLM's scheduler with pairs kept together."""


class AsyncPairScheduler(_PairScheduling, AsyncScheduler):
    """vLLM's async scheduler (the next step scheduled while this one runs) with pairs kept together."""


def pair_scheduler(*args: Any, **kwargs: Any) -> Any:
    """The pair scheduler of the engine's kind (async scheduling or not): what ``scheduler_cls`` names."""
    config = kwargs["vllm_config"].scheduler_config
    return (AsyncPairScheduler if config.async_scheduling else PairScheduler)(*args, **kwargs)


SCHEDULER = f"{__name__}.pair_scheduler"  # the value of vLLM's scheduler_cls
