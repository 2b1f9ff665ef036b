"""Inputs that used to give a wrong result without a word (ctd_hf 0.1): each test fails on that version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ctd_hf import (ContrastProcessor, CTDConfig, CTDContrast, CTDMethod, CTDTrainer, EvalSettings,
                    InstructiveContrast, ODMethod, add_soft_prefix, generate_doubled, load_sft_data, run_evaluation,
                    tokenize_sft)
from ctd_hf.models import ensure_pad_token
from ctd_hf.adapter import prefix_embeddings

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
    from_peft = generate_doubled(peft, CTDContrast(peft, peft, strength=0.5), **inputs, **options)
    base = peft.get_base_model()
    expected = generate_doubled(base, CTDContrast(base, prefix_embeddings(peft), strength=0.5), **inputs, **options)
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
    run_evaluation(first, tok, {"od": ODMethod()}, _eval_settings(), tmp_path, "tiny-llama")
    with pytest.raises(ValueError, match="another model"):
        run_evaluation(second, tok, {"od": ODMethod()}, _eval_settings(), tmp_path, "tiny-llama")
    with pytest.raises(ValueError, match="another model"):
        run_evaluation(first.to(torch.bfloat16), tok, {"od": ODMethod()}, _eval_settings(), tmp_path,
                       "tiny-llama")


def test_eval_settings_are_checked_before_anything_is_written(tok, tmp_path):
    """0.1: a bad strength was refused only after `od` had written its predictions and the settings file, which
    then refused the corrected rerun."""
    model = build_model(len(tok), max_position_embeddings=4096)
    prefix_dir = tmp_path / "prefix"
    prefixed = add_soft_prefix(build_model(len(tok) + 8), num_virtual_tokens=2)  # for another vocabulary
    prefixed.save_pretrained(prefix_dir)
    from ctd_hf.adapter import write_card

    write_card(prefix_dir, prefixed)
    methods = {"od": ODMethod(), "ctd": CTDMethod(prefix=str(prefix_dir))}
    with pytest.raises(ValueError, match="vocabulary"):
        run_evaluation(model, tok, methods, _eval_settings(), tmp_path / "run", "tiny-llama")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="`strength` must be a finite number >= 0"):
        CTDMethod(prefix=str(prefix_dir), strength=-1)


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
        generate_doubled(model, CTDContrast(model, torch.randn(3, 32), strength=3e38), **inputs, max_new_tokens=2,
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
    contrast = CTDContrast(model, torch.randn(3, 32) * 0.5, strength=0.5)
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


# Round 2: inputs that gave a wrong result without a word in ctd_hf 0.2 (each test fails on that version).


def test_sweep_refuses_official_test_tasks_as_its_development_set():
    """0.2: --dev-tasks sample/test_tasks.txt was accepted, and the leaderboard still said TRAIN tasks."""
    from ctd_hf.study.sweep import SweepSettings

    with pytest.raises(ValueError, match="official SuperNI test task.*train tasks"):
        SweepSettings(dev_tasks="sample/test_tasks.txt")
    assert SweepSettings().dev_tasks == "sample/dev_tasks.txt"


def test_superni_dataset_targets_as_lists_are_several_references(tmp_path):
    """0.2: a `targets` column of lists scored each list's repr (Rouge-L 41.27 for the references themselves)."""
    import datasets

    from ctd_hf.evaluation.tasks.superni import SuperNIOptions, load_superni, task_names

    names = task_names(DATA / "supernatinst" / "splits" / "sample" / "test_tasks.txt")
    rows = [{"task_name": name, "id": f"{name}-0", "definition": "Answer.", "inputs": "2 + 2?",
             "targets": ["four", "4"]} for name in names]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ni"))
    items = load_superni(SuperNIOptions(dataset=str(tmp_path / "ni"), max_instances=1))
    assert [item["references"] for item in items] == [["four", "4"]] * len(names)
    from ctd_hf import load_metric

    scores = load_metric("superni").compute(predictions=["4"] * len(items), references=[i["references"] for i in items])
    assert scores["rougeL"] == 100 and scores["exact_match"] == 100
    datasets.Dataset.from_list([{**row, "targets": [1, 2]} for row in rows]).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="a target is a string or a non-empty list of strings"):
        load_superni(SuperNIOptions(dataset=str(tmp_path / "bad"), max_instances=1))


