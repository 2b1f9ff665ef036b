"""Bad inputs get a clear error: the exception type, and a message that names the parameter or file and the fix.

One case per line of the tables below (API, then CLI); `test_silent_cases.py` holds the inputs that used to give a
wrong answer without a word.
"""

from __future__ import annotations

import importlib.util
import json
import re
import warnings
from types import SimpleNamespace

import datasets
import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from ctd_hf import (AdapterMismatchError, ContrastiveDecodingContrast, ContrastProcessor, CTDConfig, CTDContrast,
                    CTDMethod, CTDProcessor, CTDTrainer, DecodingMethod, EvalSettings, InstructiveContrast, ODMethod,
                    OriginalPredictions, RightPaddingCollator, add_soft_prefix, generate_doubled, get_task,
                    load_model_and_tokenizer, load_sft_data, run_evaluation, tokenize_sft)
from ctd_hf.models import ensure_pad_token
from ctd_hf.adapter import write_card

from conftest import SFT_SAMPLE, build_model, cli_error

PROMPTS = ["Give three tips for staying healthy.", "Hi", "What is the capital of France?"]


@pytest.fixture
def tok(tokenizer):
    return ensure_pad_token(tokenizer)


@pytest.fixture
def model(tok):
    return build_model(len(tok), initializer_range=0.3)


@pytest.fixture
def inputs(tok):
    return tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left")


@pytest.fixture
def prefix(model):
    torch.manual_seed(1)
    return torch.randn(4, model.config.hidden_size) * 0.5


@pytest.fixture
def prefix_dir(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    prefixed = add_soft_prefix(AutoModelForCausalLM.from_pretrained(tiny_model_dir), num_virtual_tokens=4)
    prefixed.save_pretrained(tmp_path / "prefix")
    write_card(tmp_path / "prefix", prefixed)
    return tmp_path / "prefix"


def greedy(model, inputs, processor, **kwargs):
    with processor:
        return model.generate(**inputs, logits_processor=[processor], max_new_tokens=4, do_sample=False,
                              pad_token_id=0, **kwargs)


def expect(error: type[Exception], *patterns: str):
    """pytest.raises for ``error`` whose message matches every pattern (the parameter or file, and the fix)."""
    return pytest.raises(error, match="(?s)" + "".join(f"(?=.*{pattern})" for pattern in patterns))


def test_prefix_of_another_hidden_size(model):
    with expect(AdapterMismatchError, "hidden size", "prefix trained for this model"):
        CTDContrast(model, torch.randn(4, 48))


def test_zero_length_prefix(model):
    with expect(AdapterMismatchError, "no virtual tokens", "tuned prefix"):
        CTDContrast(model, torch.randn(0, model.config.hidden_size))


def test_prefix_holding_nan(model, prefix):
    prefix[1, 2] = float("nan")
    with expect(AdapterMismatchError, "NaN", "Retrain"):
        CTDContrast(model, prefix)


@pytest.mark.parametrize("beta, error, words", [("abc", TypeError, "must be a number"), (-0.1, ValueError, ">= 0"),
                                                (float("inf"), ValueError, "finite")])
def test_bad_beta(model, prefix, beta, error, words):
    with expect(error, "`strength`", words):
        CTDContrast(model, prefix, strength=beta)


def test_strength_overflowing_the_scores(model, prefix, inputs):
    with expect(ValueError, "strength", "lower the strength"):
        generate_doubled(model, CTDContrast(model, prefix, strength=1e38), **inputs, max_new_tokens=2, pad_token_id=0)


def test_right_padded_batch(model, prefix, tok):
    right = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="right")
    with expect(ValueError, "right-padded", "padding_side='left'"):
        generate_doubled(model, CTDContrast(model, prefix), **right, max_new_tokens=2, pad_token_id=0)


def test_empty_prompt_row(model, prefix, inputs):
    inputs["attention_mask"][1] = 0
    with expect(ValueError, "empty", "remove it"):
        greedy(model, inputs, CTDProcessor(model, prefix))


