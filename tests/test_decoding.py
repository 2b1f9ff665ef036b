"""CTD decoding equals its definition: brute force, beta = 0, batching, doubled batch, beam scores, bad inputs."""

from __future__ import annotations

import io
import json
import math
from contextlib import nullcontext, redirect_stdout

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM, TextStreamer

import ctd_hf
from ctd_hf import AdapterMismatchError, ContrastProcessor, CTDContrast, CTDProcessor

from conftest import SFT_SAMPLE, build_model

PROMPTS = ["Give three tips for staying healthy.", "Hi", "What is the capital of France?"]
BETA = 0.5


def make_model(kind: str, vocab_size: int):
    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                            initializer_range=0.3)
        return GPT2LMHeadModel(config).eval()
    if kind == "qwen2":
        config = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                             initializer_range=0.3)
        return Qwen2ForCausalLM(config).eval()
    return build_model(vocab_size, initializer_range=0.3, tie_word_embeddings=kind == "llama-tied")


def make_prefix(model, length: int = 5) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(length, model.get_input_embeddings().weight.shape[1]) * 0.5


def greedy(model, inputs, processor=None, **kwargs):
    """Greedy generate() with the stream processor (inside its `with` block) or plain."""
    with processor or nullcontext():
        return model.generate(**inputs, logits_processor=[processor] if processor else None, do_sample=False,
                              max_new_tokens=8, pad_token_id=0, **kwargs)


def brute_force_scores(model, prefix, ids: torch.Tensor, beta: float) -> torch.Tensor:
    """log_softmax(z - beta z~) for the next token after unpadded ``ids``, by full forwards without cache."""
    with torch.no_grad():
        z = model(input_ids=ids[None], use_cache=False).logits[0, -1]
        embeds = torch.cat([prefix[None], model.get_input_embeddings()(ids[None])], dim=1)
        z_tilde = model(inputs_embeds=embeds, use_cache=False).logits[0, -1]
    return F.log_softmax(z - beta * z_tilde, dim=-1)


@pytest.mark.parametrize("kind", ["llama-tied", "llama-untied", "gpt2", "qwen2"])
def test_greedy_equals_brute_force_argmax(left_tokenizer, kind):
    model = make_model(kind, len(left_tokenizer))
    prefix = make_prefix(model)
    inputs = left_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    output = greedy(model, inputs, CTDProcessor(model, prefix, strength=BETA))
    assert not torch.equal(output, greedy(model, inputs)), "the contrast should change some tokens"
    prompt_length = inputs["input_ids"].shape[1]
    for row, mask in zip(output, inputs["attention_mask"]):
        real = row[int((mask == 0).sum()):]
        for t in range(prompt_length - int((mask == 0).sum()), len(real)):
            assert real[t] == brute_force_scores(model, prefix, real[:t], BETA).argmax()


def test_beta_zero_is_plain_generate(left_tokenizer, tiny_model):
    model = make_model("llama-tied", len(left_tokenizer))
    inputs = left_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    processor = CTDProcessor(model, make_prefix(model), strength=0.0)
    assert torch.equal(greedy(model, inputs, processor), greedy(model, inputs))
    sampling = dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.95, max_new_tokens=12, pad_token_id=0)
    torch.manual_seed(7)
    plain = model.generate(**inputs, **sampling)
    torch.manual_seed(7)
    with processor:
        contrasted = model.generate(**inputs, logits_processor=[processor], **sampling)
    assert torch.equal(plain, contrasted)


def test_batched_left_padded_equals_one_prompt_at_a_time(left_tokenizer):
    model = make_model("llama-untied", len(left_tokenizer))
    prefix = make_prefix(model)
    batched = greedy(model, left_tokenizer(PROMPTS, return_tensors="pt", padding=True),
                     CTDProcessor(model, prefix, strength=BETA))
    for row, prompt in zip(batched, PROMPTS):
        alone = greedy(model, left_tokenizer([prompt], return_tensors="pt"), CTDProcessor(model, prefix, strength=BETA))
        assert torch.equal(row[-8:], alone[0, -8:])


