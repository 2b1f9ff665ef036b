"""Soft prefix: initialisation, peft layout, and clear refusals for adapters that do not fit the model."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import set_seed

from ctd_hf import AdapterMismatchError, add_soft_prefix, check_adapter, load_adapter
from ctd_hf.adapter import prefix_embeddings, write_card

from conftest import build_model


@pytest.fixture
def saved_prefix(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = add_soft_prefix(AutoModelForCausalLM.from_pretrained(tiny_model_dir), num_virtual_tokens=4)
    model.save_pretrained(tmp_path / "prefix")
    write_card(tmp_path / "prefix", model, alpha=0.3)
    return tmp_path / "prefix"


def test_vocab_init_uses_real_token_embeddings(tiny_model):
    set_seed(1)
    prefix = prefix_embeddings(add_soft_prefix(tiny_model, num_virtual_tokens=6, init="vocab"))
    vocab = tiny_model.get_input_embeddings().weight
    assert prefix.shape == (6, vocab.shape[1])
    assert all((vocab == row).all(dim=1).any() for row in prefix)


def test_text_init_uses_the_text_tokens(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prefix = prefix_embeddings(add_soft_prefix(base, num_virtual_tokens=3, init="text", init_text="Answer well"))
    ids = tokenizer("Answer well")["input_ids"]
    expected = base.get_input_embeddings().weight[(ids * 3)[:3]]
    torch.testing.assert_close(prefix, expected)


def test_random_init_and_bad_arguments(tiny_model):
    assert prefix_embeddings(add_soft_prefix(build_model(tiny_model.config.vocab_size), 2, init="random")).shape[0] == 2
    with pytest.raises(ValueError, match="init_text"):
        add_soft_prefix(tiny_model, init="text")
    with pytest.raises(ValueError, match="Unknown prefix init"):
        add_soft_prefix(tiny_model, init="zeros")
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        add_soft_prefix(tiny_model, num_virtual_tokens=0)


def test_saved_prefix_loads_with_peft_and_ctd_hf(saved_prefix, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    card = json.loads((saved_prefix / "ctd_hf.json").read_text())
    assert card["base_model"] == "tiny-llama" and card["alpha"] == 0.3
    first = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), saved_prefix)
    second = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(saved_prefix))
    assert torch.equal(prefix_embeddings(first), prefix_embeddings(second))


@pytest.mark.parametrize(
    "overrides, message",
    [({"hidden_size": 48, "num_attention_heads": 4}, "hidden size"), ({"vocab_size": 400}, "vocabulary of")],
)
def test_prefix_for_another_model_is_refused(saved_prefix, tokenizer, overrides, message):
    other = build_model(**{"vocab_size": len(tokenizer), **overrides})
    with pytest.raises(AdapterMismatchError, match=message):
        load_adapter(other, saved_prefix)


def test_prefix_for_another_base_model_name_is_refused(saved_prefix, tokenizer, tmp_path):
    other = build_model(len(tokenizer))
    other.save_pretrained(tmp_path / "other-model")
    from transformers import AutoModelForCausalLM

    with pytest.raises(AdapterMismatchError, match="base model 'tiny-llama'"):
        check_adapter(AutoModelForCausalLM.from_pretrained(tmp_path / "other-model"), saved_prefix)


def test_corrupt_or_missing_adapter_files_are_named(saved_prefix, tiny_model):
    weights = saved_prefix / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(AdapterMismatchError, match="adapter_model.safetensors is corrupt"):
        check_adapter(tiny_model, saved_prefix)
    (saved_prefix / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterMismatchError, match="adapter_config.json is corrupt"):
        check_adapter(tiny_model, saved_prefix)
    (saved_prefix / "adapter_config.json").unlink()
    with pytest.raises(AdapterMismatchError, match="does not exist"):
        check_adapter(tiny_model, saved_prefix)