def test_zero_token_prompt(model, prefix):
    with expect(ValueError, "input_ids", "prompt length >= 1"):
        generate_doubled(model, CTDContrast(model, prefix), input_ids=torch.zeros(1, 0, dtype=torch.long))


def test_doubled_with_inputs_embeds(model, prefix, inputs):
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    with expect(ValueError, "inputs_embeds", "stream executor"):
        generate_doubled(model, CTDContrast(model, prefix), input_ids=inputs["input_ids"], inputs_embeds=embeds)


def test_static_cache(model, prefix, inputs):
    with expect(ValueError, "cache_implementation", "default dynamic cache"):
        generate_doubled(model, CTDContrast(model, prefix), **inputs, cache_implementation="static", pad_token_id=0)
    with expect(ValueError, "StaticCache", "default dynamic cache"):
        greedy(model, inputs, CTDProcessor(model, prefix), cache_implementation="static")


def test_two_model_contrast_on_the_doubled_executor(model, inputs):
    contrast = ContrastiveDecodingContrast(model, build_model(model.config.vocab_size, seed=3, num_hidden_layers=1))
    with expect(ValueError, "one model", "stream executor"):
        generate_doubled(model, contrast, **inputs, max_new_tokens=2)


def test_stream_processor_outside_its_with_block(model, prefix, inputs):
    processor = CTDProcessor(model, prefix)
    with expect(RuntimeError, "generate\\(\\)'s prompt pass", "context manager"):
        model.generate(**inputs, logits_processor=[processor], max_new_tokens=2, pad_token_id=0)


def test_stream_processor_built_on_another_model(model, prefix, inputs):
    other = build_model(model.config.vocab_size, seed=9)
    with expect(ValueError, "built on", "build the processor on that one"):
        greedy(other, inputs, CTDProcessor(model, prefix))


def test_prompt_tuning_peft_model_generate_with_the_stream(model, inputs):
    peft = add_soft_prefix(model, num_virtual_tokens=3)
    with expect(ValueError, "inputs_embeds", "base model"):
        greedy(peft, inputs, CTDProcessor(peft, peft))


def test_lora_peft_model(model, prefix):
    from peft import LoraConfig, TaskType, get_peft_model

    lora = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=2))
    with expect(ValueError, "LORA", "without the adapter"):
        CTDContrast(lora, prefix)


def test_encoder_decoder_model():
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    with expect(ValueError, "encoder-decoder", "decoder-only models with the default dynamic cache"):
        InstructiveContrast(t5, torch.tensor([[1, 2]]))


def test_noisy_prompts_that_do_not_pair_with_the_batch(model, tok, inputs):
    noisy = tok(["no", "noise here"], return_tensors="pt", padding=True, padding_side="left")
    with expect(ValueError, "2 noisy prompts", "one noisy prompt per prompt"):
        greedy(model, inputs, ContrastProcessor(InstructiveContrast(model, noisy["input_ids"],
                                                                    noisy["attention_mask"])))


def test_several_noisy_prompts_without_a_mask(model, tok):
    noisy = tok(["no", "noise here"], return_tensors="pt", padding=True, padding_side="left")
    with expect(ValueError, "noisy_attention_mask", "padding"):
        InstructiveContrast(model, noisy["input_ids"])


def test_amateur_with_another_vocabulary(model, tok):
    amateur = build_model(len(tok) - 20, seed=5)
    with expect(ValueError, "output rows", "tokenizer"):
        ContrastiveDecodingContrast(model, amateur, tokenizer=tok)


def test_plausibility_out_of_range(model):
    with expect(ValueError, "`plausibility`", r"\(0, 1\]"):
        ContrastiveDecodingContrast(model, model, plausibility=1.5)


def test_prompt_and_prefix_longer_than_the_positions(tok, prefix):
    short = build_model(len(tok), max_position_embeddings=24)
    inputs = tok(["word " * 20], return_tensors="pt")
    with expect(ValueError, "positions", "lower max_new_tokens"):
        generate_doubled(short, CTDContrast(short, prefix), **inputs, max_new_tokens=2, pad_token_id=0)
    with expect(ValueError, "positions", "lower max_new_tokens"):
        greedy(short, inputs, CTDProcessor(short, prefix))


