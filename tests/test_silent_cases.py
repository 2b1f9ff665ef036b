"""Inputs that used to give a wrong result without a word (ctd_hf 0.1): each test fails on that version."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ctd_hf import (ContrastProcessor, CTDConfig, CTDContrast, CTDTrainer, DecodingMethod, EvalSettings,
                    InstructiveContrast, add_soft_prefix, generate_doubled, load_sft_data, run_evaluation,
                    tokenize_sft)
from ctd_hf.models import ensure_pad_token
from ctd_hf.training.prefix import prefix_embeddings

from conftest import DATA, SFT_SAMPLE, build_model, cli_error

PROMPTS = ["Give three tips for staying healthy.", "Hi", "What is the capital of France?", "Name a colour."]


@pytest.fixture
def tok(tokenizer):
    return ensure_pad_token(tokenizer)


@pytest.fixture
def model(tok):
    return build_model(len(tok), initializer_range=0.3, tie_word_embeddings=False)


def test_peft_model_decodes_ctd_not_the_prefixed_model(model, tok):
    """0.1: generate(peft_model, CTDProcessor(peft_model, ...)) returned plain decoding of the prefixed model."""
    peft = add_soft_prefix(model, num_virtual_tokens=3)
    with torch.no_grad():
        peft.prompt_encoder["default"].embedding.weight.normal_(0, 0.5)
    inputs = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    options = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    from_peft = generate_doubled(peft, CTDContrast(peft, peft, beta=0.5), **inputs, **options)
    base = peft.get_base_model()
    expected = generate_doubled(base, CTDContrast(base, prefix_embeddings(peft), beta=0.5), **inputs, **options)
    assert torch.equal(from_peft, expected)
    assert not torch.equal(from_peft, peft.generate(**inputs, **options))  # not the prefixed model's own decoding


def test_doubled_executor_refuses_a_generate_that_bypasses_its_hooks(model, tok, monkeypatch):
    """0.1: when the hooked module never ran, the contrast was silently skipped."""
    other = build_model(model.config.vocab_size, seed=7)
    monkeypatch.setattr(model, "generate", other.generate)
    inputs = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    with pytest.raises(RuntimeError, match="saw no forward"):
        generate_doubled(model, CTDContrast(model, torch.randn(3, 32)), **inputs, max_new_tokens=2, pad_token_id=0)


def test_noisy_prompts_that_divide_the_batch_are_refused(model, tok):
    """0.1: 2 noisy prompts for 4 prompts were taken as 2 copies each, pairing prompt 1 with noisy prompt 0."""
    inputs = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    noisy = tok(["noise one", "noise two"], return_tensors="pt", padding=True, padding_side="left")
    contrast = InstructiveContrast(model, noisy["input_ids"], noisy["attention_mask"])
    with pytest.raises(ValueError, match="one noisy prompt per prompt"):
        generate_doubled(model, contrast, **inputs, max_new_tokens=2, pad_token_id=0)
    with pytest.raises(ValueError, match="one noisy prompt per prompt"), ContrastProcessor(contrast) as processor:
        model.generate(**inputs, logits_processor=[processor], max_new_tokens=2, pad_token_id=0)
    # Copies made by num_return_sequences still pair: 2 prompts x 2 copies with 2 noisy prompts.
    two = tok(PROMPTS[:2], return_tensors="pt", padding=True, padding_side="left")
    out = generate_doubled(model, contrast, **two, max_new_tokens=2, pad_token_id=0, do_sample=True,
                           num_return_sequences=2)
    assert out.shape[0] == 4


def test_padded_noisy_prompts_need_their_mask(model, tok):
    """0.1: without a mask the noisy rows attended to their padding."""
    noisy = tok(["no", "noise is here"], return_tensors="pt", padding=True, padding_side="left")
    with pytest.raises(ValueError, match="noisy_attention_mask"):
        InstructiveContrast(model, noisy["input_ids"])


def _eval_settings() -> EvalSettings:
    return EvalSettings(options={"superni": {"dir": str(DATA / "supernatinst"), "tasks": "sample/train_tasks.txt",
                                             "max_instances": 1}},
                        max_new_tokens={"superni": 3}, batch_size=4, max_source_tokens=3000)


def test_eval_resumed_with_another_model_is_refused(tok, tmp_path):
    """0.1: a resumed `eval` with another --model mixed both models' predictions."""
    long = dict(max_position_embeddings=4096)
    first, second = build_model(len(tok), **long), build_model(len(tok), seed=1, **long)
    run_evaluation(first, tok, {"od": DecodingMethod("od")}, _eval_settings(), tmp_path, "tiny-llama")
    with pytest.raises(ValueError, match="another model"):
        run_evaluation(second, tok, {"od": DecodingMethod("od")}, _eval_settings(), tmp_path, "tiny-llama")
    with pytest.raises(ValueError, match="another model"):
        run_evaluation(first.to(torch.bfloat16), tok, {"od": DecodingMethod("od")}, _eval_settings(), tmp_path,
                       "tiny-llama")


