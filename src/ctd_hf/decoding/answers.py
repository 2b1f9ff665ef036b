"""Answering a batch of chat messages with a decoding method: prompt formatting, left padding, the method's contrast
on an :class:`~ctd_hf.decoding.engine.Engine`, and the decoded answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

from ..prompts import encode_prompt, format_prompt
from ..settings import check_settings, positive_int, sampling_temperature, setting, unit_interval
from .engine import Engine, TransformersEngine
from .layout import check_positions, pad_left
from .methods import BoundMethod, DecodingMethod, ODMethod
from .recording import OriginalPredictions


@dataclass(kw_only=True)
class GenerationSettings:
    """``generate()`` options of a decoding job; the sampling ones apply only with ``do_sample``."""

    max_new_tokens: int = setting(128, check=positive_int, help="New tokens per answer.")
    do_sample: bool = setting(False, help="Sample (temperature, top-k, top-p) instead of greedy decoding.")
    temperature: float = setting(1.0, check=sampling_temperature, help="Sampling temperature.")
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
    method: BoundMethod,
    messages: list[dict],
    prompt_format: str = "chatml",
    record: OriginalPredictions | None = None,
    engine: Engine | None = None,
    **generate_kwargs: Any,
) -> tuple[Any, int]:
    """Decode a batch of single-turn prompts (user messages) with a bound ``method`` on ``engine`` (default:
    transformers' ``generate()``).

    Returns the engine's output (``generate()``'s) and the (padded) prompt length, where the generated tokens start.
    ``record`` collects the original model's per-step predictions (contrastive methods only).
    """
    if not messages:
        raise ValueError("No message to answer: pass at least one user message.")
    engine = engine or TransformersEngine()
    model, tokenizer = method.model, method.tokenizer
    inputs = encode_messages(tokenizer, messages, prompt_format).to(model.device)
    needed = int(inputs["attention_mask"].sum(dim=1).max()) + method.prefix_length + generate_kwargs.get(
        "max_new_tokens", 0)
    check_positions(engine.max_positions(model), needed, "A prompt of the batch", holder=_holder(engine))
    output = engine.generate(model, method.contrast_for(messages, prompt_format), inputs, backend=method.backend,
                             record=record, **{"pad_token_id": tokenizer.pad_token_id, **generate_kwargs})
    return output, inputs["input_ids"].shape[1]


def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict],
    method: DecodingMethod | BoundMethod | None = None,
    prompt_format: str = "chatml",
    engine: Engine | None = None,
    **generate_kwargs: Any,
) -> list[str]:
    """Answer a batch of single-turn prompts (user messages) with ``method`` (a spec, bound here to ``model``, or a
    bound method; plain decoding by default), on ``engine`` (default: transformers' ``generate()``)."""
    method = method or ODMethod()
    bound = method if isinstance(method, BoundMethod) else method.bind(model, tokenizer)
    output, prompt_length = generate_for_messages(bound, messages, prompt_format, engine=engine, **generate_kwargs)
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    return [answer.strip() for answer in tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)]


def check_prompt_lengths(
    method: BoundMethod,
    messages: list[dict],
    prompt_format: str,
    max_new_tokens: int,
    fix: str = "shorten it or lower max_new_tokens",
    engine: Engine | None = None,
) -> None:
    """Refuse, before anything is decoded, prompts that cannot fit the positions of ``engine`` (default: the model's)
    together with the answer and the method's prefix."""
    engine = engine or TransformersEngine()
    limit, tokenizer = engine.max_positions(method.model), method.tokenizer
    for message in messages:
        needed = len(encode_prompt(format_prompt([message], prompt_format, tokenizer), tokenizer, prompt_format))
        check_positions(limit, needed + max_new_tokens + method.prefix_length, f"The prompt "
                        f"{message['content'][:40]!r}... ({max_new_tokens} new tokens, {method.prefix_length} prefix "
                        "tokens)", fix, holder=_holder(engine))


def _holder(engine: Engine) -> str:
    """Whose position limit an engine applies, for messages."""
    return "model" if isinstance(engine, TransformersEngine) else f"{engine.name} engine"
