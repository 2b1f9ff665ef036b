"""Kill -9 at several points of `tune`, `eval` and `synth`, restart, and compare with an uninterrupted run: nothing
written is lost, nothing is done twice; a resume with another model or setting is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from ctd_hf.records import read_records

from conftest import DATA, LONG, SFT_SAMPLE, build_model, cli_error

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ctd_hf.cli", *args]


def kill_when(command: list[str], ready: Callable[[], bool], log: Path, timeout: float = 300) -> None:
    """Start ``command`` and SIGKILL it as soon as ``ready()`` holds (it must not finish first)."""
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=ENV, stdout=handle, stderr=handle)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline and not ready():
            time.sleep(0.005)
        finished = process.poll() is not None
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert not finished, f"the run ended before the kill point:\n{log.read_text()[-3000:]}"


def run(command: list[str]) -> None:
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def tune_args(model_dir: Path, output_dir: Path) -> list[str]:
    return ["tune", "--model", str(model_dir), "--data", str(SFT_SAMPLE), "--output-dir", str(output_dir),
            "--fraction", "0.03", "--max-length", "96", "--batch-size", "2", "--max-steps", "6", "--save-steps", "1",
            "--num-virtual-tokens", "4", "--lr", "0.05"]


def test_tune_killed_at_several_points_resumes_to_the_same_prefix(long_model_dir, tmp_path):
    run(cli(*tune_args(long_model_dir, tmp_path / "full")))
    expected = load_file(tmp_path / "full" / "adapter_model.safetensors")["prompt_embeddings"]
    out = tmp_path / "cut"
    points = {
        "before any checkpoint": lambda: (out / "tune_settings.json").is_file(),
        "after checkpoint 2": lambda: (out / "checkpoint-2" / "trainer_state.json").is_file(),
        "while writing checkpoint 4": lambda: (out / "checkpoint-4").is_dir(),
    }
    for name, ready in points.items():
        kill_when(cli(*tune_args(long_model_dir, out)), ready, tmp_path / f"{name}.log")
    run(cli(*tune_args(long_model_dir, out)))
    resumed = load_file(out / "adapter_model.safetensors")["prompt_embeddings"]
    assert (resumed - expected).abs().max() < 1e-6
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4, 5, 6]


def eval_args(model_dir: Path, output_dir: Path) -> list[str]:
    return ["eval", "--model", str(model_dir), "--methods", "od,id", "--superni-dir", str(DATA / "supernatinst"),
            "--superni-tasks", "sample/train_tasks.txt", "--max-instances", "2", "--max-new-tokens", "4",
            "--batch-size", "2", "--max-source-tokens", "3000", "--output-dir", str(output_dir)]


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def test_eval_killed_at_several_points_resumes_to_the_same_report(long_model_dir, tmp_path):
    run(cli(*eval_args(long_model_dir, tmp_path / "full")))
    out = tmp_path / "cut"
    folder = out / "predictions" / "superni"
    points = {"after the first od batch": lambda: lines(folder / "od" / "rank-0.jsonl") >= 2,
              "inside id": lambda: lines(folder / "id" / "rank-0.jsonl") >= 6}
    for name, ready in points.items():
        kill_when(cli(*eval_args(long_model_dir, out)), ready, tmp_path / f"{name}.log")
    written = {name: (folder / name / "rank-0.jsonl").read_bytes() for name in ("od", "id")}
    run(cli(*eval_args(long_model_dir, out)))
    for name, before in written.items():
        after = (folder / name / "rank-0.jsonl").read_bytes()
        assert after.startswith(before[: before.rfind(b"\n") + 1])  # nothing written before was lost
        ids = [record["id"] for record in read_records(folder / name / "rank-0.jsonl")]
        assert len(ids) == len(set(ids)) == 24  # nothing done twice
    report = json.loads((out / "report.json").read_text())["benchmarks"]
    assert report == json.loads((tmp_path / "full" / "report.json").read_text())["benchmarks"]


def test_eval_resume_with_another_model_or_setting_is_refused(long_model_dir, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = eval_args(long_model_dir, out)
    run(cli(*args))
    other = tmp_path / "other"
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    build_model(len(tokenizer), seed=3, max_position_embeddings=LONG).save_pretrained(other)
    tokenizer.save_pretrained(other)
    model_at = args.index("--model") + 1
    assert "another model" in cli_error(capsys, args[:model_at] + [str(other)] + args[model_at + 1:])
    assert "other settings" in cli_error(capsys, [*args, "--id-strength", "0.5"])
    assert "other settings" in cli_error(capsys, [*args, "--prompt-format", "alpaca"])


def synth_args(model_dir: Path, amateur_dir: Path, instructions: Path, output_dir: Path) -> list[str]:
    return ["synth", "--expert", str(model_dir), "--amateur", str(amateur_dir), "--instructions", str(instructions),
            "--output-dir", str(output_dir), "--batch-size", "2", "--max-new-tokens", "8"]


def test_synth_killed_at_several_points_resumes_to_the_same_dataset(long_model_dir, tokenizer_dir, tmp_path, capsys):
    amateur = tmp_path / "amateur"
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    build_model(len(tokenizer), seed=1, initializer_range=0.3, num_hidden_layers=1).save_pretrained(amateur)
    tokenizer.save_pretrained(amateur)
    rows = json.loads(SFT_SAMPLE.read_text())[:12]
    instructions = tmp_path / "instructions.json"
    instructions.write_text(json.dumps([{"instruction": r["instruction"], "input": r["input"]} for r in rows]))
    run(cli(*synth_args(long_model_dir, amateur, instructions, tmp_path / "full")))
    out = tmp_path / "cut"
    shard = out / "shard-00000-of-00001.jsonl"
    for name, count in (("after one batch", 2), ("after half", 6)):
        kill_when(cli(*synth_args(long_model_dir, amateur, instructions, out)), lambda: lines(shard) >= count,
                  tmp_path / f"{name}.log")
    before = shard.read_bytes()
    run(cli(*synth_args(long_model_dir, amateur, instructions, out)))
    assert shard.read_bytes().startswith(before[: before.rfind(b"\n") + 1])
    assert sorted(record["key"] for record in read_records(shard)) == list(range(12))
    assert (out / "data.jsonl").read_text() == (tmp_path / "full" / "data.jsonl").read_text()
    args = synth_args(long_model_dir, amateur, instructions, out)
    expert_at = args.index("--expert") + 1
    error = cli_error(capsys, args[:expert_at] + [str(amateur)] + args[expert_at + 1:])
    assert "other settings" in error and "expert" in error