def test_eval_settings_are_checked_before_anything_is_written(tok, tmp_path):
    """0.1: a bad strength was refused only after `od` had written its predictions and the settings file, which
    then refused the corrected rerun."""
    model = build_model(len(tok), max_position_embeddings=4096)
    prefix_dir = tmp_path / "prefix"
    prefixed = add_soft_prefix(build_model(len(tok) + 8), num_virtual_tokens=2)  # for another vocabulary
    prefixed.save_pretrained(prefix_dir)
    from ctd_hf.training.prefix import write_card

    write_card(prefix_dir, prefixed)
    methods = {"od": DecodingMethod("od"), "ctd": DecodingMethod("ctd", prefix=str(prefix_dir))}
    with pytest.raises(ValueError, match="vocabulary"):
        run_evaluation(model, tok, methods, _eval_settings(), tmp_path / "run", "tiny-llama")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="beta"):
        DecodingMethod("ctd", prefix=str(prefix_dir), strength=-1)


def test_eval_cli_validates_settings_before_loading_or_writing(capsys, tmp_path):
    """0.1: `--benchmarks ""` wrote an empty report with exit status 0."""
    from ctd_hf.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "--methods", "od", "--benchmarks", "", "--output-dir", str(tmp_path / "run")])
    assert "--benchmarks" in capsys.readouterr().err and not (tmp_path / "run").exists()
    assert "Unknown benchmark" in cli_error(capsys, ["eval", "--methods", "od", "--benchmarks", "superni,sqad",
                                                     "--output-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_nan_prefix_and_overflowing_strength_are_refused(model, tok):
    """0.1: both decoded token 0 at every step."""
    inputs = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    prefix = torch.randn(3, 32)
    prefix[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        CTDContrast(model, prefix)
    with pytest.raises(ValueError, match="overflows"):
        generate_doubled(model, CTDContrast(model, torch.randn(3, 32), beta=3e38), **inputs, max_new_tokens=2,
                         pad_token_id=0)


def test_training_that_would_change_nothing_says_so(model, tok, tmp_path):
    """0.1: alpha=0 and all-masked labels trained nothing without a word."""
    data = tokenize_sft(load_sft_data(SFT_SAMPLE).select(range(4)), tok, max_length=64)
    args = dict(output_dir=str(tmp_path), report_to="none", max_steps=1)
    prefixed = add_soft_prefix(model, 2)
    with pytest.warns(UserWarning, match="no gradient"):
        CTDTrainer(model=prefixed, args=CTDConfig(alpha=0.0, **args), train_dataset=data, processing_class=tok)
    masked = data.map(lambda example: {"labels": [-100] * len(example["labels"])})
    with pytest.raises(ValueError, match="Every label"):
        CTDTrainer(model=add_soft_prefix(build_model(len(tok)), 2), args=CTDConfig(**args), train_dataset=masked,
                   processing_class=tok)


def test_max_length_below_two_is_refused(tok):
    """0.1: max_length=-1 silently cut every example's last token (Python's [:-1])."""
    with pytest.raises(ValueError, match="max_length"):
        tokenize_sft(load_sft_data(SFT_SAMPLE).select(range(2)), tok, max_length=-1)


def test_output_logits_are_the_original_logits_on_both_executors(model, tok):
    """0.1: output_logits returned contrasted scores on the doubled path and raw logits on the stream."""
    inputs = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    options = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, output_logits=True, output_scores=True,
                   return_dict_in_generate=True)
    contrast = CTDContrast(model, torch.randn(3, 32) * 0.5, beta=0.5)
    doubled = generate_doubled(model, contrast, **inputs, **options)
    with ContrastProcessor(contrast) as processor:
        stream = model.generate(**inputs, logits_processor=[processor], **options)
    assert torch.equal(doubled.sequences, stream.sequences)
    length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        full = model(input_ids=doubled.sequences, attention_mask=torch.cat(
            [inputs["attention_mask"], torch.ones(len(PROMPTS), 4, dtype=torch.long)], dim=1)).logits
    for step in range(4):
        original = full[:, length + step - 1]
        for output in (doubled, stream):
            torch.testing.assert_close(output.logits[step], original, rtol=1e-4, atol=1e-4)
            assert torch.allclose(F.log_softmax(output.scores[step], dim=-1), output.scores[step], atol=1e-5)
        torch.testing.assert_close(doubled.scores[step], stream.scores[step], rtol=1e-4, atol=1e-4)


def test_prompts_file_json_list_is_several_prompts(capsys, tiny_model_dir, tmp_path):
    """0.1: `generate --prompts-file list.json` used the whole file as one prompt."""
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"instruction": "Name a colour."}, {"instruction": "Say hi."}]))
    from ctd_hf.cli import main

    capsys.readouterr()
    main(["generate", "--model", str(tiny_model_dir), "--prompts-file", str(path), "--max-new-tokens", "2"])
    assert [json.loads(line)["prompt"] for line in capsys.readouterr().out.splitlines()] == ["Name a colour.",
                                                                                           "Say hi."]
