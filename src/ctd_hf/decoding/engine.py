"""Engines: what decodes a batch once a method has given it a :class:`~ctd_hf.Contrast`.

An :class:`Engine` is what evaluation, synthesis and ``ctd-hf generate`` call (through
:func:`ctd_hf.decoding.answers.generate_for_messages`): it takes a model's left-padded prompt batch and the batch's
contrast (``None`` for plain decoding) and returns the prompts followed by the answers, as ``generate()`` returns
them. :class:`TransformersEngine` runs ``model.generate()`` on one of the two executors;
``ctd_hf.integrations.vllm.VLLMEngine`` runs a vLLM engine. Engines know contrasts and executors, never methods.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from transformers import BatchEncoding, PreTrainedModel

from .contrasts import Contrast, check_loaded
from .doubled import generate_doubled
from .layout import max_positions
from .recording import OriginalPredictions
from .stream import ContrastProcessor


@runtime_checkable
class Engine(Protocol):
    """What decodes a batch for the jobs.

    Attributes:
        name: recorded in resume keys and reports (``hf``, ``vllm``).
        reads_scores: whether choice-scored tasks can run beside it: they read contrasted scores of given tokens
            from the Hugging Face model's own forwards, which only an engine built on that model shares.
    """

    name: str
    reads_scores: bool

    def max_positions(self, model: PreTrainedModel) -> int | None:
        """The positions a request may use (prompt, any prefix and answer)."""

    def generate(
        self,
        model: PreTrainedModel,
        contrast: Contrast | None,
        inputs: BatchEncoding,
        *,
        backend: str = "auto",
        record: OriginalPredictions | None = None,
        **generate_kwargs: Any,
    ) -> Any:
        """``model.generate(**inputs, **generate_kwargs)`` with ``contrast`` (its executor picked by ``backend`` where
        the engine has several): the sequences (prompt, then answer), or what ``generate()`` returns for the options.
        ``record`` collects the original model's per-step predictions."""


def executor(contrast: Contrast, backend: str = "auto") -> str:
    """The transformers executor that runs ``contrast``: ``backend``, or for ``auto`` the doubled batch where both
    views are one model's forward, else the stream."""
    if backend != "auto":
        return backend
    return "doubled" if contrast.shares_model else "stream"


class TransformersEngine:
    """``model.generate()``: plain, on the doubled executor (both views in one 2B-row forward; a contrast of one
    model) or on the stream executor (a processor with its own KV cache; any contrast). ``backend="auto"`` picks the
    doubled executor where the contrast allows it."""

    name = "hf"
    reads_scores = True

    def max_positions(self, model: PreTrainedModel) -> int | None:
        return max_positions(model)

    def generate(
        self,
        model: PreTrainedModel,
        contrast: Contrast | None,
        inputs: BatchEncoding,
        *,
        backend: str = "auto",
        record: OriginalPredictions | None = None,
        **generate_kwargs: Any,
    ) -> Any:
        check_loaded(model)
        options = {**inputs, **generate_kwargs}
        if contrast is None:
            return model.generate(**options)
        if executor(contrast, backend) == "doubled":
            return generate_doubled(model, contrast, record=record, **options)
        with ContrastProcessor(contrast, record) as processor:
            return model.generate(logits_processor=[processor], **options)
