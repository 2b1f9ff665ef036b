"""The stream executor: a ``LogitsProcessor`` whose second view follows ``generate()`` with its own KV cache.

A ``LogitsProcessor`` sees only ``input_ids`` and ``scores``. :class:`ContrastProcessor` therefore watches the model's
forward calls (a forward pre-hook that only records, attached while the processor is used as a context manager) to
learn the prompt's attention mask, which cannot be inferred from pad ids when the pad token also occurs inside
prompts. At the first call of a ``generate()`` it encodes the second view's prompt once; after that it feeds one new
token per step, and under beam search it reorders its cache to follow the beams ``generate()`` kept. It never
re-encodes a sequence it has already seen.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessor, PreTrainedModel

from .._compat import CACHE_ARGUMENT, find_cache
from .contrasts import Contrast
from .layout import check_left_padded, check_positions, max_positions, positions_from_mask
from .recording import OriginalPredictions

# Set while any contrast stream runs a forward, so that no processor mistakes it for generate()'s own prompt pass.
_STREAM_FORWARD = threading.local()


class ContrastStream:
    """Logits of ``model`` on a contrast prompt followed by the tokens generation picks, one step at a time; each of
    its forwards runs inside ``forward_context()`` (e.g. with an adapter switched on)."""

    def __init__(
        self, model: PreTrainedModel, forward_context: Callable[[], AbstractContextManager] = nullcontext
    ) -> None:
        self.model, self.forward_context = model, forward_context
        self.cache: DynamicCache | None = None
        self.attention_mask: torch.Tensor | None = None
        self.longest = 0  # positions used by the longest row

    @torch.no_grad()
    def prefill(self, attention_mask: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """Encode left-padded contrast prompts (``input_ids`` or ``inputs_embeds``); return last-position logits."""
        self.cache = DynamicCache(config=self.model.config)
        self.attention_mask = attention_mask
        self.longest = int(attention_mask.sum(dim=1).max())
        return self._forward(position_ids=positions_from_mask(attention_mask), **inputs)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
        """Append one token per row (after moving rows to ``order``, under beam search); return its logits."""
        if order is not None:
            self.cache.reorder_cache(order)
            self.attention_mask = self.attention_mask[order]
        self.attention_mask = F.pad(self.attention_mask, (0, 1), value=1)
        self.longest += 1
        positions = self.attention_mask.sum(dim=1, keepdim=True) - 1
        return self._forward(input_ids=tokens.unsqueeze(1), position_ids=positions)

    def _forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        check_positions(max_positions(self.model), self.longest, "The contrast stream")
        inputs = {name: tensor.to(self.model.device) for name, tensor in inputs.items()}
        self.attention_mask = self.attention_mask.to(self.model.device)
        _STREAM_FORWARD.active = True
        try:
            with self.forward_context():
                outputs = self.model(attention_mask=self.attention_mask, use_cache=True, logits_to_keep=1,
                                     **{CACHE_ARGUMENT: self.cache}, **inputs)  # the cache grows in place
        finally:
            _STREAM_FORWARD.active = False
        return outputs.logits[:, -1].float()


class ContrastProcessor(LogitsProcessor):
    r"""Runs a :class:`~ctd_hf.Contrast` inside a stock ``model.generate()``: returns ``contrast.combine(z, z~)``,
    with ``z~`` computed by a contrast stream that has its own KV cache.

    Use it as a context manager around the ``generate()`` calls it serves: while the ``with`` block runs, a forward
    pre-hook on the model records each call's prompt attention mask; it is removed when the block ends. Greedy
    decoding, sampling, beam search, ``num_return_sequences``, stopping criteria and streamers work; it runs before
    ``generate()``'s temperature, top-k and top-p warpers, so those act on the contrasted scores.

    Args:
        contrast: what to contrast (:class:`~ctd_hf.CTDContrast`, :class:`~ctd_hf.InstructiveContrast`,
            :class:`~ctd_hf.ContrastiveDecodingContrast`).
        record: an :class:`~ctd_hf.OriginalPredictions` to fill with the original model's per-step predictions.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from ctd_hf import CTDContrast
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                      num_hidden_layers=1, num_attention_heads=2)).eval()
        >>> with ContrastProcessor(CTDContrast(model, torch.randn(4, 16), strength=0.3)) as processor:
        ...     model.generate(torch.tensor([[1, 5, 7]]), logits_processor=[processor], max_new_tokens=3,
        ...                    min_new_tokens=3, do_sample=False, pad_token_id=0).shape
        torch.Size([1, 6])
    """

    supports_continuous_batching = False  # stateful: it follows the rows of one generate() call

    def __init__(self, contrast: Contrast, record: OriginalPredictions | None = None) -> None:
        if not isinstance(contrast, Contrast):
            raise TypeError(f"ContrastProcessor needs a ctd_hf.Contrast, got {type(contrast).__name__}.")
        self.contrast = contrast
        self.record = record
        self.stream = ContrastStream(contrast.contrast_model, contrast.second_view_forward)
        self._hook: Any = None
        self._views = ExitStack()
        self._sequences: torch.Tensor | None = None
        self._prompt: dict[str, Any] | None = None
        self._several_tokens = False
        self._forwards = 0  # forwards of generate() the hook saw in this `with` block

    @property
    def model(self) -> PreTrainedModel:
        """The model whose ``generate()`` this processor serves."""
        return self.contrast.model

    def __enter__(self) -> ContrastProcessor:
        if self._hook is not None:
            raise RuntimeError(f"This {type(self).__name__} is already in use in a `with` block.")
        self._hook = self.model.register_forward_pre_hook(self._record_prompt, with_kwargs=True)
        self._views.enter_context(self.contrast.first_view())
        self._sequences, self._forwards = None, 0
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._hook.remove()
        self._views.close()
        self._hook = None
        self._prompt = None

    def _record_prompt(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Forward pre-hook: remember the attention mask of generate()'s prompt pass (the one with an empty cache),
        and notice passes that verify several tokens at once (assisted/speculative decoding), which it cannot follow.
        """
        if getattr(_STREAM_FORWARD, "active", False):
            return
        self._forwards += 1
        cache = find_cache(args, kwargs)
        if cache is not None and not isinstance(cache, DynamicCache):
            self._prompt = {"cache": type(cache).__name__}
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if cache is not None and cache.get_seq_length() > 0:
            self._several_tokens = self._several_tokens or (input_ids is not None and input_ids.shape[1] > 1)
            return
        self._several_tokens = False
        mask = kwargs.get("attention_mask")
        if input_ids is not None and input_ids.shape[-1] == 0:
            raise ValueError(f"{type(self).__name__} got an empty prompt (0 tokens): every prompt needs at least one "
                             "token (start it with the BOS token).")
        if input_ids is None:
            self._prompt = {"inputs_embeds": True}
        else:
            self._prompt = {"attention_mask": torch.ones_like(input_ids) if mask is None else mask}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        second_logits = self._advance(input_ids).to(scores.device)
        if self.record is not None:
            self.record.add(scores)
        return self.contrast.contrasted_scores(scores, second_logits)

    def _advance(self, input_ids: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        if self._hook is None:
            raise RuntimeError(
                f"{name} must see generate()'s prompt pass: use it as a context manager, "
                f"`with processor: model.generate(..., logits_processor=[processor])`."
            )
        if self._prompt is not None:  # a new generate() call has just encoded its prompt
            prompt, self._prompt = self._prompt, None
            if "cache" in prompt:
                raise ValueError(
                    f"{name} got generate() with a {prompt['cache']}: it supports decoder-only models with the "
                    "default dynamic cache. Drop cache_implementation and the cache from the generate() call."
                )
            if "inputs_embeds" in prompt:
                raise ValueError(
                    f"{name} needs `input_ids`; generating from `inputs_embeds` is not supported. (A prompt-tuning "
                    "PeftModel's generate() feeds its prefix that way: call generate() on its base model instead.)"
                )
            mask = prompt["attention_mask"]
            if mask.shape != input_ids.shape:
                raise self._unsupported()
            check_left_padded(mask)
            self._sequences = input_ids
            return self.stream.prefill(**self.contrast.second_view(input_ids, mask))
        if self._sequences is None and not self._forwards:
            raise ValueError(
                f"{name} was called before any forward of the {type(self.model).__name__} it was built on. Either "
                "generate() runs on another model (build the processor on that one), or it uses a mode that calls "
                "processors outside the model's steps (assisted/speculative decoding, prompt lookup): the processor "
                "follows generate() one token at a time."
            )
        if self._sequences is None or self._several_tokens or input_ids.shape[1] != self._sequences.shape[1] + 1:
            raise self._unsupported()
        order = self._beam_order(input_ids[:, :-1])
        if order is not None and self.record is not None:
            raise ValueError("Recording the original predictions follows generate()'s rows, which beam search "
                             "reorders: record with greedy decoding or sampling.")
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