def test_recording_under_beam_search(model, prefix, inputs):
    with expect(ValueError, "beam search", "greedy decoding or sampling"):
        generate_doubled(model, CTDContrast(model, prefix), record=OriginalPredictions(), **inputs, num_beams=2,
                         max_new_tokens=2, pad_token_id=0)


def test_assisted_decoding(model, prefix, tok):
    single = tok(["the cat sat on the mat, the cat sat on the"], return_tensors="pt")
    with expect(ValueError, "one token at a time", "assisted"):
        greedy(model, single, CTDProcessor(model, prefix), prompt_lookup_num_tokens=2)


@pytest.mark.parametrize("kwargs, words", [
    ({"name": "greedy"}, ("`name` is 'greedy'", "choose one of")),
    ({"name": "ctd"}, ("`prefix` is needed", "method ctd")),
    ({"name": "id", "noise": "reverse"}, ("`noise` is 'reverse'", "choose one of")),
    ({"name": "id", "backend": "fast"}, ("`backend`", "auto")),
    ({"name": "id", "strength": "strong"}, ("`strength`", "number")),
    ({"name": "id", "noise_rate": 1.5}, ("`noise_rate`", r"\[0, 1\]")),
])
def test_bad_method_settings(kwargs, words):
    error = TypeError if kwargs.get("strength") == "strong" else ValueError
    name = kwargs.pop("name")
    with expect(error, *words):
        DecodingMethod.from_name(name, **kwargs)


def test_prefix_folder_without_weights(tmp_path):
    with expect(FileNotFoundError, "adapter_model.safetensors", "ctd-hf tune"):
        CTDMethod(prefix=str(tmp_path))


def test_prefix_folder_for_another_model(prefix_dir, tok):
    other = build_model(len(tok) + 8)
    with expect(AdapterMismatchError, "vocabulary", "train a new one"):
        CTDMethod(prefix=str(prefix_dir)).bind(other, tok)


def test_soft_prefix_of_zero_tokens(model):
    with expect(ValueError, "`num_virtual_tokens`", ">= 1"):
        add_soft_prefix(model, num_virtual_tokens=0)


def test_text_init_on_a_model_without_a_name(model):
    with expect(ValueError, "init_text|name_or_path", "tokenizer_name_or_path"):
        add_soft_prefix(model, init="text", init_text="Answer well.")


def test_negative_max_length(tok):
    with expect(ValueError, "`max_length`", ">= 2"):
        tokenize_sft(load_sft_data(SFT_SAMPLE).select(range(2)), tok, max_length=-1)


@pytest.mark.parametrize("content, words", [
    ("", ("is empty",)),
    ("[]", ("holds no record",)),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n', (r"\.jsonl:2", "not valid JSON")),
    ('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', ("record 2", r"missing \['output'\]")),
    ('{"instruction": "a", "output": "b"}\n{"text": "c"}\n', (r"\.jsonl:2", "`messages`", "`instruction`")),
    ('{"instruction": "a", "output": "b"}', ("JSON dict", "list of records")),
])
def test_broken_sft_files(tmp_path, content, words):
    path = tmp_path / ("data.jsonl" if "\n" in content else "data.json")
    path.write_text(content)
    with expect(ValueError, re.escape(path.name), *words):
        load_sft_data(path)


def test_sft_path_that_does_not_exist(tmp_path):
    with expect(FileNotFoundError, "nope.json", "does not exist"):
        load_sft_data(str(tmp_path / "nope.json"))


def test_collator_without_a_pad_token(tokenizer):
    with expect(ValueError, "`pad_token_id`", "tokenizer.pad_token = tokenizer.eos_token"):
        RightPaddingCollator(tokenizer.pad_token_id)


def _trainer_kwargs(tmp_path):
    return dict(args=CTDConfig(output_dir=str(tmp_path), report_to="none", max_steps=1))


