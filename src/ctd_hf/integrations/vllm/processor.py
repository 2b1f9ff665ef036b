"""The logits processor that runs a :class:`~ctd_hf.Contrast` inside vLLM (the v1 batch-level interface).

Each contrasted prompt is tagged (``requests.TAG`` in ``SamplingParams.extra_args``) with the key of its contrast in
:data:`CONTRASTS`, a pair id and a role:

- ``main`` and ``contrast``: a contrast whose two views are one model's forward (CTD, ID) runs as two requests, the
  prompt and the contrast's second view (``Contrast.second_view``); their rows give ``z`` and ``z~``;
- ``stream``: a contrast whose second view is another model or adapter state (CD's amateur, the LoRA variant) runs
  as one request; that view reads the request's tokens beside it as a :class:`~ctd_hf.decoding.stream.ContrastStream`
  with a KV cache of its own, in this process.

Each step the scores are ``contrast.contrasted_scores(z, z~)`` (the executors' formula and guard); the processor
takes one token from them (argmax, or one draw with the pair's seeded generator after the caller's temperature,
top-k and top-p) and forces it on the request's rows, so both rows of a pair advance and stop together. A tagged row
whose partner is not in the step raises: no token is ever decided from one row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from ...decoding.contrasts import Contrast
from ...decoding.recording import original_prediction
from ...decoding.stream import ContrastStream
from .compat import BatchUpdate, LogitsProcessor, MoveDirectionality
from .requests import CONTRAST, MAIN, ROLES, STREAM, TAG

# The contrasts of the requests in flight, by the key their tags name. SamplingParams are copied (deep) on their way to
# the engine core, so a model cannot travel in them; the engine core runs in this process.
CONTRASTS: dict[int, Contrast] = {}
BUILT_HERE: list[PairedContrastProcessor] = []  # the processors vLLM built in this process, newest last


@dataclass
class _Row:
    tag: dict[str, Any]
    prompt: list[int]
    output: list[int]  # vLLM's live list of the request's output ids
    stream: ContrastStream | None = None  # a stream row's second view
    read: int = 0  # how many of the request's tokens the stream has read
    last: torch.Tensor | None = None  # the stream's latest z~
    original: list[tuple[int, float]] = field(default_factory=list)  # per step: argmax and max probability of z

    @property
    def pair(self) -> int:
        return self.tag["pair"]

    def second_logits(self, contrast: Contrast) -> torch.Tensor:
        """A stream row's ``z~``: its second view reads the request's tokens it has not read (the prompt at the first
        step, then the previous step's token)."""
        tokens = [*self.prompt, *self.output]
        if any(token < 0 for token in tokens[self.read:]):  # vLLM's placeholder for a token still being sampled
            raise RuntimeError("ctd_hf: vLLM has not written the previous step's token yet (async scheduling); a "
                               "contrast with a second model needs it: run the engine with async_scheduling=False.")
        if self.stream is None:
            self.stream = ContrastStream(contrast.contrast_model, contrast.second_view_forward)
            prompt = torch.tensor([self.prompt], device=contrast.model.device)
            self.last = self.stream.prefill(**contrast.second_view(prompt, torch.ones_like(prompt)))
        elif len(tokens) == self.read:
            raise RuntimeError("ctd_hf: a stream row was asked for a token twice without the previous one.")
        for token in tokens[max(self.read, len(self.prompt)):]:
            self.last = self.stream.step(torch.tensor([token], device=contrast.contrast_model.device))
        self.read = len(tokens)
        return self.last[0]


class PairedContrastProcessor(LogitsProcessor):
    """vLLM v1 logits processor: one token per tagged request from its contrast's scores, forced on its rows.

    Untagged requests pass untouched. ``extra_args["ctd_hf"]`` holds ``contrast`` (a key of :data:`CONTRASTS`),
    ``pair``, ``role``, ``record`` (keep the original model's per-step prediction) and the caller's ``temperature``,
    ``top_k``, ``top_p`` and ``seed`` (what :class:`~ctd_hf.integrations.vllm.VLLMEngine` writes).
    """

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.rows: dict[int, _Row] = {}
        self.generators: dict[int, torch.Generator] = {}
        self.finished: dict[int, list[tuple[int, float]]] = {}  # recorded predictions of rows that left the batch
        BUILT_HERE.append(self)

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        tag = (sampling_params.extra_args or {}).get(TAG)
        if tag is None:
            return
        if tag.get("role") not in ROLES or not isinstance(tag.get("pair"), int):
            raise ValueError(f"extra_args[{TAG!r}] needs an int `pair` and a `role` of {', '.join(ROLES)}.")
        if tag.get("contrast") not in CONTRASTS:
            raise ValueError(f"extra_args[{TAG!r}] names no contrast of this process: submit contrasted requests "
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
                self.rows[index] = _Row(tag, list(prompt_ids or []), output_ids)
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
        if row is not None and row.tag["role"] != CONTRAST and row.tag.get("record"):
            self.finished[row.pair] = row.original

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        pairs: dict[int, dict[str, int]] = {}
        for index, row in self.rows.items():
            pairs.setdefault(row.pair, {})[row.tag["role"]] = index
        for pair, members in pairs.items():
            if set(members) == {STREAM}:
                rows = [members[STREAM]]
                first = self.rows[rows[0]]
                contrast = CONTRASTS[first.tag["contrast"]]
                second = first.second_logits(contrast).to(logits.device)
            elif set(members) == {MAIN, CONTRAST}:
                rows = [members[MAIN], members[CONTRAST]]
                first = self.rows[rows[0]]
                contrast = CONTRASTS[first.tag["contrast"]]
                second = logits[rows[1]]
            else:
                raise RuntimeError(
                    f"ctd_hf pair {pair}: the {'/'.join(members)} row is in this step without its partner (a lone "
                    "tagged request, or a partner preempted, aborted or not yet admitted), so no contrasted token "
                    "exists for it. Submit pairs through ctd_hf.integrations.vllm.VLLMEngine, which keeps them "
                    "together."
                )
            scores = contrast.contrasted_scores(logits[rows[0]][None].float(), second[None].float())
            if first.tag.get("record"):
                argmax, max_prob = original_prediction(logits[rows[0]])
                first.original.append((int(argmax), float(max_prob)))
            token = self._choose(pair, first.tag, scores)
            logits[rows] = float("-inf")
            logits[rows, token] = 0.0
        return logits

    def recorded(self, pair: int) -> list[tuple[int, float]]:
        """The original model's (argmax, max probability) at each step of ``pair``'s main or stream row (recorded
        when its tag asked), once: a finished row leaves the batch at the next step, possibly of a later call."""
        live = next((row for row in self.rows.values() if row.pair == pair and row.tag["role"] != CONTRAST), None)
        if live is None:
            return self.finished.pop(pair, [])
        live.tag = {**live.tag, "record": False}  # read: not kept again when it leaves
        return live.original

    def _choose(self, pair: int, settings: dict[str, Any], scores: torch.Tensor) -> int:
        """Argmax of the contrasted scores, or a draw from them after temperature, top-k and top-p (the order of
        ``generate()``'s warpers after the executors' contrast)."""
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