# generate() drops an all-ones attention mask (one prompt, or prompts of one length): the doubled batch rebuilds it.
@pytest.mark.parametrize("prompts", [PROMPTS, PROMPTS[:1], [PROMPTS[0]] * 2], ids=["padded", "one", "unpadded"])
def test_doubled_batch_equals_stream(left_tokenizer, prompts):
    model = make_model("llama-untied", len(left_tokenizer))
    prefix = make_prefix(model)
    inputs = left_tokenizer(prompts, return_tensors="pt", padding=True)
    stream = greedy(model, inputs, CTDProcessor(model, prefix, strength=BETA))
    doubled = ctd_hf.generate_doubled(model, CTDProcessor(model, prefix, strength=BETA), **inputs, do_sample=False,
                                      max_new_tokens=8, pad_token_id=0)
    assert torch.equal(stream, doubled)
    assert not model._forward_hooks and not model._forward_pre_hooks or len(model._forward_pre_hooks) <= 1


@pytest.mark.parametrize("path", ["stream", "doubled"])
def test_beam_score_is_the_sum_of_brute_force_step_scores(left_tokenizer, path):
    model = make_model("llama-untied", len(left_tokenizer))
    prefix = make_prefix(model)
    inputs = left_tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)
    kwargs = dict(num_beams=3, length_penalty=0.0, max_new_tokens=6, do_sample=False, pad_token_id=0,
                  return_dict_in_generate=True, output_scores=True)
    if path == "stream":
        with CTDProcessor(model, prefix, strength=BETA) as processor:
            out = model.generate(**inputs, logits_processor=[processor], **kwargs)
    else:
        out = ctd_hf.generate_doubled(model, CTDProcessor(model, prefix, strength=BETA), **inputs, **kwargs)
    prompt_length = inputs["input_ids"].shape[1]
    for row, (sequence, mask) in enumerate(zip(out.sequences, inputs["attention_mask"])):
        real = sequence[int((mask == 0).sum()):]
        start = prompt_length - int((mask == 0).sum())
        total = sum(brute_force_scores(model, prefix, real[:t], BETA)[real[t]] for t in range(start, len(real)))
        torch.testing.assert_close(out.sequences_scores[row], total, rtol=1e-4, atol=1e-4)


def test_sampling_with_several_return_sequences_follows_each_row(left_tokenizer):
    model = make_model("llama-untied", len(left_tokenizer))
    prefix = make_prefix(model)
    inputs = left_tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)
    # top_k=1 sampling is greedy on the contrasted scores, so every copy must equal the greedy CTD output.
    with CTDProcessor(model, prefix, strength=BETA) as processor:
        sampled = model.generate(**inputs, logits_processor=[processor], do_sample=True, top_k=1,
                                 num_return_sequences=3, max_new_tokens=8, pad_token_id=0)
    expected = greedy(model, inputs, CTDProcessor(model, prefix, strength=BETA)).repeat_interleave(3, dim=0)
    assert torch.equal(sampled, expected)