def test_trainer_with_an_empty_dataset(model, tok, tmp_path):
    empty = datasets.Dataset.from_dict({"input_ids": [], "attention_mask": [], "labels": []})
    with expect(ValueError, "`train_dataset`", "empty"):
        CTDTrainer(model=add_soft_prefix(model, 3), train_dataset=empty, processing_class=tok,
                   **_trainer_kwargs(tmp_path))


def test_trainer_without_a_collator_or_tokenizer(model, tok, tmp_path):
    data = tokenize_sft(load_sft_data(SFT_SAMPLE).select(range(4)), tok, max_length=64)
    with expect(ValueError, "data_collator", "processing_class"):
        CTDTrainer(model=add_soft_prefix(model, 3), train_dataset=data, **_trainer_kwargs(tmp_path))


def test_trainer_with_raw_rows_and_no_tokenizer(model, tmp_path):
    with expect(ValueError, "raw SFT examples", "processing_class=tokenizer"):
        CTDTrainer(model=add_soft_prefix(model, 3), train_dataset=load_sft_data(SFT_SAMPLE).select(range(4)),
                   data_collator=RightPaddingCollator(0), **_trainer_kwargs(tmp_path))


def test_trainer_on_a_bare_model(model, tok, tmp_path):
    with expect(TypeError, "peft_config", "add_soft_prefix"):
        CTDTrainer(model=model, processing_class=tok, **_trainer_kwargs(tmp_path))


def test_config_with_an_unknown_prompt_format(tmp_path):
    with expect(ValueError, "prompt_format", "choose one of"):
        CTDConfig(output_dir=str(tmp_path), prompt_format="vicuna")


def test_model_folder_that_does_not_exist(tmp_path):
    with expect(FileNotFoundError, "missing-model", "does not exist"):
        load_model_and_tokenizer(str(tmp_path / "missing-model"))


def test_folder_that_is_not_a_model(tmp_path):
    with expect(FileNotFoundError, "config.json", "save_pretrained"):
        load_model_and_tokenizer(str(tmp_path))


def test_unknown_benchmark():
    with expect(ValueError, "Unknown benchmark 'squad'", "choose from"):
        get_task("squad")


def test_unknown_task_option():
    with expect(ValueError, "Unknown superni options \\['path'\\]", "its options are"):
        get_task("superni").make_options({"path": "x"})


def test_mmlu_shots_out_of_range():
    with expect(ValueError, "shots", "0 to 5"):
        get_task("mmlu").make_options({"shots": 7})


def test_superni_task_list_naming_a_missing_task(tmp_path):
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "mine.txt").write_text("task999_missing\n")
    options = get_task("superni").make_options({"dir": str(tmp_path), "tasks": "mine.txt"})
    with expect(FileNotFoundError, "task999_missing", "does not exist"):
        get_task("superni").load(options)


def test_evaluation_without_benchmarks(model, tok, tmp_path):
    with expect(ValueError, "benchmarks", "at least one"):
        run_evaluation(model, tok, {"od": ODMethod()}, EvalSettings(benchmarks=()), tmp_path, "tiny")


def test_evaluation_into_a_file(model, tok, tmp_path):
    (tmp_path / "out").write_text("")
    settings = EvalSettings(options={"superni": {"max_instances": 1}}, max_new_tokens={"superni": 2})
    with expect(NotADirectoryError, "out", "another output folder"):
        run_evaluation(model, tok, {"od": ODMethod()}, settings, tmp_path / "out", "tiny")


def test_evaluation_prompts_longer_than_the_model(model, tok, tmp_path):
    settings = EvalSettings(options={"superni": {"max_instances": 1}})
    with expect(ValueError, "positions", "lower max_source_tokens"):
        run_evaluation(model, tok, {"od": ODMethod()}, settings, tmp_path, "tiny")
    assert not (tmp_path / "eval_settings.json").exists()


def test_evaluation_refuses_choice_tasks_on_another_engine(model, tok, tmp_path):
    """MMLU is scored from the first step's logits, which the vLLM engine does not return; refused before writing."""
    with expect(ValueError, "mmlu scores the first step's logits", "vllm engine", "hf engine"):
        run_evaluation(model, tok, {"od": ODMethod()}, EvalSettings(benchmarks=("superni", "mmlu")),
                       tmp_path, "tiny", engine=SimpleNamespace(name="vllm", reads_scores=False))
    assert not (tmp_path / "eval_settings.json").exists()