def _tiny_tune(tok, output_dir, **settings):
    from ctd_hf.training.tuning import TuneSettings, tune

    settings = TuneSettings(**{"data": str(SFT_SAMPLE), "fraction": 0.02, "batch_size": 8, "max_length": 64,
                               "num_virtual_tokens": 2, "save_steps": 50, **settings})  # 13 examples: 2 steps an epoch
    return tune(settings, output_dir, "tiny", model=build_model(len(tok)), tokenizer=tok, disable_tqdm=True)


def test_a_finished_tune_rerun_trains_and_rewrites_nothing(tok, tmp_path):
    """0.2: a rerun of a finished 3-step run (not a whole number of epochs) trained a 4th step, then a 5th; others
    rewrote train_results.json with train_loss 0.0."""
    first = _tiny_tune(tok, tmp_path, max_steps=3)
    files = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert _tiny_tune(tok, tmp_path, max_steps=3) == first
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == files
    assert first["global_step"] == 3 and first["train_loss"] > 0 and first["train_original_loss"] > 0
    with pytest.raises(ValueError, match="trained for 3 steps, more than max_steps=2"):
        _tiny_tune(tok, tmp_path, max_steps=2)


def test_a_tune_killed_before_its_results_finishes_without_training_more(tok, tmp_path):
    """0.2: a kill after the final adapter save and before train_results.json made the rerun train one more step
    and report that step's loss as the run's."""
    first = _tiny_tune(tok, tmp_path, max_steps=3)
    adapter = (tmp_path / "adapter_model.safetensors").read_bytes()
    (tmp_path / "train_results.json").unlink()
    again = _tiny_tune(tok, tmp_path, max_steps=3)
    assert again == first and (tmp_path / "adapter_model.safetensors").read_bytes() == adapter
    longer = _tiny_tune(tok, tmp_path, max_steps=5)  # a longer run continues from the last step
    assert longer["global_step"] == 5 and longer["train_loss"] != first["train_loss"]


def test_a_tune_that_never_started_does_not_block_the_corrected_command(tok, tmp_path):
    """0.2: a first run that failed (here: a data file that does not exist) left its settings file behind, and the
    corrected command was refused as a run with other settings."""
    with pytest.raises(FileNotFoundError):
        _tiny_tune(tok, tmp_path, max_steps=1, data=str(tmp_path / "missing.json"))
    assert _tiny_tune(tok, tmp_path, max_steps=1)["global_step"] == 1


def test_retraining_an_exported_prefix_in_place_is_refused(tok, tmp_path):
    """0.2: retraining after export-hub left custom_generate/generate.py decoding the old embedded prefix."""
    from ctd_hf.integrations.hub import export_custom_generate

    _tiny_tune(tok, tmp_path, max_steps=1)
    export_custom_generate(tmp_path, strength=0.3)
    with pytest.raises(ValueError, match="export-hub"):
        _tiny_tune(tok, tmp_path, max_steps=2)
    trainer = CTDTrainer(model=add_soft_prefix(build_model(len(tok)), 2), processing_class=tok,
                         args=CTDConfig(output_dir=str(tmp_path / "other"), report_to="none", max_steps=1),
                         train_dataset=tokenize_sft(load_sft_data(SFT_SAMPLE).select(range(4)), tok, max_length=64))
    with pytest.raises(ValueError, match="export-hub"):
        trainer.save_model(str(tmp_path))


