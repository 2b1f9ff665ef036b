"""Inputs that used to give a wrong result without a word (ctd_hf 0.1): each test fails on that version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

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


def _tiny_tune(tok, output_dir, restart=False, **settings):
    from ctd_hf.training.tuning import TuneSettings, tune

    settings = TuneSettings(**{"data": str(SFT_SAMPLE), "fraction": 0.02, "batch_size": 8, "max_length": 64,
                               "num_virtual_tokens": 2, "save_steps": 50, **settings})  # 13 examples: 2 steps an epoch
    return tune(settings, output_dir, "tiny", model=build_model(len(tok)), tokenizer=tok, restart=restart,
                disable_tqdm=True)


def test_loading_the_model_does_not_change_the_prefix_a_seed_tunes(tok, tmp_path, monkeypatch):
    """0.3: tune seeded the generator before loading the model, and the default model's first use (its conversion
    builds a randomly initialised model) drew from it: a fresh cache tuned another prefix than a warm one, same
    settings (train loss 3.335 against 3.387)."""
    from ctd_hf.training import tuning

    def load_drawing(name, dtype):  # loads as a first use does: drawing from the generator on the way
        model = build_model(len(tok))
        torch.rand(1000)
        return model, tok

    warm = _tiny_tune(tok, tmp_path / "warm", max_steps=1)
    monkeypatch.setattr(tuning, "load_model_and_tokenizer", load_drawing)
    settings = tuning.TuneSettings(data=str(SFT_SAMPLE), fraction=0.02, batch_size=8, max_length=64,
                                   num_virtual_tokens=2, max_steps=1)
    first_use = tuning.tune(settings, tmp_path / "first-use", "tiny", disable_tqdm=True)
    assert first_use["train_loss"] == warm["train_loss"]
    prefix = [load_file(tmp_path / run / "adapter_model.safetensors") for run in ("warm", "first-use")]
    assert prefix[0].keys() == prefix[1].keys() and all(prefix[0][k].equal(prefix[1][k]) for k in prefix[0])
    other_seed = _tiny_tune(tok, tmp_path / "seed-1", max_steps=1, seed=1)
    assert not load_file(tmp_path / "seed-1" / "adapter_model.safetensors")["prompt_embeddings"].equal(
        prefix[0]["prompt_embeddings"])
    assert other_seed["train_loss"] != warm["train_loss"]


def test_a_finished_tune_rerun_trains_and_rewrites_nothing(tok, tmp_path):
    """0.2: a rerun of a finished 3-step run (not a whole number of epochs) trained a 4th step, then a 5th; others
    rewrote train_results.json with train_loss 0.0."""
    first = _tiny_tune(tok, tmp_path, max_steps=3)
    files = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert _tiny_tune(tok, tmp_path, max_steps=3) == first
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == files
    assert first["global_step"] == 3 and first["train_loss"] > 0 and first["train_original_loss"] > 0
    with pytest.raises(ValueError, match=r"length of training \(\{'epochs': 1.0, 'max_steps': 3\} -> \{'epochs': 1.0, 'max_steps': 2\}"):
        _tiny_tune(tok, tmp_path, max_steps=2)


def test_a_tune_killed_before_its_results_finishes_without_training_more(tok, tmp_path):
    """0.2: a kill after the final adapter save and before train_results.json made the rerun train one more step
    and report that step's loss as the run's."""
    first = _tiny_tune(tok, tmp_path, max_steps=3)
    adapter = (tmp_path / "adapter_model.safetensors").read_bytes()
    (tmp_path / "train_results.json").unlink()
    again = _tiny_tune(tok, tmp_path, max_steps=3)
    assert again == first and (tmp_path / "adapter_model.safetensors").read_bytes() == adapter
    with pytest.raises(ValueError, match="length of training.*--restart"):  # 0.3 went on under a 3-step schedule
        _tiny_tune(tok, tmp_path, max_steps=5)


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
    with pytest.raises(ValueError, match="length of training"):  # (0.3 refused it naming export-hub)
        _tiny_tune(tok, tmp_path, max_steps=2)
    assert _tiny_tune(tok, tmp_path, max_steps=2, restart=True)["global_step"] == 2  # starting over drops the export
    assert not (tmp_path / "custom_generate").exists()
    export_custom_generate(tmp_path, strength=0.3)
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


def _task_folder(tmp_path: Path, instances: list[dict], definition: object = "Answer the question.") -> Path:
    """A natural-instructions folder of one task, ``t1`` (listed in ``splits/mine.txt``)."""
    folder = tmp_path / "ni"
    (folder / "tasks").mkdir(parents=True, exist_ok=True)
    (folder / "splits").mkdir(exist_ok=True)
    (folder / "splits" / "mine.txt").write_text("t1\n")
    (folder / "tasks" / "t1.json").write_text(json.dumps(
        {"Definition": definition, "Categories": ["Question Answering"], "Instances": instances}))
    return folder


def test_instances_sharing_an_id_are_refused(tmp_path):
    """0.3: two instances of one id both got one answer (66.67 where 100 was right); dataset rows sharing an id
    merged into one instance, dropping the other's input."""
    import datasets

    from ctd_hf.evaluation.tasks.superni import SuperNIOptions, load_superni

    folder = _task_folder(tmp_path, [{"id": "a", "input": "1 + 1?", "output": ["2"]},
                                     {"id": "a", "input": "2 + 2?", "output": ["4"]}])
    with pytest.raises(ValueError, match=r"t1.json: two instances have id 'a' \(instances 1 and 2\)"):
        load_superni(SuperNIOptions(dir=str(folder), tasks="mine.txt"))
    rows = [{"task_name": "t1", "id": "a", "definition": "Add.", "inputs": text, "targets": "x"}
            for text in ("1 + 1?", "2 + 2?")]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "rows"))
    with pytest.raises(ValueError, match="two rows of id 'a' have different inputs"):
        load_superni(SuperNIOptions(dir=str(folder), tasks="mine.txt", dataset=str(tmp_path / "rows")))