def test_vllm_engine_without_vllm_names_the_install(capsys, tiny_model_dir):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    error = cli_error(capsys, ["generate", "--model", str(tiny_model_dir), "--prompt", "Hi", "--engine", "vllm"])
    assert 'pip install "ctd_hf[vllm]"' in error


# ----------------------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("argv, words", [
    (["generate", "--prompt", "Hi", "--batch-size", "0"], ("--batch-size", ">= 1")),
    (["generate", "--prompt", "Hi", "--num-beams", "0"], ("--num-beams", ">= 1")),
    (["generate", "--prompt", "Hi", "--top-p", "1.5"], ("--top-p", r"\(0, 1\]")),
    (["generate", "--prompt", "Hi", "--beta", "-1"], ("--beta", ">= 0")),
    (["eval", "--output-dir", "x", "--methods", ""], ("--methods", "at least one")),
    (["eval", "--output-dir", "x", "--benchmarks", " , "], ("--benchmarks", "at least one")),
    (["tune", "--output-dir", "x", "--fraction", "0"], ("--fraction", r"\(0, 1\]")),
    (["tune", "--output-dir", "x", "--lr", "nan"], ("--lr", "finite")),
    (["generate", "--prompt", "Hi", "--engine", "vllm", "--vllm-max-num-seqs", "0"], ("--vllm-max-num-seqs", ">= 1")),
    (["eval", "--output-dir", "x", "--engine", "sglang"], ("--engine", "choose one of hf, vllm")),
])
def test_cli_values_refused_by_the_parser(capsys, argv, words):
    with pytest.raises(SystemExit) as exit_info:
        from ctd_hf.cli import main

        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    for word in words:
        assert re.search(word, error), (word, error)


def test_cli_output_dir_that_is_a_file(capsys, tmp_path):
    (tmp_path / "out").write_text("")
    from ctd_hf.cli import main

    for command in (["tune"], ["eval"], ["synth", "--instructions", "x.json", "--amateur", "default"]):
        with pytest.raises(SystemExit):
            main([*command, "--output-dir", str(tmp_path / "out")])
        assert "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["eval", "--output-dir", "OUT", "--methods", "od,beam"], ("Unknown method 'beam'", "choose from")),
    (["eval", "--output-dir", "OUT", "--methods", "ctd@strong", "--prefix", "P"], ("ctd@strong", "after @")),
    (["eval", "--output-dir", "OUT", "--methods", "od,id,ctd"], ("ctd needs --prefix", "ctd-hf tune")),
    (["eval", "--output-dir", "OUT", "--methods", "od,id", "--beta", "0.5"], ("--beta", "method ctd")),
    (["eval", "--output-dir", "OUT", "--methods", "od", "--benchmarks", "squad"], ("Unknown benchmark", "choose")),
    (["eval", "--output-dir", "OUT", "--methods", "od", "--max-instances", "0"], ("--max-instances", ">= 1")),
    (["eval", "--output-dir", "OUT", "--methods", "od", "--benchmarks", "drop", "--drop-path", "P"],
     ("P", "does not exist")),
    (["generate", "--prompt", "Hi", "--method", "id", "--beta", "0.5"], ("--beta", "--id-strength|method ctd")),
    (["generate", "--prompts-file", "MISSING.txt"], ("MISSING.txt", "does not exist")),
    (["generate", "--model", "./no-such-model", "--prompt", "Hi"], ("no-such-model", "does not exist")),
    (["tune", "--output-dir", "OUT", "--init", "text"], ("init_text", "init")),
    (["generate", "--prompt", "Hi", "--vllm-memory", "0.2"], ("--vllm-memory", "vllm engine only", "--engine vllm")),
])
def test_cli_errors_are_one_clear_line(capsys, tmp_path, argv, words):
    argv = [str(tmp_path / value) if value in ("OUT", "P", "MISSING.txt") else value for value in argv]
    error = cli_error(capsys, argv)
    for word in words:
        assert re.search(word, error), (word, error)


