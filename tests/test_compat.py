"""What ``ctd_hf._compat`` assumes of the installed transformers and peft, each checked with a message that names the
version when an assumption moves; and every executor running with deprecations turned into errors."""

from __future__ import annotations

import inspect
import logging
import warnings

import peft
import pytest
import torch
import transformers
from peft import LoraConfig, TaskType, get_peft_model
from transformers import GenerationConfig, LlamaForCausalLM

import ctd_hf
from conftest import DeprecationLog, build_model
from ctd_hf import ContrastProcessor, CTDContrast, InstructiveContrast, generate_doubled
from ctd_hf._compat import (CACHE_ARGUMENT, adapter_layers_enabled, calling_generate_streamer, decoding_loop,
                             find_cache)
from ctd_hf.decoding.likelihood import continuation_log_probs

VERSIONS = f"transformers {transformers.__version__}, peft {peft.__version__}"


def test_cache_argument_is_the_one_models_and_generate_take():
    forward = inspect.signature(LlamaForCausalLM.forward).parameters
    assert CACHE_ARGUMENT in forward, (
        f"{VERSIONS}: LlamaForCausalLM.forward takes no `{CACHE_ARGUMENT}` (it takes {list(forward)}); the cache "
        "argument was renamed again: update ctd_hf/_compat.py:CACHE_ARGUMENT.")


def test_find_cache_finds_a_cache_under_any_name():
    cache = transformers.DynamicCache()
    assert find_cache((), {"cache": cache}) is cache
    assert find_cache((), {"past_key_values": cache, "use_cache": True}) is cache
    assert find_cache((torch.ones(1), cache), {}) is cache
    assert find_cache((), {"use_cache": True}) is None


@pytest.mark.parametrize(("config", "loop"), [(GenerationConfig(do_sample=False), "_sample"),
                                              (GenerationConfig(do_sample=True), "_sample"),
                                              (GenerationConfig(num_beams=2, do_sample=False), "_beam_search")])
def test_decoding_loops_are_found(config, loop):
    model = build_model(32)
    found = decoding_loop(model, config)
    assert found is not None and found.__func__ is getattr(type(model), loop), (
        f"{VERSIONS}: generate() no longer runs {loop} for {config.get_generation_mode()} "
        "(transformers.generation.utils.GENERATION_MODES_MAPPING moved): update ctd_hf/_compat.py:decoding_loop.")


def test_a_callable_custom_generate_finds_the_streamer_of_generate():
    seen = []

    def loop(model, input_ids, logits_processor, stopping_criteria, generation_config, **model_kwargs):
        seen.append(calling_generate_streamer())
        return input_ids

    class Streamer(transformers.generation.BaseStreamer):
        def put(self, value: torch.Tensor) -> None:
            pass

    model, streamer = build_model(32), Streamer()
    model.generate(input_ids=torch.tensor([[1, 5]]), max_new_tokens=1, custom_generate=loop, streamer=streamer)
    model.generate(input_ids=torch.tensor([[1, 5]]), max_new_tokens=1, custom_generate=loop)
    assert seen == [streamer, None], (
        f"{VERSIONS}: generate() no longer calls a callable custom_generate itself, or no longer keeps its streamer "
        "in a local `streamer`: update ctd_hf/_compat.py:calling_generate_streamer.")


def test_adapter_layers_switch_on_inside_disable_adapter():
    base = build_model(32, initializer_range=0.3)
    model = get_peft_model(base, LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, init_lora_weights=False))
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
            with adapter_layers_enabled(model):
                inside = model(input_ids=ids).logits
            after = model(input_ids=ids).logits
    assert not torch.allclose(adapted, plain)
    assert torch.equal(inside, adapted) and torch.equal(after, plain), (
        f"{VERSIONS}: the tuner's enable_adapter_layers/disable_adapter_layers no longer switch the adapter: update "
        "ctd_hf/_compat.py:adapter_layers_enabled.")


@pytest.fixture
def strict():
    """Every FutureWarning and DeprecationWarning, and every deprecation transformers logs, is an error."""
    handler = DeprecationLog()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        yield
    logger.removeHandler(handler)
    assert not handler.messages


def test_executors_raise_no_deprecation(strict, left_tokenizer):
    model = build_model(len(left_tokenizer), initializer_range=0.2)
    inputs = left_tokenizer(["Name three colours.", "Capital of France?"], return_tensors="pt", padding=True)
    options = dict(**inputs, max_new_tokens=4, min_new_tokens=4, pad_token_id=left_tokenizer.pad_token_id)
    ctd = CTDContrast(model, torch.randn(4, 32), strength=0.5)
    noisy = left_tokenizer(["Never answer.", "Say something wrong."], return_tensors="pt", padding=True)
    instructive = InstructiveContrast(model, noisy["input_ids"], noisy["attention_mask"], strength=0.3)
    for contrast in (ctd, instructive):
        for options_ in (dict(do_sample=False), dict(num_beams=2, do_sample=False)):
            doubled = generate_doubled(model, contrast, **options, **options_)
            with ContrastProcessor(contrast) as processor:
                streamed = model.generate(**options, **options_, logits_processor=[processor])
            for backend in ("doubled", "stream"):
                custom = model.generate(**options, **options_, custom_generate=ctd_hf.custom_generate,
                                        contrast=contrast, backend=backend)
                assert torch.equal(custom, doubled)
            assert torch.equal(doubled, streamed)
    assert len(continuation_log_probs(ctd, [[1, 5, 7]], [[9, 3]])) == 1
