"""Shared fixtures: a tiny byte-level BPE tokenizer with ChatML specials and tiny random Llama models (no download)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test needs the Hub; offline, a missing name fails at once

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ctd_hf.models import ensure_pad_token
from ctd_hf.resources import resource_path

ROOT = Path(__file__).resolve().parents[1]
DATA = resource_path()  # the data shipped in the package
SFT_SAMPLE = resource_path("sft", "alpaca_en_demo.json")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the first 256 SFT examples; pad token deliberately unset."""
    texts = [record["instruction"] + " " + record["output"] for record in json.loads(SFT_SAMPLE.read_text())[:256]]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", bos_token="<|im_start|>", chat_template=CHATML_TEMPLATE
    )


def build_model(vocab_size: int, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A tiny random Llama (2 layers, grouped-query attention) in fp32 eval mode."""
    torch.manual_seed(seed)
    config = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    config.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**config)).eval()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-tokenizer")
    build_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def tokenizer(tokenizer_dir):
    return PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)


@pytest.fixture
def left_tokenizer(tokenizer):
    """The tiny tokenizer with a pad token, padding on the left as the executors need."""
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = "left"
    return tokenizer


@pytest.fixture
def tiny_model(tokenizer):
    return build_model(len(tokenizer))


class DeprecationLog(logging.Handler):
    """Collects the deprecation notices a logger emits (transformers announces some through its logger, not through
    the warnings module that pytest's filterwarnings turns into errors)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "deprecat" in record.getMessage().lower():
            self.messages.append(record.getMessage())


@pytest.fixture(autouse=True)
def no_logged_deprecations():
    """Fail a test during which transformers logs a deprecation: like a DeprecationWarning, it comes from our call."""
    handler = DeprecationLog()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if handler.messages:
        pytest.fail(f"transformers logged a deprecation: {handler.messages}")


LONG = 4096  # positions: the tiny tokenizer splits text into about 3 times more tokens than a real one


@pytest.fixture(scope="session")
def long_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A saved tiny model (``tiny-llama``) with room for SuperNI prompts in the tiny tokenizer's many tokens."""
    path = tmp_path_factory.mktemp("long-model") / "tiny-llama"
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    build_model(len(tokenizer), initializer_range=0.3, max_position_embeddings=LONG).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A saved tiny model + tokenizer folder named ``tiny-llama``, usable as ``--model`` on the CLI."""
    path = tmp_path_factory.mktemp("models") / "tiny-llama"
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    build_model(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def cli_error(capsys, argv: list[str]) -> str:
    """Run ``ctd-hf argv`` expecting a refusal: exit status 2 and one line on stderr, which is returned."""
    from ctd_hf.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error and "Traceback" not in error
    return error.splitlines()[-1]
