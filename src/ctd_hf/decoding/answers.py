"""Decoding a batch of chat messages with a :class:`~ctd_hf.DecodingMethod`: prompt formatting, left padding, the
method's contrast on its executor, and the decoded answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

from ..prompts import encode_prompt, format_prompt
from .doubled import generate_doubled
from .layout import pad_left
from .methods import DecodingMethod
from .recording import OriginalPredictions
from .stream import ContrastProcessor
from ..settings import check_settings, positive_int, positive_number, setting, unit_interval


@dataclass(kw_only=True)
class GenerationSettings:
    """``generate()`` options of a decoding job; the sampling ones apply only with ``do_sample``."""

    max_new_tokens: int = setting(128, check=positive_int, help="New tokens per answer.")
    do_sample: bool = setting(False, help="Sample (temperature, top-k, top-p) instead of greedy decoding.")
    temperature: float = setting(1.0, check=positive_number, help="Sampling temperature.")
    top_k: int = setting(50, check=positive_int, help="Sampling: keep the k most likely tokens.")
    top_p: float = setting(1.0, check=unit_interval, help="Sampling: keep the smallest set with this probability.")
    num_beams: int = setting(1, check=positive_int, help="Beam search with this many beams (1: none).")

    def __post_init__(self) -> None:
        check_settings(self)

    def generate_kwargs(self) -> dict[str, Any]:
        """The ``generate()`` keyword arguments."""
        options = dict(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, num_beams=self.num_beams)
        if self.do_sample:
            options.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return options


def encode_messages(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], prompt_format: str = "chatml"
) -> BatchEncoding:
    """Single-turn prompts (user messages) rendered in ``prompt_format`` and left-padded into tensors."""
    return pad_left(tokenizer, [encode_prompt(format_prompt([m], prompt_format, tokenizer), tokenizer, prompt_format)
                                for m in messages])


@torch.no_grad()
def generate_for_messages(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict],
    method: DecodingMethod,
    prompt_format: str = "chatml",
    record: OriginalPredictions | None = None,
    engine: Any = None,
    **generate_kwargs: Any,
) -> tuple[Any, int]:
    """Run ``generate()`` with ``method`` on a batch of single-turn prompts (user messages).

    Returns ``generate()``'s output and the (padded) prompt length, where the generated tokens start. ``record``
    collects the original model's per-step predictions (contrastive methods only). ``engine`` runs it elsewhere: an
    object with this function's signature as its ``generate_for_messages`` method (a
    :class:`ctd_hf.integrations.vllm.VLLMEngine`); ``None`` runs ``model.generate()``.
    """
    if engine is not None:
        return engine.generate_for_messages(model, tokenizer, messages, method, prompt_format, record,
                                            **generate_kwargs)
    if not messages:
        raise ValueError("No message to answer: pass at least one user message.")
    inputs = encode_messages(tokenizer, messages, prompt_format).to(model.device)
    contrast = method.contrast(model, tokenizer, method.noisy_prompts(tokenizer, messages, prompt_format, model.device))
    limit = getattr(model.config, "max_position_embeddings", None)
    needed = int(inputs["attention_mask"].sum(dim=1).max()) + method.prefix_length + generate_kwargs.get(
        "max_new_tokens", 0)
    if limit and needed > limit:
        raise ValueError(f"A prompt of the batch needs {needed} positions (prompt, {method.prefix_length} prefix and "
                         f"max_new_tokens), more than the model's {limit}: shorten it or lower max_new_tokens.")
    options = {"pad_token_id": tokenizer.pad_token_id, **inputs, **generate_kwargs}
    if contrast is None:
        output = model.generate(**options)
    elif method.doubled:
        output = generate_doubled(model, contrast, record=record, **options)
    else:
        with ContrastProcessor(contrast, record) as processor:
            output = model.generate(logits_processor=[processor], **options)
    return output, inputs["input_ids"].shape[1]


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict],
    method: DecodingMethod | None = None,
    prompt_format: str = "chatml",
    engine: Any = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Answer a batch of single-turn prompts (user messages) with ``method`` (plain decoding by default), on
    ``model.generate()`` or ``engine`` (see :func:`generate_for_messages`)."""
    output, prompt_length = generate_for_messages(model, tokenizer, messages, method or DecodingMethod("od"),
                                                  prompt_format, engine=engine, **generate_kwargs)
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    return [answer.strip() for answer in tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)]


def check_prompt_lengths(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict],
    prompt_format: str,
    max_new_tokens: int,
    extra: int = 0,
    fix: str = "shorten it or lower max_new_tokens",
    engine: Any = None,
) -> None:
    """Refuse prompts that cannot fit the model's positions (or ``engine``'s ``max_model_len``) together with the
    answer (and ``extra``: a prefix)."""
    limit = getattr(engine, "max_model_len", None) or getattr(model.config, "max_position_embeddings", None)
    holder = "model" if engine is None else "engine"
    for message in messages:
        needed = len(encode_prompt(format_prompt([message], prompt_format, tokenizer), tokenizer, prompt_format))
        needed += max_new_tokens + extra
        if limit and needed > limit:
            raise ValueError(f"The prompt {message['content'][:40]!r}... needs {needed} positions (prompt, "
                             f"{max_new_tokens} new tokens, {extra} prefix tokens), more than the {holder}'s {limit}: "
                             f"{fix}.")
