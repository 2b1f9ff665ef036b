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

from ..contrast import IGNORE_INDEX
from ..prompts import encode_prompt, format_completion, format_prompt

_ALPACA_FIELDS = ("instruction", "output")


def _alpaca_to_messages(example: dict) -> dict:
    messages = [{"role": "user", "content": example["instruction"], "input": example.get("input") or ""}]
    if example.get("system"):
        messages.insert(0, {"role": "system", "content": example["system"], "input": ""})
    return {"messages": messages + [{"role": "assistant", "content": example["output"], "input": ""}]}


def _read(source: str | Path | datasets.Dataset, split: str) -> datasets.Dataset:
    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, datasets.DatasetDict):
        return source[split]
    path = Path(source)
    if path.is_file():
        builder = "json" if path.suffix in (".json", ".jsonl", ".gz") else path.suffix.lstrip(".")
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(str(source), split=split)


def load_sft_data(
    source: str | Path | datasets.Dataset,
    fraction: float = 1.0,
    seed: int = 0,
    split: str = "train",
) -> datasets.Dataset:
    """Load SFT examples as a dataset with one ``messages`` column (the last message is the assistant's answer).

    ``source`` is a JSON/JSONL file, a folder written by ``save_to_disk``, a ``datasets.Dataset`` or a dataset name,
    in Alpaca form (``instruction``, optional ``input``/``system``, ``output``) or chat form (``messages``).
    ``fraction`` in (0, 1] keeps a seeded random sample (the paper tunes on 1-10% of the SFT set).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"`fraction` must be in (0, 1], got {fraction}.")
    dataset = _read(source, split)
    if len(dataset) == 0:
        raise ValueError(f"The SFT data {source} is empty.")
    columns = set(dataset.column_names)
    if "messages" in columns:
        dataset = dataset.select_columns(["messages"])
    elif columns.issuperset(_ALPACA_FIELDS):
        dataset = dataset.map(_alpaca_to_messages, remove_columns=dataset.column_names)
    else:
        missing = sorted(set(_ALPACA_FIELDS) - columns)
        raise ValueError(
            f"The SFT data {source} has columns {sorted(columns)}: it needs `messages` (chat form) or "
            f"`instruction` and `output` (Alpaca form); missing {missing}."
        )
    if fraction < 1:
        count = max(1, math.ceil(fraction * len(dataset)))
        dataset = dataset.shuffle(seed=seed).select(range(count))
    return dataset


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

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        def pad(key: str, value: int) -> torch.Tensor:
            rows = [torch.as_tensor(feature[key], dtype=torch.long) for feature in features]
            return pad_sequence(rows, batch_first=True, padding_value=value)

        return {
            "input_ids": pad("input_ids", self.pad_token_id),
            "attention_mask": pad("attention_mask", 0),
            "labels": pad("labels", IGNORE_INDEX),
        }
