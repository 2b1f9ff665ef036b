"""Prompt formats: Alpaca, ChatML, ``### System/### User/### Assistant`` and the tokenizer's own chat template.

A conversation is a list of ``{"role", "content"}`` messages ending with a user turn; a user message may carry an
``"input"`` key (Alpaca's task input), which the Alpaca format prints in its own section and the others append to
the content. Training and decoding both go through :func:`format_prompt` and :func:`encode_prompt`, so a prefix sees
the same tokens in both.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from .settings import setting

PROMPT_FORMATS = ("chatml", "alpaca", "sua", "chat_template")


def prompt_format_setting() -> Any:
    """The ``prompt_format`` field of a settings dataclass (one declaration for every job that renders prompts)."""
    return setting("chatml", choices=PROMPT_FORMATS, help="How prompts are rendered; chat_template is the tokenizer's "
                                                          "own.")


_ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
_CHATML_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"
_SUA_TURN = "### {role}:\n{content}\n\n"


def _content(message: dict) -> str:
    extra = message.get("input") or ""
    return f"{message['content']}\n\n{extra}" if extra else message["content"]


def _check_messages(messages: list[dict]) -> None:
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("A prompt is a list of messages ending with a user message.")
    for message in messages:
        if message.get("role") not in ("system", "user", "assistant") or not isinstance(message.get("content"), str):
            raise ValueError(f"Each message needs a role (system/user/assistant) and a string content, got {message}.")
    if not any(_content(m).strip() for m in messages if m["role"] == "user"):
        raise ValueError("The prompt is empty: the user message has no text.")


def format_prompt(
    messages: list[dict], prompt_format: str = "chatml", tokenizer: PreTrainedTokenizerBase | None = None
) -> str:
    """Render a conversation that ends with a user turn as the text the model continues with its answer."""
    _check_messages(messages)
    if prompt_format == "chatml":
        turns = "".join(_CHATML_TURN.format(role=m["role"], content=_content(m)) for m in messages)
        return turns + "<|im_start|>assistant\n"
    if prompt_format == "sua":
        turns = "".join(_SUA_TURN.format(role=m["role"].capitalize(), content=_content(m)) for m in messages)
        return turns + "### Assistant:\n"
    if prompt_format == "alpaca":
        if len(messages) != 1:
            raise ValueError("The alpaca format holds one user turn and no system prompt; use chatml for more.")
        message = messages[0]
        template = _ALPACA_WITH_INPUT if message.get("input") else _ALPACA_NO_INPUT
        return template.format(instruction=message["content"], input=message.get("input"))
    if prompt_format == "chat_template":
        chat = [{"role": m["role"], "content": _content(m)} for m in messages]
        return _tokenizer_with_template(tokenizer).apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    raise ValueError(f"Unknown prompt format {prompt_format!r}; choose one of {PROMPT_FORMATS}.")


def format_completion(
    messages: list[dict],
    response: str,
    prompt_format: str = "chatml",
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> str:
    """The text that follows :func:`format_prompt` when the model answers ``response``: the answer and its end mark."""
    if prompt_format == "chatml":
        return response + "<|im_end|>"
    if prompt_format in ("alpaca", "sua"):
        if tokenizer is None or tokenizer.eos_token is None:
            raise ValueError(f"The {prompt_format} format ends answers with the tokenizer's EOS token: pass a "
                             "tokenizer.")
        return response + tokenizer.eos_token
    if prompt_format == "chat_template":
        # The template decides how an answer ends: render the whole conversation and cut the prompt off.
        prompt = format_prompt(messages, prompt_format, tokenizer)
        chat = [{"role": m["role"], "content": _content(m)} for m in messages]
        full = tokenizer.apply_chat_template(chat + [{"role": "assistant", "content": response}], tokenize=False)
        if not full.startswith(prompt):
            raise ValueError(
                "The tokenizer's chat template renders a conversation differently with and without the answer, so "
                "prompt and answer cannot be split; use prompt_format chatml, alpaca or sua instead."
            )
        return full[len(prompt) :]
    raise ValueError(f"Unknown prompt format {prompt_format!r}; choose one of {PROMPT_FORMATS}.")


def encode_prompt(text: str, tokenizer: PreTrainedTokenizerBase, prompt_format: str) -> list[int]:
    """Token ids of a rendered prompt; a chat template already holds its special tokens, other formats get them."""
    return tokenizer(text, add_special_tokens=prompt_format != "chat_template")["input_ids"]


def _tokenizer_with_template(tokenizer: PreTrainedTokenizerBase | None) -> PreTrainedTokenizerBase:
    if tokenizer is None or not tokenizer.chat_template:
        raise ValueError("The chat_template format needs a tokenizer that has a chat template.")
    return tokenizer
