"""Kill -9 at several points of `tune`, `eval` and `synth`, restart, and compare with an uninterrupted run: nothing
written is lost, nothing is done twice; a resume with another model or setting is refused."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from ctd_hf.cli import main
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


# Round 3: a resume key records what the answers depend on, by content, for everything the folder holds. Each test
# below failed on ctd_hf 0.3, which resumed without a word.


def report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())["benchmarks"]


def test_eval_resume_remembers_the_methods_a_smaller_rerun_left_out(long_model_dir, tmp_path, capsys):
    """0.3: od,ctd at beta 0.1, then od alone into the same folder, then od,ctd at beta 2.0: the third run reused
    beta 0.1's ctd answers under a report that said 2.0 (the second run had recorded its settings without ctd)."""
    prefix = tmp_path / "prefix"
    main(["tune", "--model", str(long_model_dir), "--output-dir", str(prefix), "--max-steps", "1", "--fraction",
          "0.02", "--max-length", "64", "--num-virtual-tokens", "4", "--data", str(SFT_SAMPLE)])
    args = [*eval_args(long_model_dir, tmp_path / "run"), "--max-instances", "1"]
    ctd = ["--methods", "od,ctd", "--prefix", str(prefix)]
    main([*args, *ctd, "--beta", "0.1"])
    main([*args, "--methods", "od"])
    error = cli_error(capsys, [*args, *ctd, "--beta", "2.0"])
    assert "ctd's strength (0.1 -> 2.0)" in error and "--restart" in error
    main([*args, *ctd, "--beta", "2.0", "--restart"])
    main([*eval_args(long_model_dir, tmp_path / "fresh"), "--max-instances", "1", *ctd, "--beta", "2.0"])
    assert report(tmp_path / "run") == report(tmp_path / "fresh")


def test_eval_resume_after_the_task_changed_is_refused(long_model_dir, tmp_path, capsys):
    """0.3: predictions made on a task's old definition and inputs were kept after the task file was edited."""
    source = DATA / "supernatinst" / "tasks" / "task033_winogrande_answer_generation.json"
    folder = tmp_path / "ni"
    (folder / "tasks").mkdir(parents=True)
    (folder / "splits").mkdir()
    (folder / "splits" / "mine.txt").write_text("task033_winogrande_answer_generation\n")
    task = json.loads(source.read_text())
    task["Instances"] = task["Instances"][:3]
    path = folder / "tasks" / source.name
    path.write_text(json.dumps(task))
    args = ["eval", "--model", str(long_model_dir), "--methods", "od", "--superni-dir", str(folder), "--superni-tasks",
            "mine.txt", "--max-new-tokens", "4", "--output-dir", str(tmp_path / "run")]
    main(args)
    task["Definition"] = ["Answer with one word."]
    task["Instances"][0]["input"] = "A new question."
    path.write_text(json.dumps(task))
    error = cli_error(capsys, args)
    assert "another prompt or references" in error and "--restart" in error
    main([*args, "--restart"])
    fresh = [*args[:-1], str(tmp_path / "fresh")]
    main(fresh)
    assert report(tmp_path / "run") == report(tmp_path / "fresh")


def sft_file(path: Path, rows: int = 12) -> Path:
    path.write_text(json.dumps(json.loads(SFT_SAMPLE.read_text())[:rows]))
    return path


def test_tune_resume_after_the_data_changed_is_refused(long_model_dir, tmp_path, capsys):
    """0.3: a run killed at a checkpoint resumed on a data file edited in place (the key held its path only)."""
    data = sft_file(tmp_path / "data.json")
    args = [*tune_args(long_model_dir, tmp_path / "run"), "--data", str(data), "--fraction", "1"]
    kill_when(cli(*args), lambda: (tmp_path / "run" / "checkpoint-2" / "trainer_state.json").is_file(),
              tmp_path / "kill.log")
    rows = json.loads(data.read_text())
    rows[0]["output"] = "Something else entirely."
    data.write_text(json.dumps(rows))
    assert "the data's content" in cli_error(capsys, args)
    run(cli(*args, "--restart"))
    fresh = [*tune_args(long_model_dir, tmp_path / "fresh"), "--data", str(data), "--fraction", "1"]
    run(cli(*fresh))
    prefixes = [load_file(tmp_path / name / "adapter_model.safetensors")["prompt_embeddings"] for name in
                ("run", "fresh")]
    assert (prefixes[0] - prefixes[1]).abs().max() < 1e-6


def test_tune_rerun_with_another_length_is_refused(long_model_dir, tmp_path, capsys):
    """0.3: a finished 6-step run rerun with 8 steps, or a run killed at step 2 of 8 rerun with 6, trained on under a
    schedule planned for the other length and recorded one run of the new length."""
    out = tmp_path / "run"
    run(cli(*tune_args(long_model_dir, out)))
    assert "length of training" in cli_error(capsys, [*tune_args(long_model_dir, out), "--max-steps", "8"])
    other = tmp_path / "other"
    kill_when(cli(*tune_args(long_model_dir, other), "--max-steps", "8"),
              lambda: (other / "checkpoint-2" / "trainer_state.json").is_file(), tmp_path / "kill.log")
    error = cli_error(capsys, tune_args(long_model_dir, other))
    assert re.search(r"length of training \(a run planned for 8 steps, \d done; now \{'epochs': 1.0, 'max_steps': 6\}",
                     error), error
