"""SFT data for contrastive tuning: load (file, ``datasets.Dataset`` or dataset name), normalise to ``messages``,
sample a fraction, tokenise with labels on response tokens only, and pad batches on the right."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedTokenizerBase

from ..formula import IGNORE_INDEX
from ..prompts import encode_prompt, format_completion, format_prompt
from ..sources import read_source
from ..settings import check_value, unit_interval

_FORMS = ("`messages` (chat form), `instruction` and `output` (Alpaca form), or `prompt` and `completion` (TRL's "
          "prompt-completion form, strings or message lists)")


def _to_messages(example: dict) -> dict:
    """One example in any supported form as ``{"messages": [...]}``, the last message the assistant's answer."""
    if "messages" in example:
        return {"messages": example["messages"]}
    if "prompt" in example:
        prompt, completion = example["prompt"], example["completion"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        answer = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else list(completion)
        return {"messages": messages + answer}
    messages = [{"role": "user", "content": example["instruction"], "input": example.get("input") or ""}]
    if example.get("system"):
        messages.insert(0, {"role": "system", "content": example["system"]})
    return {"messages": messages + [{"role": "assistant", "content": example["output"]}]}


def _check_example(example: dict) -> None:
    """Refuse an example in none of the supported forms, or one without an answer."""
    if not isinstance(example, dict):
        raise ValueError(f"an SFT example is a JSON object, got {type(example).__name__}.")
    forms = {"messages": ("messages",), "prompt": ("prompt", "completion"), "instruction": ("instruction", "output")}
    form = next((fields for key, fields in forms.items() if key in example), None)
    if form is None:
        raise ValueError(f"the example has fields {sorted(example)}; it needs {_FORMS}.")
    missing = [name for name in form if example.get(name) in (None, "", [])]
    if missing:
        raise ValueError(f"the example has {sorted(example)}, missing {missing}.")
    texts = {"messages": (list,), "prompt": (str, list), "completion": (str, list), "instruction": (str,),
             "output": (str,), "input": (str, type(None)), "system": (str, type(None))}
    wrong = {name: type(example[name]).__name__ for name, kinds in texts.items()
             if name in example and not isinstance(example[name], kinds)}
    if wrong:
        raise ValueError(f"the example's {', '.join(f'{name} is of type {kind}' for name, kind in wrong.items())}; "
                         "instructions, inputs and answers are text (prompt, completion and messages may be message "
                         "lists).")
    messages = _to_messages(example)["messages"]
    well_formed = isinstance(messages, list) and all(
        isinstance(m, dict) and "role" in m and isinstance(m.get("content"), str) for m in messages)
    if not well_formed:
        raise ValueError("messages must be a list of {role, content} objects with string content.")
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise ValueError("the example must end with a non-empty assistant answer.")


def load_sft_data(
    source: str | Path | list[dict] | datasets.Dataset,
    fraction: float = 1.0,
    seed: int = 0,
    split: str = "train",
) -> datasets.Dataset:
    """Load SFT examples as a dataset with one ``messages`` column (the last message is the assistant's answer).

    ``source`` is a JSON/JSONL file, a list of examples, a folder written by ``save_to_disk``, a
    ``datasets.Dataset`` or a dataset name, with examples in chat form (``messages``), Alpaca form (``instruction``,
    optional ``input``/``system``, ``output``) or TRL's prompt-completion form (``prompt`` and ``completion``: strings, read as a user message and
    the answer, or message lists). ``fraction`` in (0, 1] keeps a seeded random sample (the paper tunes on 1-10% of
    the SFT set).
    """
    fraction = check_value("fraction", fraction, unit_interval)
    records = read_source(source, split, _check_example)
    if len(records) == 0:
        raise ValueError(f"The SFT data {source if not isinstance(source, list) else '(a list)'} is empty: it holds "
                         "no example.")
    if isinstance(records, list):  # a file or a list, checked record by record as it was read
        dataset = datasets.Dataset.from_list([_to_messages(record) for record in records])
    else:

        def checked(example: dict, index: int) -> dict:
            example = dict(example)  # datasets may hand map() a lazy row
            try:
                _check_example(example)
            except ValueError as error:
                raise ValueError(f"The SFT data, row {index + 1}: {error}") from None
            return _to_messages(example)

        dataset = records.map(checked, with_indices=True, remove_columns=records.column_names, desc="Checking")
    dataset = dataset.select_columns(["messages"])
    if fraction < 1:
        count = max(1, math.ceil(fraction * len(dataset)))
        dataset = dataset.shuffle(seed=seed).select(range(count))
    return dataset


def sequence_length(value: object) -> int:
    """Check of ``max_length``: an integer >= 2 (a prompt token and an answer token)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(f"must be an integer >= 2 (a prompt token and an answer token), got {value!r}.")
    return value


def tokenize_sft(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: str = "chatml",
    max_length: int = 512,
) -> datasets.Dataset:
    """Tokenise ``messages`` examples into ``input_ids``/``attention_mask``/``labels``, labels on the answer only.

    Sequences longer than ``max_length`` lose their end; an example whose answer is cut away entirely (its prompt
    fills ``max_length``) is dropped, and no example left is an error.
    """
    max_length = check_value("max_length", max_length, sequence_length)

    def encode(example: dict) -> dict:
        messages = example["messages"]
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError(f"An SFT example must end with an assistant message, got {messages}.")
        prompt = encode_prompt(format_prompt(messages[:-1], prompt_format, tokenizer), tokenizer, prompt_format)
        answer = format_completion(messages[:-1], messages[-1]["content"], prompt_format, tokenizer)
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        input_ids = (prompt + answer_ids)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt) + answer_ids)[:max_length]
        return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}

    tokenized = dataset.map(encode, remove_columns=dataset.column_names, desc="Tokenizing")
    # At least one label after the first token: the loss predicts token t+1 from position t.
    kept = tokenized.filter(lambda example: any(label != IGNORE_INDEX for label in example["labels"][1:]))
    if len(kept) == 0:
        raise ValueError(
            f"No example has an answer token within max_length={max_length}: every label is masked. "
            "Raise max_length or shorten the prompts."
        )
    return kept


@dataclass
class RightPaddingCollator:
    """Pad ``input_ids``/``attention_mask``/``labels`` on the right.

    transformers' ``DataCollatorForSeq2Seq`` pads on the tokenizer's ``padding_side``, which is "left" for many chat
    models; contrastive tuning needs right padding so the prefix sits directly before every row's first token, so this
    collator pads on the right whatever the tokenizer says.
    """

    pad_token_id: int

    def __post_init__(self) -> None:
        if isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int):
            raise ValueError(f"RightPaddingCollator needs an integer `pad_token_id`, got {self.pad_token_id!r}: the "
                             "tokenizer has no pad token? Set tokenizer.pad_token = tokenizer.eos_token first.")

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        def pad(key: str, value: int) -> torch.Tensor:
            rows = [torch.as_tensor(feature[key], dtype=torch.long) for feature in features]
            return pad_sequence(rows, batch_first=True, padding_value=value)

        return {
            "input_ids": pad("input_ids", self.pad_token_id),
            "attention_mask": pad("attention_mask", 0),
            "labels": pad("labels", IGNORE_INDEX),
        }