def test_tuning_data_cut_short_is_rebuilt_not_tuned_on(tmp_path):
    """0.2: a superni.jsonl cut at a line boundary (60 of 120 rows) was reused, and the demo tuned on half its data."""
    from ctd_hf.study.tuning_data import tuning_data_path

    path = Path(tuning_data_path("superni", tmp_path))
    rows = path.read_text().splitlines(keepends=True)
    path.write_text("".join(rows[: len(rows) // 2]))
    assert Path(tuning_data_path("superni", tmp_path)).read_text().splitlines(keepends=True) == rows
    assert not list(tmp_path.glob("*.tmp"))


def test_generate_output_that_is_the_prompts_file_is_refused(capsys, tiny_model_dir, tmp_path):
    """0.2: `generate --output X --prompts-file X` overwrote the prompts with the answers."""
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Name a colour."}\n')
    error = cli_error(capsys, ["generate", "--model", str(tiny_model_dir), "--prompts-file", str(path), "--output",
                               str(tmp_path / "." / "prompts.jsonl")])
    assert "overwrite the prompts" in error and path.read_text() == '{"prompt": "Name a colour."}\n'


@pytest.mark.parametrize("bad", [{"output": ""}, {"output": None}, {"instruction": None}], ids=str)
def test_every_row_of_a_raw_dataset_is_checked(tok, tmp_path, bad):
    """0.2: only the first 100 rows of a raw Dataset were checked; an empty answer at row 101 trained on the
    end-of-turn token alone (a None field gave a bare TypeError)."""
    import datasets

    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}"} for i in range(120)]
    rows[110] = {**rows[110], **bad}
    args = CTDConfig(output_dir=str(tmp_path), report_to="none", max_steps=1)
    for data in (datasets.Dataset.from_list(rows), rows):
        with pytest.raises(ValueError, match="row 111: .*(missing|non-empty assistant answer)"):
            CTDTrainer(model=add_soft_prefix(build_model(len(tok)), 2), args=args, train_dataset=data,
                       processing_class=tok)


@pytest.mark.parametrize(("space", "name"), [(dict(alpha=(0.3, -1.0)), "alpha"),
                                             (dict(fraction=(0.5, 2.0)), "fraction"),
                                             (dict(learning_rate=(1e-2, -1.0)), "learning_rate")])
def test_sweep_values_are_checked_before_anything_runs(space, name):
    """0.2: --alpha=-1 and --fraction 2 were refused only after the baselines had run."""
    from ctd_hf.study.sweep import SweepSettings, SweepSpace

    with pytest.raises(ValueError, match=f"`{name}`"):
        SweepSettings(space=SweepSpace(**space))


def test_a_sweep_that_produced_nothing_does_not_block_the_corrected_command(tmp_path):
    """0.2: a first sweep that failed (a bad model path) left sweep.json behind, refusing the corrected command."""
    from ctd_hf.study.sweep import Sweep, SweepSettings

    Sweep(SweepSettings(model=str(tmp_path / "no-such-model")), tmp_path / "sweep").prepare()
    Sweep(SweepSettings(model="default"), tmp_path / "sweep").prepare()
    (tmp_path / "sweep" / "baselines").mkdir()  # once it has produced something, other settings are refused
    with pytest.raises(ValueError, match="other settings"):
        Sweep(SweepSettings(model=str(tmp_path / "no-such-model")), tmp_path / "sweep").prepare()


def test_round_two_unclear_errors_name_the_problem_and_the_fix(model, tok, tmp_path, capsys):
    """0.2 answered each of these with an error that named neither the problem nor the fix."""
    import datasets
    from peft import PrefixTuningConfig, TaskType

    import ctd_hf
    from ctd_hf import ContrastiveDecodingContrast, noisy_instruction
    from ctd_hf.evaluation.tasks.superni import SuperNIOptions, load_superni
    from ctd_hf.training.tuning import last_complete_checkpoint

    args = CTDConfig(output_dir=str(tmp_path), report_to="none", max_steps=1)
    data = tokenize_sft(load_sft_data(SFT_SAMPLE).select(range(4)), tok, max_length=64)
    with pytest.raises(ValueError, match="prompt tuning.*LoRA.*PREFIX_TUNING"):
        CTDTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                   peft_config=PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=2))
    with pytest.raises(OSError, match="'models/nope'"):
        CTDTrainer(model="models/nope", args=args, train_dataset=data)
    datasets.Dataset.from_list([{"task": "x", "inputs": "y"}]).save_to_disk(str(tmp_path / "ni"))
    with pytest.raises(ValueError, match=r"ni, row 1: .*missing \['task_name', 'id', 'definition', 'targets'\]"):
        load_superni(SuperNIOptions(dataset=str(tmp_path / "ni")))
    torn = tmp_path / "run" / "checkpoint-2"
    torn.mkdir(parents=True)
    (torn / "trainer_state.json").write_text('{"global_step": ')
    assert last_complete_checkpoint(tmp_path / "run") is None and not torn.exists()
    prefixed = add_soft_prefix(model, 2)
    with pytest.raises(ValueError, match="base model"):
        prefixed.generate(input_ids=torch.tensor([[1, 5, 7]]), custom_generate=ctd_hf.custom_generate,
                          contrast=CTDContrast(prefixed, prefixed), max_new_tokens=2, pad_token_id=0)
    with pytest.raises(ValueError, match="`plausibility` must be a number, got '0.1'"):
        ContrastiveDecodingContrast(model, model, "0.1", 1.0)
    with torch.device("meta"):
        unloaded = build_model(len(tok))
    with pytest.raises(ValueError, match="meta device"):
        CTDContrast(unloaded, torch.randn(2, 32))
    assert len(noisy_instruction("word " * 6000, "", "random_words").split()) == 6000
    error = cli_error(capsys, ["sweep", "--output-dir", str(tmp_path / "s"), "--lr", "-1,0.01"])
    assert "--flag=-1" in error