def test_any_task_with_two_items_of_one_id_is_refused_before_answering(tok, tmp_path):
    """The runner's guard for every task (here DROP, whose loader keeps a file's ids as they are): two items of one
    id would share one prediction."""
    records = [{"id": "q1", "passage": "Two plus two is four.", "question": "What is two plus two?", "answers": [a]}
               for a in ("four", "4")]
    path = tmp_path / "drop.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    settings = EvalSettings(benchmarks=("drop",), options={"drop": {"path": str(path)}}, max_new_tokens={"drop": 2},
                            max_source_tokens=3000)
    with pytest.raises(ValueError, match=r"Task drop has two items with id 'q1' \(items 1 and 2\)"):
        run_evaluation(build_model(len(tok)), tok, {"od": ODMethod()}, settings, tmp_path / "run", "tiny-llama")
    assert not (tmp_path / "run").exists()


def test_references_without_a_latin_token_are_named(caplog):
    """0.3: an exact Hebrew, Arabic, Chinese or Russian answer scored Rouge-L 0 (exact match 100) without a word."""
    from ctd_hf.evaluation.tasks.superni import superni_instance_scores

    answers = ["שלום עולם", "مرحبا بالعالم", "你好世界", "привет мир"]
    items = [{"references": [answer], "rouge_tokenizer": "english"} for answer in answers]
    with caplog.at_level("WARNING", logger="ctd_hf"):
        english = superni_instance_scores(items, answers)
    assert english["rougeL"] == [0.0] * 4 and english["exact_match"] == [100.0] * 4
    assert "4 of 4 SuperNI items have no reference the english Rouge-L tokenizer reads" in caplog.text
    assert "--superni-rouge-tokenizer xlingual" in caplog.text
    items = [{**item, "rouge_tokenizer": "xlingual"} for item in items]
    assert superni_instance_scores(items, answers)["rougeL"] == [100.0] * 4
    assert superni_instance_scores(items, ["他们", "x", "世界", "мир"])["rougeL"][0] == 0.0


def test_flags_that_mean_another_method_are_refused(capsys, tiny_model_dir, tmp_path):
    """0.3: --methods od@0.3 ran plain od under a strength label; generate --amateur without --method decoded od and
    never loaded the amateur."""
    error = cli_error(capsys, ["eval", "--output-dir", str(tmp_path / "e"), "--methods", "od,od@0.3"])
    assert "od@0.3: method od has no strength" in error
    error = cli_error(capsys, ["generate", "--model", str(tiny_model_dir), "--prompt", "Hi", "--amateur",
                               str(tiny_model_dir)])
    assert "--amateur is a setting of method cd" in error and "choose that method" in error


