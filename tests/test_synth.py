"""CoDIT synthesis (`ctd-hf synth`): resumes after SIGKILL, 2 processes equal 1, and runs on the real default model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
import torch.distributed as dist
from transformers import PreTrainedTokenizerFast

from ctd_hf import GenerationSettings, SynthSettings, load_model_and_tokenizer, synthesize
from ctd_hf.cli import main
from ctd_hf.decoding.methods import CDMethod

from conftest import DATA, SFT_SAMPLE, build_model, cli_error

NUM_INSTRUCTIONS = 16
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small matrices gain nothing from a second thread, and lose much when the 2 cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, tokenizer_dir) -> tuple[Path, Path]:
    """Expert and amateur folders: two different tiny Llamas with peaked distributions (no near-ties in greedy)."""
    root = tmp_path_factory.mktemp("synth-models")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    for name, seed in (("expert", 0), ("amateur", 1)):
        build_model(len(tokenizer), seed=seed, initializer_range=0.3).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "expert", root / "amateur"


@pytest.fixture(scope="module")
def instructions(tmp_path_factory) -> Path:
    """JSONL of short Alpaca instructions, some with an input."""
    rows = [r for r in json.loads(SFT_SAMPLE.read_text()) if len(r["instruction"] + (r.get("input") or "")) < 300]
    path = tmp_path_factory.mktemp("synth-data") / "instructions.jsonl"
    path.write_text("".join(json.dumps({"instruction": r["instruction"], "input": r.get("input") or ""}) + "\n"
                            for r in rows[:NUM_INSTRUCTIONS]))
    return path


def synth_args(tiny_pair: tuple[Path, Path], instructions: Path, output_dir: Path, *extra: str) -> list[str]:
    expert, amateur = tiny_pair
    return ["synth", "--expert", str(expert), "--amateur", str(amateur), "--instructions", str(instructions),
            "--output-dir", str(output_dir), "--batch-size", "2", "--max-new-tokens", "24", "--also-plain", *extra]


@pytest.fixture(scope="module")
def reference(tiny_pair, instructions, tmp_path_factory) -> Path:
    """An uninterrupted one-process run (in this process)."""
    output_dir = tmp_path_factory.mktemp("synth-reference") / "run"
    main(synth_args(tiny_pair, instructions, output_dir))
    return output_dir


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_uninterrupted_run_writes_dataset_and_config(reference, instructions):
    rows = lines(reference / "data.jsonl")
    source = lines(instructions)
    assert [(r["instruction"], r["input"]) for r in rows] == [(s["instruction"], s["input"]) for s in source]
    assert all(set(r) == {"instruction", "input", "output", "output_plain"} for r in rows)
    assert any(r["output"] != r["output_plain"] for r in rows)  # the amateur changed something
    assert datasets.load_from_disk(str(reference / "dataset")).to_list() == rows
    config = json.loads((reference / "synthesis_config.json").read_text())
    assert config["method"]["method"] == "cd" and config["method"]["amateur"].endswith("amateur")
    assert config["generate_kwargs"]["max_new_tokens"] == 24 and config["complete"] and config["num_instructions"] == 16
    assert config["expert"].endswith("expert") and config["prompt_format"] == "chatml" and "ctd_hf_version" in config


def test_resume_after_sigkill_equals_uninterrupted_run(tiny_pair, instructions, reference, tmp_path, capsys):
    output_dir = tmp_path / "run"
    shard = output_dir / "shard-00000-of-00001.jsonl"
    args = synth_args(tiny_pair, instructions, output_dir)
    with open(tmp_path / "log.txt", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "ctd_hf.cli", *args], env=ENV, stdout=log, stderr=log)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if shard.is_file() and shard.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.002)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "log.txt").read_text()[-3000:]
    written = shard.read_bytes()
    complete = written[: written.rfind(b"\n") + 1]
    assert 1 <= complete.count(b"\n") < NUM_INSTRUCTIONS
    assert not (output_dir / "data.jsonl").exists()
    with open(shard, "ab") as handle:  # a write torn by the kill
        handle.write(b'{"key": 15, "instruction": "Invent a ne')

    main(args)
    resumed = shard.read_bytes()
    assert resumed.startswith(complete)  # nothing written before was lost or rewritten
    assert sorted(r["key"] for r in lines(shard)) == list(range(NUM_INSTRUCTIONS))  # each answered exactly once
    assert (output_dir / "data.jsonl").read_text() == (reference / "data.jsonl").read_text()
    assert datasets.load_from_disk(str(output_dir / "dataset")).to_list() == lines(reference / "data.jsonl")

    # resuming with other settings is refused
    assert "other settings" in cli_error(capsys, synth_args(tiny_pair, instructions, output_dir, "--cd-beta", "0.5"))
    assert "--amateur" in cli_error(capsys, ["synth", "--instructions", str(instructions), "--output-dir",
                                             str(tmp_path / "x")])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_equal_one(tiny_pair, instructions, reference, tmp_path):
    """`torchrun --nproc_per_node 2` (what `accelerate launch --multi_gpu` runs; accelerate's `--cpu` launch starts a
    single process unless mpirun is configured) gives the one-process dataset."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")
    output_dir = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "ctd_hf.cli",
               *synth_args(tiny_pair, instructions, output_dir)]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for rank in (0, 1):
        keys = [r["key"] for r in lines(output_dir / f"shard-{rank:05d}-of-00002.jsonl")]
        assert sorted(keys) == list(range(rank, NUM_INSTRUCTIONS, 2))
    assert (output_dir / "data.jsonl").read_text() == (reference / "data.jsonl").read_text()


@pytest.mark.slow
def test_default_model_as_its_own_amateur_on_alpaca_eval(tmp_path):
    model, tokenizer = load_model_and_tokenizer("default")
    method = CDMethod(amateur=model)
    settings = SynthSettings(batch_size=3, generation=GenerationSettings(max_new_tokens=16), output_format="messages",
                             limit=3)
    dataset = synthesize(model, tokenizer, DATA / "alpaca_eval" / "alpaca_eval.json.gz", tmp_path, method, settings)
    assert len(dataset) == 3 and dataset.column_names == ["messages", "id"]
    for row in dataset:
        user, assistant = row["messages"]
        assert user["role"] == "user" and user["content"] and assistant["role"] == "assistant"
        assert assistant["content"].strip()
    assert lines(tmp_path / "data.jsonl") == dataset.to_list()
    assert json.loads((tmp_path / "synthesis_config.json").read_text())["method"]["method"] == "cd"
