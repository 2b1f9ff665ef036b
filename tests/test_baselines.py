"""Instructive Decoding and Contrastive Decoding equal their brute-force definitions; noise types; bad inputs."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

import ctd_hf
from ctd_hf import ContrastiveDecodingProcessor, InstructiveDecodingProcessor, noisy_instruction
from ctd_hf.formula import contrastive_decoding_scores
from ctd_hf.decoding.noise import OPPOSITE, word_list

from conftest import build_model

PROMPTS = ["Give three tips for staying healthy.", "Hi", "What is the capital of France?"]
NOISY = ["Hi there, say something.", OPPOSITE + "What is it?", "no"]  # lengths differ from the prompts'


def expert_and_amateur(vocab_size: int, amateur_rows: int | None = None):
    expert = build_model(vocab_size, initializer_range=0.3, tie_word_embeddings=False)
    amateur = build_model(amateur_rows or vocab_size, seed=5, initializer_range=0.3, num_hidden_layers=1)
    return expert, amateur


def greedy(model, inputs, processor=None, **kwargs):
    with processor or nullcontext():
        return model.generate(**inputs, logits_processor=[processor] if processor else None, do_sample=False,
                              max_new_tokens=8, pad_token_id=0, **kwargs)


def unpadded(row: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return row[int((mask == 0).sum()):]


def last_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids[None], use_cache=False).logits[0, -1]


def test_instructive_decoding_equals_brute_force(left_tokenizer):
    model, _ = expert_and_amateur(len(left_tokenizer))
    inputs = left_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    noisy = left_tokenizer(NOISY, return_tensors="pt", padding=True)
    processor = InstructiveDecodingProcessor(model, noisy["input_ids"], noisy["attention_mask"], strength=0.5)
    output = greedy(model, inputs, processor)
    assert not torch.equal(output, greedy(model, inputs))
    length = inputs["input_ids"].shape[1]
    for row, mask, noisy_row, noisy_mask in zip(output, inputs["attention_mask"], noisy["input_ids"],
                                                noisy["attention_mask"]):
        real, noisy_prompt = unpadded(row, mask), unpadded(noisy_row, noisy_mask)
        start = length - int((mask == 0).sum())
        for t in range(start, len(real)):
            if real[t - 1] == model.generation_config.eos_token_id:
                break  # generate() pads finished rows
            z = last_logits(model, real[:t])
            z_tilde = last_logits(model, torch.cat([noisy_prompt, real[start:t]]))
            assert real[t] == (z - 0.5 * z_tilde).argmax()

    doubled = ctd_hf.generate_doubled(model, processor, **inputs, do_sample=False, max_new_tokens=8, pad_token_id=0)
    assert torch.equal(doubled, output)


def test_contrastive_decoding_equals_brute_force(left_tokenizer):
    expert, amateur = expert_and_amateur(len(left_tokenizer))
    inputs = left_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    processor = ContrastiveDecodingProcessor(expert, amateur, plausibility=0.1, strength=1.0, amateur_temperature=0.7)
    output = greedy(expert, inputs, processor)
    assert not torch.equal(output, greedy(expert, inputs))
    length = inputs["input_ids"].shape[1]
    for row, mask in zip(output, inputs["attention_mask"]):
        real = unpadded(row, mask)
        for t in range(length - int((mask == 0).sum()), len(real)):
            if real[t - 1] == expert.generation_config.eos_token_id:
                break  # generate() pads finished rows
            expert_lp = F.log_softmax(last_logits(expert, real[:t]), dim=-1)
            amateur_lp = F.log_softmax(last_logits(amateur, real[:t]) / 0.7, dim=-1)
            plausible = expert_lp >= expert_lp.max() + torch.log(torch.tensor(0.1))
            expected = torch.where(plausible, expert_lp - amateur_lp, torch.tensor(float("-inf"))).argmax()
            assert real[t] == expected
    with pytest.raises(ValueError, match="two models|another model"):
        ctd_hf.generate_doubled(expert, processor, **inputs, max_new_tokens=2)


def test_zero_strength_is_plain_decoding(left_tokenizer):
    expert, amateur = expert_and_amateur(len(left_tokenizer))
    inputs = left_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    none_noise = left_tokenizer([noisy_instruction(p, "", "none") or "x" for p in PROMPTS], return_tensors="pt",
                                padding=True)
    plain = greedy(expert, inputs)
    assert torch.equal(greedy(expert, inputs, InstructiveDecodingProcessor(expert, none_noise["input_ids"],
                                                                           none_noise["attention_mask"], 0.0)), plain)
    # beta = 0: the expert restricted to its plausible set, whose argmax is the expert's argmax.
    assert torch.equal(greedy(expert, inputs, ContrastiveDecodingProcessor(expert, amateur, strength=0.0)), plain)
    expert_lp = torch.log_softmax(torch.tensor([[2.0, 1.0, -3.0]]), dim=-1)
    scores = contrastive_decoding_scores(expert_lp, torch.zeros(1, 3), plausibility=0.1, strength=0.0)
    assert torch.equal(scores[0, :2], expert_lp[0, :2]) and scores[0, 2] == float("-inf")


def test_padded_amateur_vocabulary_is_handled_and_real_mismatch_refused(left_tokenizer):
    expert, amateur = expert_and_amateur(len(left_tokenizer), amateur_rows=len(left_tokenizer) + 8)
    inputs = left_tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)
    processor = ContrastiveDecodingProcessor(expert, amateur, tokenizer=left_tokenizer)
    assert greedy(expert, inputs, processor).shape[1] == inputs["input_ids"].shape[1] + 8
    with pytest.raises(ValueError, match="pass `tokenizer=`"):
        ContrastiveDecodingProcessor(expert, amateur)
    smaller, _ = expert_and_amateur(len(left_tokenizer) - 20)
    with pytest.raises(ValueError, match="so it is not"):
        ContrastiveDecodingProcessor(expert, smaller, tokenizer=left_tokenizer)
    changed = type(left_tokenizer).from_pretrained(left_tokenizer.name_or_path)
    changed.add_tokens(["<extra_token>"])
    with pytest.raises(ValueError, match="tokenizers differ"):
        ContrastiveDecodingProcessor(expert, expert, tokenizer=left_tokenizer, amateur_tokenizer=changed)
    for kwargs, message in (({"plausibility": 0.0}, "plausibility"), ({"strength": -1.0}, "strength"),
                            ({"amateur_temperature": 0}, "temp")):
        with pytest.raises(ValueError, match=message):
            ContrastiveDecodingProcessor(expert, expert, **kwargs)


def test_noise_types():
    definition = "Given a sentence, classify it as positive or negative in sentiment."
    task_input = "Now complete the following example -\nInput: I loved it.\nOutput: "
    assert noisy_instruction(definition, task_input, "opposite") == OPPOSITE + task_input
    assert noisy_instruction(definition, task_input, "none") == task_input
    truncated = noisy_instruction(definition, task_input, "trunc_shuf", rate=0.6, seed=1, label="Definition: ")
    kept = truncated.split(".\n\n")[0].removeprefix("Definition: ").split()
    assert len(kept) == int(0.6 * len(definition.split())) and set(kept) <= set(definition.split())
    assert truncated.endswith(task_input)
    assert truncated == noisy_instruction(definition, task_input, "trunc_shuf", rate=0.6, seed=1, label="Definition: ")
    random_words = noisy_instruction(definition, task_input, "random_words", num_words=7, seed=2)
    drawn = random_words.split(".\n\n")[0].split()
    assert len(drawn) == 7 and set(drawn) <= set(word_list()) and len(word_list()) == 5000
    with pytest.raises(ValueError, match="Unknown noise"):
        noisy_instruction(definition, task_input, "reverse")


def test_noisy_prompt_count_must_match_the_batch(left_tokenizer):
    model, _ = expert_and_amateur(len(left_tokenizer))
    inputs = left_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    noisy = left_tokenizer(NOISY[:2], return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="one noisy prompt per prompt"):
        greedy(model, inputs, InstructiveDecodingProcessor(model, noisy["input_ids"], noisy["attention_mask"]))
    left_tokenizer.padding_side = "right"
    right = left_tokenizer(NOISY, return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="right-padded"):
        InstructiveDecodingProcessor(model, right["input_ids"], right["attention_mask"])