def test_round_three_unclear_errors_name_the_problem_and_the_fix(model, tok, tmp_path, capsys, tiny_model_dir):
    """0.3 answered each of these with an error that named neither the problem nor the fix (or, for a numpy or torch
    strength, refused a number)."""
    import numpy as np

    from ctd_hf import AdapterMismatchError, DecodingMethod, check_adapter
    from ctd_hf.evaluation.tasks.superni import SuperNIOptions, load_superni

    prefix = tmp_path / "prefix"
    add_soft_prefix(model, 2).save_pretrained(prefix)
    (prefix / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterMismatchError, match="names no adapter type.*Re-run `ctd-hf tune`"):
        check_adapter(model, prefix)
    task = DATA / "supernatinst" / "tasks" / "task033_winogrande_answer_generation.json"
    assert "is not SFT data that tuning can read" in cli_error(
        capsys, ["sweep", "--output-dir", str(tmp_path / "s"), "--data", str(task)])
    with pytest.raises(ValueError, match="Record 2 of the list: the example's output is of type int"):
        load_sft_data([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": 3}])
    error = cli_error(capsys, ["eval", "--output-dir", str(tmp_path / "e"), "--no-token-changes", "false"])
    assert "--no-token-changes is a switch and takes no value" in error
    error = cli_error(capsys, ["generate", "--model", str(tiny_model_dir), "--prompt", "Hi", "--do-sample",
                               "--temperature", "1e-320"])
    assert "--temperature: must be at least 1e-06" in error
    error = cli_error(capsys, ["synth", "--expert", str(tiny_model_dir), "--method", "od", "--amateur",
                               str(tiny_model_dir), "--instructions", str(SFT_SAMPLE), "--output-dir",
                               str(tmp_path / "synth")])
    assert "--amateur is a setting of method cd" in error
    instructions = tmp_path / "instructions.json"
    instructions.write_text(json.dumps([{"instruction": "Add.", "input": "1 + 1"}]))
    synth = ["synth", "--expert", str(tiny_model_dir), "--method", "od", "--instructions", str(instructions),
             "--max-new-tokens", "2", "--output-dir", str(tmp_path / "synth")]
    from ctd_hf.cli import main

    main(synth)
    instructions.write_text(json.dumps([{"instruction": "Add.", "input": "2 + 2"}]))
    assert "whose input '1 + 1' -> '2 + 2' changed" in cli_error(capsys, synth)
    for strength in (np.float32(0.5), torch.tensor(0.5), np.float64(0.5)):
        assert DecodingMethod.from_name("id", strength=strength).strength == 0.5
    with pytest.raises(TypeError, match="`prefix` must be a folder written by `ctd-hf tune`"):
        DecodingMethod.from_name("ctd", prefix=123)
    with pytest.raises(TypeError, match="`amateur` must be a model folder"):
        DecodingMethod.from_name("cd", amateur=3.0)
    with pytest.raises(AdapterMismatchError, match="prefix is on the meta device"):
        CTDContrast(model, torch.empty(2, 32, device="meta"))
    contrast = CTDContrast(model, torch.randn(2, 32))
    for mask, words in ((torch.tensor([[1, 0, 1], [1, 1, 1]]), "Row 0 of the attention mask has a hole"),
                        (torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]]), "0s and 1s.*got dtype torch.float32")):
        with pytest.raises(ValueError, match=words):
            generate_doubled(model, contrast, input_ids=torch.tensor([[1, 5, 7], [2, 3, 4]]), attention_mask=mask,
                             max_new_tokens=2, pad_token_id=0)
    for instances, words in (
        ([{"id": "a", "input": "x", "output": 4}], r"instance 1 \(a\) has output 4"),
        ([{"id": "a", "input": "x", "output": "four"}], r"instance 1 \(a\) has output 'four'"),
        ([{"id": "a", "input": "x"}], r"instance 1 \(a\) has output None"),
        ([{"input": "x", "output": ["y"]}], "instance 1 has no string id"),
    ):
        folder = _task_folder(tmp_path, instances)
        with pytest.raises(ValueError, match=f"t1.json: {words}"):
            load_superni(SuperNIOptions(dir=str(folder), tasks="mine.txt"))
    folder = _task_folder(tmp_path, [{"id": "a", "input": "x", "output": ["y"]}], definition=[])
    with pytest.raises(ValueError, match="t1.json: the Definition is empty"):
        load_superni(SuperNIOptions(dir=str(folder), tasks="mine.txt"))
    (folder / "tasks" / "t1.json").write_text(json.dumps({"Definition": ["Add."], "Instances": []}))
    with pytest.raises(ValueError, match="t1.json: no Categories"):
        load_superni(SuperNIOptions(dir=str(folder), tasks="mine.txt"))
