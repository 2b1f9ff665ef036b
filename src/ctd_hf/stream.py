"""The contrast stream: a second view of the sequence that ``generate()`` is writing, with its own KV cache.

A ``LogitsProcessor`` sees only ``input_ids`` and ``scores``. :class:`ContrastProcessor` therefore watches the
model's forward calls (a forward pre-hook that only records) to learn the prompt's attention mask, which cannot be
inferred from pad ids when the pad token also occurs inside prompts. At the first call of a ``generate()`` it
encodes the contrast prompt once; after that it feeds one new token per step, and under beam search it reorders its
cache to follow the beams ``generate()`` kept. It never re-encodes a sequence it has already seen.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessor, PreTrainedModel

from .contrast import contrast_logits
from .prefix import check_left_padded, positions_from_mask

# Set while any contrast stream runs a forward, so that no processor mistakes it for generate()'s own prompt pass.
_STREAM_FORWARD = threading.local()


class ContrastStream:
    """Logits of ``model`` on a contrast prompt followed by the tokens generation picks, one step at a time."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.cache: DynamicCache | None = None
        self.attention_mask: torch.Tensor | None = None

    @torch.no_grad()
    def prefill(self, attention_mask: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """Encode left-padded contrast prompts (``input_ids`` or ``inputs_embeds``); return last-position logits."""
        self.cache = DynamicCache(config=self.model.config)
        self.attention_mask = attention_mask
        return self._forward(position_ids=positions_from_mask(attention_mask), **inputs)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
        """Append one token per row (after moving rows to ``order``, under beam search); return its logits."""
        if order is not None:
            self.cache.reorder_cache(order)
            self.attention_mask = self.attention_mask[order]
        self.attention_mask = F.pad(self.attention_mask, (0, 1), value=1)
        positions = self.attention_mask.sum(dim=1, keepdim=True) - 1
        return self._forward(input_ids=tokens.unsqueeze(1), position_ids=positions)

    def _forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        inputs = {name: tensor.to(self.model.device) for name, tensor in inputs.items()}
        self.attention_mask = self.attention_mask.to(self.model.device)
        _STREAM_FORWARD.active = True
        try:
            outputs = self.model(
                attention_mask=self.attention_mask, past_key_values=self.cache, use_cache=True, logits_to_keep=1,
                **inputs,
            )
        finally:
            _STREAM_FORWARD.active = False
        self.cache = outputs.past_key_values
        return outputs.logits[:, -1].float()


class ContrastProcessor(LogitsProcessor):
    """Base of the contrast processors: keeps a :class:`ContrastStream` in step with ``generate()``.

    Subclasses say what the contrast prompt is (:meth:`contrast_inputs`) and, where it is not
    ``log_softmax(z - strength * z~)``, how the two views combine (:meth:`combine`). The processor must be built on
    the model whose ``generate()`` it is passed to.
    """

    def __init__(
        self, model: PreTrainedModel, strength: float, contrast_model: PreTrainedModel | None = None
    ) -> None:
        self.model = model
        self.strength = strength
        self.stream = ContrastStream(contrast_model if contrast_model is not None else model)
        # Set to a list to record, per step, the original model's argmax and max probability (token-change analysis).
        self.original: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._sequences: torch.Tensor | None = None
        self._prompt_mask: torch.Tensor | None = None
        self._several_tokens = False
        # The hook holds the processor weakly, so a dropped processor is collected and its hook removed.
        record = weakref.WeakMethod(self._record_prompt)
        self._hook = model.register_forward_pre_hook(
            lambda module, args, kwargs: record() and record()(args, kwargs), with_kwargs=True
        )

    def contrast_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Left-padded contrast prompt for ``input_ids``: ``attention_mask`` and ``input_ids`` or ``inputs_embeds``."""
        raise NotImplementedError

    def combine(self, scores: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
        """The processed scores, ``log_softmax(z - strength * z~)``: normalised so that beam search adds up
        log-probabilities of the contrasted distribution; greedy and sampling do not see the normalisation."""
        return F.log_softmax(contrast_logits(scores, contrast, self.strength), dim=-1)

    def _record_prompt(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """Forward pre-hook: remember the attention mask of generate()'s prompt pass (the one with an empty cache),
        and notice passes that verify several tokens at once (assisted/speculative decoding), which it cannot follow.
        """
        if getattr(_STREAM_FORWARD, "active", False):
            return
        cache = kwargs.get("past_key_values")
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if cache is not None and cache.get_seq_length() > 0:
            self._several_tokens = self._several_tokens or (input_ids is not None and input_ids.shape[1] > 1)
            return
        self._several_tokens = False
        mask = kwargs.get("attention_mask")
        if input_ids is None:
            self._prompt_mask = kwargs.get("inputs_embeds")  # refused in _advance with a clear message
        else:
            self._prompt_mask = torch.ones_like(input_ids) if mask is None else mask

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.process(scores, self._advance(input_ids).to(scores.device))

    def process(self, scores: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
        """:meth:`combine`, recording the original prediction first when ``original`` is a list."""
        if self.original is not None:
            max_prob, argmax = scores.float().softmax(dim=-1).max(dim=-1)
            self.original.append((argmax.cpu(), max_prob.cpu()))
        return self.combine(scores, contrast)

    def _advance(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self._prompt_mask is not None:  # a new generate() call has just encoded its prompt
            mask, self._prompt_mask = self._prompt_mask, None
            if mask.is_floating_point():
                raise ValueError(f"{type(self).__name__} needs `input_ids`; generating from `inputs_embeds` is not supported.")
            if mask.shape != input_ids.shape:
                raise self._unsupported()
            check_left_padded(mask)
            self._sequences = input_ids
            return self.stream.prefill(**self.contrast_inputs(input_ids, mask))
        if self._several_tokens or self._sequences is None or input_ids.shape[1] != self._sequences.shape[1] + 1:
            raise self._unsupported()
        order = self._beam_order(input_ids[:, :-1])
        self._sequences = input_ids
        return self.stream.step(input_ids[:, -1], order)

    def _unsupported(self) -> ValueError:
        return ValueError(
            f"{type(self).__name__} follows generate() one token at a time (greedy, sampling, beam search) on the "
            "model it was built with; assisted/speculative decoding and calls outside generate() are not supported."
        )

    def _beam_order(self, previous: torch.Tensor) -> torch.Tensor | None:
        """Which stream row each row of ``previous`` continues (None when nothing moved)."""
        if torch.equal(previous, self._sequences):
            return None
        same = (previous.unsqueeze(1) == self._sequences.unsqueeze(0)).all(dim=-1)
        if not same.any(dim=1).all():
            raise ValueError(f"{type(self).__name__} lost track of the sequences; use a new processor per generate().")
        return same.int().argmax(dim=1)

    def __del__(self) -> None:
        hook = getattr(self, "_hook", None)
        if hook is not None:
            hook.remove()