def test_eos_streamer_and_processor_reuse(left_tokenizer):
    model = make_model("llama-untied", len(left_tokenizer))
    prefix = make_prefix(model)
    processor = CTDProcessor(model, prefix, strength=BETA)
    inputs = left_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    full = greedy(model, inputs, processor)
    eos = int(full[0, -6])  # row 0 stops early on this token; the others go on
    stopped = greedy(model, inputs, processor, eos_token_id=eos)
    assert stopped.shape[1] <= full.shape[1] and int(stopped[0, -6]) == eos
    for row in range(len(PROMPTS)):
        generated = full[row, inputs["input_ids"].shape[1]:].tolist()
        cut = generated[: generated.index(eos) + 1] if eos in generated else generated
        assert stopped[row, inputs["input_ids"].shape[1]:].tolist()[: len(cut)] == cut

    single = left_tokenizer([PROMPTS[2]], return_tensors="pt")
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        streamed = greedy(model, single, processor, streamer=TextStreamer(left_tokenizer, skip_prompt=True))
    assert buffer.getvalue().strip() == left_tokenizer.decode(streamed[0, single["input_ids"].shape[1]:]).strip()
    assert torch.equal(streamed, greedy(model, single, CTDProcessor(model, prefix, strength=BETA)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_follows_the_model_dtype(left_tokenizer, dtype):
    model = make_model("llama-untied", len(left_tokenizer)).to(dtype)
    inputs = left_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    processor = CTDProcessor(model, make_prefix(model), strength=0.0)
    assert processor.contrast.prefix.dtype == dtype
    assert torch.equal(greedy(model, inputs, processor), greedy(model, inputs))
    doubled = ctd_hf.generate_doubled(model, CTDProcessor(model, make_prefix(model), strength=BETA), **inputs,
                                      max_new_tokens=4, pad_token_id=0)
    assert doubled.shape[1] == inputs["input_ids"].shape[1] + 4


def test_bad_inputs_are_refused(left_tokenizer, tmp_path):
    model = make_model("llama-untied", len(left_tokenizer))
    prefix = make_prefix(model)
    with pytest.raises(AdapterMismatchError, match="hidden size"):
        CTDProcessor(model, torch.randn(5, 48))
    for beta in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="strength"):
            CTDProcessor(model, prefix, strength=beta)
    left_tokenizer.padding_side = "right"
    right = left_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="right-padded"):
        greedy(model, right, CTDProcessor(model, prefix, strength=BETA))
    with pytest.raises(ValueError, match="right-padded"):
        ctd_hf.generate_doubled(model, CTDProcessor(model, prefix), **right, max_new_tokens=2, pad_token_id=0)
    left_tokenizer.padding_side = "left"
    inputs = left_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    single = left_tokenizer(["the cat sat on the mat, the cat sat on the"], return_tensors="pt")  # lookup finds n-grams
    with pytest.raises(ValueError, match="one token at a time"):
        greedy(model, single, CTDProcessor(model, prefix), prompt_lookup_num_tokens=2)
    with pytest.raises(ValueError, match="inputs_embeds"):
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        with CTDProcessor(model, prefix) as processor:
            model.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], max_new_tokens=2,
                           logits_processor=[processor], pad_token_id=0)
    with pytest.raises(ValueError, match="does not support `prompt_lookup_num_tokens`"):
        ctd_hf.generate_doubled(model, CTDProcessor(model, prefix), **inputs, prompt_lookup_num_tokens=2)


def test_prefix_for_another_model_is_refused(tiny_model_dir, tmp_path, left_tokenizer):
    from transformers import AutoModelForCausalLM

    from ctd_hf import add_soft_prefix
    from ctd_hf.adapter import write_card

    prefixed = add_soft_prefix(AutoModelForCausalLM.from_pretrained(tiny_model_dir), num_virtual_tokens=4)
    prefixed.save_pretrained(tmp_path / "prefix")
    write_card(tmp_path / "prefix", prefixed)
    other = build_model(len(left_tokenizer) + 8)
    with pytest.raises(AdapterMismatchError, match="vocabulary"):
        CTDProcessor(other, tmp_path / "prefix")
    # A matching model accepts the folder and decodes with it.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    inputs = left_tokenizer(PROMPTS[:1], return_tensors="pt")
    assert greedy(model, inputs, CTDProcessor(model, tmp_path / "prefix")).shape[1] == inputs["input_ids"].shape[1] + 8


def test_bf16_doubled_and_stream_differ_only_at_near_ties(left_tokenizer):
    """In bf16 the two executors round differently (one 2B-row batch against B rows plus a stream), so greedy tokens
    may part where the top two contrasted scores are within bf16 rounding; that is all that may differ."""
    prompts = [record["instruction"] for record in json.loads(SFT_SAMPLE.read_text())[:16]]
    inputs = left_tokenizer(prompts, return_tensors="pt", padding=True)
    options = dict(max_new_tokens=16, do_sample=False, pad_token_id=0, output_scores=True,
                   return_dict_in_generate=True)
    length, rows, parted = inputs["input_ids"].shape[1], 0, 0
    for seed in range(4):
        model = build_model(len(left_tokenizer), seed=seed, initializer_range=0.3,
                            tie_word_embeddings=False).to(torch.bfloat16)
        torch.manual_seed(seed)
        contrast = CTDContrast(model, torch.randn(4, 32) * 0.5, strength=0.5)
        doubled = ctd_hf.generate_doubled(model, contrast, **inputs, **options)
        with ContrastProcessor(contrast) as processor:
            stream = model.generate(**inputs, logits_processor=[processor], **options)
        for row in range(len(prompts)):
            rows += 1
            a, b = doubled.sequences[row, length:], stream.sequences[row, length:]
            if torch.equal(a, b):
                continue
            parted += 1
            step = int((a != b).nonzero()[0])
            margins = [float(out.scores[step][row].float().topk(2).values.diff().abs()) for out in (doubled, stream)]
            top = float(stream.scores[step][row].abs().max().clamp(min=1))
            resolution = 2.0 ** (math.floor(math.log2(top)) - 7)  # bf16 keeps 8 significant bits
            assert min(margins) <= 2 * resolution, (row, step, margins, resolution)
    assert parted < rows / 2  # most rows agree; the rest part only at near-ties


