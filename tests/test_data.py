"""Prompt formats, SFT loading and sampling, response-only labels."""

from __future__ import annotations

import json

import datasets
import pytest

from ctd_hf import RightPaddingCollator, format_completion, format_prompt, load_sft_data, tokenize_sft
from ctd_hf.models import ensure_pad_token

from conftest import SFT_SAMPLE

USER = [{"role": "user", "content": "Name a colour.", "input": "Think of the sky."}]


def test_prompt_formats_render_exactly(tokenizer):
    assert format_prompt(USER, "chatml") == (
        "<|im_start|>user\nName a colour.\n\nThink of the sky.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert format_prompt([{"role": "system", "content": "Be brief."}] + USER, "sua") == (
        "### System:\nBe brief.\n\n### User:\nName a colour.\n\nThink of the sky.\n\n### Assistant:\n"
    )
    alpaca = format_prompt(USER, "alpaca")
    assert "### Instruction:\nName a colour.\n\n### Input:\nThink of the sky.\n\n### Response:\n" in alpaca
    assert "### Input" not in format_prompt([{"role": "user", "content": "Hi"}], "alpaca")
    assert format_prompt(USER, "chat_template", tokenizer) == format_prompt(USER, "chatml")
    assert format_completion(USER, "Blue.", "chatml") == "Blue.<|im_end|>"
    assert format_completion(USER, "Blue.", "alpaca", tokenizer) == "Blue." + tokenizer.eos_token
    assert format_completion(USER, "Blue.", "chat_template", tokenizer) == "Blue.<|im_end|>\n"


@pytest.mark.parametrize(
    "messages, prompt_format, message",
    [
        ([{"role": "user", "content": "   "}], "chatml", "empty"),
        ([{"role": "assistant", "content": "x"}], "chatml", "ending with a user"),
        ([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], "alpaca", "one user turn"),
        ([{"role": "user", "content": "u"}], "vicuna", "Unknown prompt format"),
    ],
)
def test_bad_prompts_are_refused(messages, prompt_format, message):
    with pytest.raises(ValueError, match=message):
        format_prompt(messages, prompt_format)


def test_load_alpaca_json_jsonl_dataset_and_disk(tmp_path):
    records = json.loads(SFT_SAMPLE.read_text())[:5]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    chat = datasets.Dataset.from_list(
        [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
         for r in records]
    )
    chat.save_to_disk(tmp_path / "on_disk")
    sources = (SFT_SAMPLE, tmp_path / "data.jsonl", datasets.Dataset.from_list(records), chat, tmp_path / "on_disk")
    for source in sources:
        loaded = load_sft_data(source)
        assert loaded.column_names == ["messages"]
        assert loaded[0]["messages"][0]["content"] == records[0]["instruction"]
        assert loaded[0]["messages"][-1] == {**loaded[0]["messages"][-1], "role": "assistant",
                                              "content": records[0]["output"]}


def test_fraction_sampling_is_seeded():
    first = load_sft_data(SFT_SAMPLE, fraction=0.1, seed=3)
    assert len(first) == 100  # ceil(0.1 * 999)
    assert first["messages"] == load_sft_data(SFT_SAMPLE, fraction=0.1, seed=3)["messages"]
    assert first["messages"] != load_sft_data(SFT_SAMPLE, fraction=0.1, seed=4)["messages"]
    with pytest.raises(ValueError, match="fraction"):
        load_sft_data(SFT_SAMPLE, fraction=0)


def test_missing_fields_and_empty_data_are_refused(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps([{"instruction": "x", "answer": "y"}]))
    with pytest.raises(ValueError, match=r"missing \['output'\]"):
        load_sft_data(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="is empty"):
        load_sft_data(datasets.Dataset.from_dict({"instruction": [], "output": []}))


def test_labels_cover_only_the_response(tokenizer):
    ensure_pad_token(tokenizer)
    data = load_sft_data(SFT_SAMPLE).select(range(3))
    tokenized = tokenize_sft(data, tokenizer, "chatml", max_length=4096)
    example, messages = tokenized[0], data[0]["messages"]
    prompt_ids = tokenizer(format_prompt(messages[:-1], "chatml"))["input_ids"]
    answer_ids = tokenizer(format_completion(messages[:-1], messages[-1]["content"], "chatml"))["input_ids"]
    assert example["input_ids"] == prompt_ids + answer_ids
    assert example["labels"] == [-100] * len(prompt_ids) + answer_ids
    assert example["input_ids"][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_truncation_drops_examples_whose_answer_is_cut_away(tokenizer):
    ensure_pad_token(tokenizer)
    data = load_sft_data(SFT_SAMPLE).select(range(20))
    tokenized = tokenize_sft(data, tokenizer, max_length=60)
    assert 0 < len(tokenized) < 20
    assert all(len(ids) <= 60 for ids in tokenized["input_ids"])
    with pytest.raises(ValueError, match="every label is masked"):
        tokenize_sft(data, tokenizer, max_length=5)


def test_tokenizer_without_pad_token_and_right_padding_collator(tokenizer):
    assert tokenizer.pad_token is None
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == tokenizer.eos_token
    batch = RightPaddingCollator(tokenizer.pad_token_id)(
        [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
         {"input_ids": [8], "attention_mask": [1], "labels": [8]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, tokenizer.pad_token_id, tokenizer.pad_token_id]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
