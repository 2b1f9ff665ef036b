"""The logits processors that run a contrast inside vLLM: one pairing core, under each of vLLM's two interfaces.

Each contrasted prompt is tagged (``requests.TAG`` in ``SamplingParams.extra_args``) with a pair id, a role and its
contrast's portable settings (:meth:`~ctd_hf.Contrast.portable`):

- ``main`` and ``contrast``: a contrast whose two views are one model's forward (CTD, ID) runs as two requests, the
  prompt and the contrast's second view; their rows give ``z`` and ``z~``, combined as
  ``log_softmax(z - strength * z~)`` (:func:`~ctd_hf.formula.contrast_log_probs`);
- ``stream``: Contrastive Decoding runs as one request; its amateur, loaded once in the processor's process from the
  tag's folder, reads the request's tokens beside it as a :class:`~ctd_hf.decoding.stream.ContrastStream` with a KV
  cache of its own, combined by :meth:`~ctd_hf.ContrastiveDecodingContrast.combine`.

Each step one token per pair comes from the contrasted scores (argmax, or one draw after the caller's temperature,
top-k and top-p from a generator seeded by the request's seed and the step, so that a preempted and resumed pair, and
every tensor-parallel rank, draws the same) and is forced on the request's rows: both rows of a pair advance and stop
together. A row whose partner is not in the step raises ``RuntimeError``: no token is ever decided from one row
(:class:`~ctd_hf.integrations.vllm.scheduler.PairScheduler` keeps pairs together; this is the last check).

:class:`PairedContrastProcessor` is the legacy runner's interface (rows by batch index, ``BatchUpdate``);
:class:`PairedContrastProcessorV2` is Model Runner V2's (the GPU default): rows are mapped to request slots through
the step's ``LogitsContext`` every step, and rows of a prefill chunk decide nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from ...decoding.contrasts import ContrastiveDecodingContrast, check_scores
from ...decoding.stream import ContrastStream
from ...formula import contrast_log_probs
from .compat import BatchUpdate, LogitsContext, LogitsProcessor, LogitsProcessorV2, LogitsProcRequestState
from .compat import MoveDirectionality
from .requests import CONTRAST, MAIN, STREAM, check_tag, tag_of


class _Member:
    """A tagged request as the core sees it: its tag and its tokens so far (prompt, then outputs)."""

    def __init__(self, tag: dict[str, Any]) -> None:
        self.tag = tag
        self.stream: ContrastStream | None = None  # a stream row's second view
        self.read = 0  # tokens the stream has read
        self.last: torch.Tensor | None = None  # the stream's latest z~

    def prompt(self) -> list[int]:
        raise NotImplementedError

    def tokens(self) -> list[int]:
        raise NotImplementedError

    def outputs(self) -> int:
        """Tokens generated so far."""
        raise NotImplementedError


class PairingCore:
    """One decision per pair (or stream row) per step, forced on its rows; shared by both interfaces."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = device
        self.amateurs: dict[str, ContrastiveDecodingContrast] = {}  # CD's contrasts, by their settings

    def decide(self, logits: torch.Tensor, members: Iterable[tuple[int, _Member]]) -> torch.Tensor:
        pairs: dict[str, dict[str, tuple[int, _Member]]] = {}
        for row, member in members:
            pairs.setdefault(member.tag["pair"], {})[member.tag["role"]] = (row, member)
        for pair, roles in pairs.items():
            if set(roles) == {STREAM}:
                (row, first), = roles.values()
                contrast = self._amateur(first.tag["contrast"])
                second = self._stream_logits(first, contrast).to(logits.device)
                scores = contrast.contrasted_scores(logits[row][None].float(), second[None].float())[0]
                rows = [row]
            elif set(roles) == {MAIN, CONTRAST}:
                (row, first), (other, _) = roles[MAIN], roles[CONTRAST]
                strength = first.tag["contrast"]["strength"]
                second = logits[other].float()
                scores = check_scores(contrast_log_probs(logits[row].float(), second, strength), second,
                                      f"ctd_hf pair {pair}", strength)
                rows = [row, other]
            else:
                raise RuntimeError(
                    f"ctd_hf pair {pair}: the {'/'.join(roles)} row is in this step without its partner (a lone "
                    "tagged request, or a partner preempted, aborted or not yet admitted), so no contrasted token "
                    "exists for it. Run vLLM with ctd_hf's pair scheduler (ctd_hf.integrations.vllm.VLLMEngine and "
                    "`ctd-hf serve` do), which keeps pairs together."
                )
            token = _choose(first.tag, first.outputs(), scores)
            logits[rows] = float("-inf")
            logits[rows, token] = 0.0
        return logits

    def _amateur(self, settings: dict[str, Any]) -> ContrastiveDecodingContrast:
        key = repr(sorted(settings.items()))
        if key not in self.amateurs:
            self.amateurs[key] = ContrastiveDecodingContrast.from_portable(settings, self.device)
        return self.amateurs[key]

    @staticmethod
    def _stream_logits(member: _Member, contrast: ContrastiveDecodingContrast) -> torch.Tensor:
        """A stream row's ``z~``: its second view reads the request's tokens it has not read (the prompt at the first
        step, then the previous step's token)."""
        tokens = member.tokens()
        if any(token < 0 for token in tokens[member.read:]):  # vLLM's placeholder for a token still being sampled
            raise RuntimeError("ctd_hf: vLLM has not written the previous step's token yet (async scheduling on the "
                               "legacy runner); Contrastive Decoding needs it: run with async_scheduling=False.")
        device = contrast.contrast_model.device
        if member.stream is None:
            member.stream = ContrastStream(contrast.contrast_model, contrast.second_view_forward)
            prompt = torch.tensor([member.prompt()], device=device)
            member.last = member.stream.prefill(**contrast.second_view(prompt, torch.ones_like(prompt)))
            member.read = prompt.shape[1]
        elif len(tokens) == member.read:
            raise RuntimeError("ctd_hf: a stream row was asked for a token twice without the previous one.")
        for token in tokens[member.read:]:
            member.last = member.stream.step(torch.tensor([token], device=device))
        member.read = len(tokens)
        return member.last[0]