def test_lora_variant_decodes_by_its_definition(left_tokenizer):
    """LoRAContrast: z from the model with the adapter off, z~ with it on, on the same tokens (brute force)."""
    from peft import LoraConfig, TaskType, get_peft_model

    from ctd_hf import LoRAContrast

    base = make_model("llama-untied", len(left_tokenizer))
    lora = get_peft_model(base, LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, init_lora_weights=False))
    inputs = left_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    contrast = LoRAContrast(lora, strength=BETA)
    with ContrastProcessor(contrast) as processor:
        output = lora.generate(**inputs, logits_processor=[processor], do_sample=False, max_new_tokens=6,
                               pad_token_id=0)
        assert torch.equal(output, base.generate(**inputs, logits_processor=[processor], do_sample=False,
                                                 max_new_tokens=6, pad_token_id=0))
    length = inputs["input_ids"].shape[1]
    for row, mask in zip(output, inputs["attention_mask"]):
        real = row[int((mask == 0).sum()):]
        for t in range(length - int((mask == 0).sum()), len(real)):
            with torch.no_grad():
                with lora.disable_adapter():
                    z = base(input_ids=real[None, :t]).logits[0, -1]
                z_tilde = base(input_ids=real[None, :t]).logits[0, -1]
            assert real[t] == (z - BETA * z_tilde).argmax()
    with torch.no_grad():  # the adapter is on again after the with block
        on = lora(**inputs).logits
        with lora.disable_adapter():
            off = lora(**inputs).logits
    assert not torch.allclose(on, off)
    with pytest.raises(ValueError, match="two adapter states"):
        ctd_hf.generate_doubled(lora, contrast, **inputs, max_new_tokens=2)


def test_executors_declare_they_cannot_serve_continuous_batching():
    """Both keep per-call state (the second view's cache, the doubled rows): transformers' continuous batching, which
    mixes requests in one batch, must refuse them, as it refuses its own stateful processors."""
    from ctd_hf.decoding.doubled import DoubledBatch

    assert ContrastProcessor.supports_continuous_batching is False
    assert DoubledBatch.supports_continuous_batching is False


def test_a_method_builds_its_fixed_contrast_once_per_model(left_tokenizer):
    """CTD's and CD's contrasts hold no per-batch state: one per model, not one per batch (CD's construction compares
    two vocabularies); another model gets its own, and ID's (per-batch noisy prompts) is new every time."""
    model, other = build_model(len(left_tokenizer)), build_model(len(left_tokenizer), seed=1)
    hidden = model.config.hidden_size
    ctd = ctd_hf.CTDMethod(prefix=torch.randn(3, hidden))
    bound = ctd.bind(model, left_tokenizer)
    first = bound.contrast()
    assert bound.contrast() is first
    assert ctd.bind(other, left_tokenizer).contrast() is not first
    cd = ctd_hf.CDMethod(amateur=other).bind(model, left_tokenizer)
    assert cd.contrast() is cd.contrast()
    noisy = (torch.tensor([[1, 5]]), torch.ones(1, 2, dtype=torch.long))
    instructive = ctd_hf.IDMethod().bind(model, left_tokenizer)
    assert instructive.contrast(noisy) is not instructive.contrast(noisy)