def test_cli_debug_shows_the_traceback(tmp_path):
    from ctd_hf.cli import main

    with pytest.raises(ValueError, match="Unknown method"):
        main(["--debug", "eval", "--output-dir", str(tmp_path), "--methods", "beam"])


def test_cli_version(capsys):
    from ctd_hf import __version__
    from ctd_hf.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"ctd-hf {__version__}"


def test_tune_rerun_into_a_folder_of_another_model(capsys, tokenizer_dir, tiny_model_dir, tmp_path):
    from transformers import PreTrainedTokenizerFast

    other_dir = tmp_path / "other-llama"
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    build_model(len(tokenizer), seed=4).save_pretrained(other_dir)
    tokenizer.save_pretrained(other_dir)
    common = ["tune", "--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--fraction", "0.01",
              "--max-length", "64", "--batch-size", "2", "--num-virtual-tokens", "2"]
    from ctd_hf.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main([*common, "--model", str(tiny_model_dir)])
    for changed, word in ((["--model", str(other_dir)], "fingerprint"),
                          (["--model", str(tiny_model_dir), "--lr", "0.5"], "learning_rate")):
        error = cli_error(capsys, [*common, *changed])
        assert "another model or settings" in error and word in error and "new output folder" in error


def test_generate_prompts_file_as_a_json_list(capsys, tiny_model_dir, tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(["Name a colour.", {"instruction": "Add the numbers.", "input": "2 and 3"}, "Hi"]))
    from ctd_hf.cli import main

    capsys.readouterr()
    main(["generate", "--model", str(tiny_model_dir), "--prompts-file", str(path), "--max-new-tokens", "2"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in records] == ["Name a colour.", "Add the numbers.", "Hi"]
    assert records[1]["input"] == "2 and 3"


def test_zero_token_prompt_on_the_stream(model, prefix):
    with expect(ValueError, "empty prompt", "at least one token"):
        greedy(model, {"input_ids": torch.zeros(1, 0, dtype=torch.long)}, CTDProcessor(model, prefix))


def test_answers_for_no_message_or_too_long_prompts(model, tok):
    from ctd_hf import generate_answers

    with expect(ValueError, "No message", "at least one"):
        generate_answers(model, tok, [], ODMethod())
    with expect(ValueError, "positions", "lower max_new_tokens"):
        generate_answers(model, tok, [{"role": "user", "content": "word " * 400}], ODMethod(),
                         max_new_tokens=8)


@pytest.mark.parametrize("kwargs, words", [({"batch_size": 0}, ("batch_size", ">= 1")),
                                           ({"max_new_tokens": {"superni": 0}}, ("max_new_tokens", ">= 1")),
                                           ({"max_source_tokens": 0}, ("max_source_tokens", ">= 1")),
                                           ({"prompt_format": "vicuna"}, ("prompt_format", "choose one of"))])
def test_bad_evaluation_settings(kwargs, words):
    with expect(ValueError, *words):
        EvalSettings(**kwargs)


def test_source_budget_below_the_instruction(model, tok, tmp_path):
    long = build_model(len(tok), max_position_embeddings=4096)
    settings = EvalSettings(options={"superni": {"max_instances": 1}}, max_source_tokens=8)
    with expect(ValueError, "alone holds", "Raise max_source_tokens"):
        run_evaluation(long, tok, {"od": ODMethod()}, settings, tmp_path / "run", "tiny")
    assert not (tmp_path / "run").exists()


def test_prefix_of_a_wrong_type(model):
    with expect(TypeError, "`prefix`", "adapter folder"):
        CTDContrast(model, 5)


def test_missing_amateur_names_the_flag(capsys, tiny_model_dir, tmp_path):
    error = cli_error(capsys, ["generate", "--model", str(tiny_model_dir), "--method", "cd", "--amateur",
                               "./missing-amateur", "--prompt", "Hi"])
    assert "--amateur" in error and "./missing-amateur does not exist" in error