def _choose(tag: dict[str, Any], step: int, scores: torch.Tensor) -> int:
    """Argmax of the contrasted scores, or a draw from them after temperature, top-k and top-p (the order of
    ``generate()``'s warpers after the executors' contrast), seeded by the request's seed and ``step``."""
    if tag["temperature"] == 0:
        return int(scores.argmax())
    scores = scores[None]
    warpers = [TemperatureLogitsWarper(tag["temperature"])]
    if tag["top_k"] > 0:
        warpers.append(TopKLogitsWarper(tag["top_k"]))
    if tag["top_p"] < 1:
        warpers.append(TopPLogitsWarper(tag["top_p"]))
    for warper in warpers:
        scores = warper(None, scores)
    seed = int.from_bytes(hashlib.sha256(f"{tag['seed']}:{step}".encode()).digest()[:8], "little") >> 1
    generator = torch.Generator(device=scores.device).manual_seed(seed)
    return int(torch.multinomial(scores.softmax(dim=-1), 1, generator=generator))


# ------------------------------------------------------------------------------------------------ the legacy runner
class _BatchMember(_Member):
    def __init__(self, tag: dict[str, Any], prompt: list[int] | None, output: list[int]) -> None:
        super().__init__(tag)
        self._prompt, self.output = list(prompt or []), output  # vLLM's live list of the request's output ids

    def prompt(self) -> list[int]:
        return self._prompt

    def tokens(self) -> list[int]:
        return [*self._prompt, *self.output]

    def outputs(self) -> int:
        return len(self.output)


class PairedContrastProcessor(LogitsProcessor):
    """The pairing core under the legacy runner's interface (``vllm.v1.sample.logits_processor``): rows are batch
    indices, kept up to date from each step's ``BatchUpdate``."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.core = PairingCore(device)
        self.rows: dict[int, _BatchMember] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        check_tag(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False  # it replaces the argmax

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, prompt_ids, output_ids in batch_update.added:
            tag = tag_of(params)
            self.rows.pop(index, None)
            if tag is not None:
                self.rows[index] = _BatchMember(tag, prompt_ids, output_ids)
        for source, target, direction in batch_update.moved:
            moving = self.rows.pop(source, None)
            if direction == MoveDirectionality.SWAP and target in self.rows:
                self.rows[source] = self.rows.pop(target)
            else:
                self.rows.pop(target, None)  # a one-way move may replace a finished request there
            if moving is not None:
                self.rows[target] = moving

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return self.core.decide(logits, self.rows.items())


# --------------------------------------------------------------------------------------------- Model Runner V2
class _SlotMember(_Member):
    def __init__(self, tag: dict[str, Any], slot: int, states: LogitsProcRequestState) -> None:
        super().__init__(tag)
        self.slot, self.states, self.position = slot, states, 0  # position: of this step's row

    def prompt(self) -> list[int]:
        return self.states.all_token_ids.gpu[self.slot, : int(self.states.prompt_len.np[self.slot])].tolist()

    def tokens(self) -> list[int]:
        return self.states.all_token_ids.gpu[self.slot, : self.position + 1].tolist()

    def outputs(self) -> int:
        return self.position + 1 - int(self.states.prompt_len.np[self.slot])


class PairedContrastProcessorV2(LogitsProcessorV2):
    """The pairing core under Model Runner V2's interface (``vllm.v1.worker.gpu.sample.logits_processor``): requests
    are persistent slots (``add_request`` on every (re)admission), and each step's rows are mapped to slots through
    ``ctx.expanded_idx_mapping``, never by position. A row of a prefill chunk (its position before the slot's last
    prefill token) decides nothing; the pair scheduler never chunks a pair, so such a row has no partner deciding."""

    def __init__(self, vllm_config: Any, req_states: LogitsProcRequestState) -> None:
        self.states = req_states
        self.core = PairingCore(req_states.device)
        self.slots: dict[int, _SlotMember] = {}

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        check_tag(sampling_params)

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        tag = tag_of(sampling_params)
        self.slots.pop(req_idx, None)  # slots are recycled
        if tag is None:
            return False
        self.slots[req_idx] = _SlotMember(tag, req_idx, self.states)
        return True

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        slots, positions = ctx.expanded_idx_mapping.tolist(), ctx.pos.tolist()
        if not any(slot in self.slots for slot in slots):
            return logits
        prefilled = self.states.prefill_len.np
        members = []
        for row, (slot, position) in enumerate(zip(slots, positions)):
            member = self.slots.get(slot)
            if member is not None and position + 1 >= int(prefilled[slot]):
                member.position = position
                members.append((row, member))
        return self.core.decide(logits, members)
