"""The study tools on a tiny model: the sweep (successive halving, baselines, leaderboard, resume, time budget,
workers), the tuning data it compares, and the demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctd_hf.study.demo import DemoSettings, run_demo, summary
from ctd_hf.study.sweep import SweepSettings, SweepSpace, run_sweep
from ctd_hf.study.tuning_data import self_generated_rows, superni_rows
from ctd_hf.training.tuning import TuneSettings

from conftest import cli_error

SPACE = dict(data=("alpaca", "superni"), steps=(1, 2), betas=(0.0, 0.5))


@pytest.fixture(scope="module")
def model_dir(long_model_dir) -> Path:
    return long_model_dir


def settings(model_dir: Path, **space) -> SweepSettings:
    return SweepSettings(space=SweepSpace(**{**SPACE, **space}), model=str(model_dir), rungs=(1, 2), keep=0.5,
                         max_new_tokens=4, batch_size=2, max_length=2048, id_strengths=(0.3,), eval_batch_size=6,
                         max_source_tokens=3000)  # the tiny tokenizer splits text finely


@pytest.fixture(scope="module")
def swept(model_dir, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("sweep") / "run"
    run_sweep(settings(model_dir), output)
    return output


def test_sweep_halves_scores_on_dev_tasks_and_writes_a_leaderboard(swept):
    board = json.loads((swept / "leaderboard.json").read_text())
    assert len(board["trials"]) == 4 and not board["pending"]
    rungs = [row["results"][-1]["rung"] for row in board["trials"]]
    assert sorted(rungs) == [0, 0, 1, 1]  # keep 0.5 of 4 trials for the second rung
    assert [row["results"][-1]["instances"] for row in board["trials"]][:2] == [12, 12]  # 6 dev tasks x 2
    # beta 0 is plain decoding: on the same instances it scores exactly what the od baseline scores.
    for row in board["trials"]:
        last = row["results"][-1]
        assert last["scores"]["ctd@0"] == pytest.approx(board["baselines"][str(last["rung"])]["od"], abs=1e-4)
    winner = board["winner"]
    assert winner["trial"] == board["trials"][0]["trial"] and set(winner["versus"]) == {"od", "id@0.3"}
    assert "## Selected" in (swept / "leaderboard.md").read_text()
    assert (swept / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"
    predictions = swept / "baselines" / "predictions" / "superni"
    ids = {record.split('"id": "')[1].split('"')[0] for record in (predictions / "od" / "rank-0.jsonl").read_text()
           .splitlines()}
    assert all(item.split("-")[0] in {"task1216", "task342", "task110", "task1288", "task1294", "task1355"}
               for item in ids)  # development tasks only, never a test task


def test_sweep_resumes_without_redoing_and_refuses_other_settings(swept, model_dir, capsys):
    stamps = {path: path.stat().st_mtime_ns for path in swept.rglob("rung-*.json")}
    run_sweep(settings(model_dir), swept)
    assert {path: path.stat().st_mtime_ns for path in swept.rglob("rung-*.json")} == stamps
    with pytest.raises(ValueError, match="other settings"):
        run_sweep(settings(model_dir, betas=(0.0, 0.7)), swept)


def test_time_budget_and_workers(model_dir, tmp_path, swept):
    output = tmp_path / "budget"
    board = run_sweep(settings(model_dir), output, time_budget=1e-6)
    assert not board["trials"] and len(board["pending"]) == 4
    run_sweep(settings(model_dir), output, workers=2)  # resumes, two processes per rung
    mine = json.loads((output / "leaderboard.json").read_text())
    reference = json.loads((swept / "leaderboard.json").read_text())
    assert [(r["trial"], r["results"]) for r in mine["trials"]] == [(r["trial"], r["results"])
                                                                    for r in reference["trials"]]


def test_sweep_cli_refuses_bad_knobs(capsys, tmp_path):
    assert "neither one of" in cli_error(capsys, ["sweep", "--output-dir", str(tmp_path), "--data", "wiki"])
    assert "rungs" in cli_error(capsys, ["sweep", "--output-dir", str(tmp_path), "--rungs", "20,5"])


def test_tuning_data_sources(model_dir, tmp_path):
    from ctd_hf import load_model_and_tokenizer

    rows = superni_rows()
    assert len(rows) == 6 * 20 + 0 and rows[0]["messages"][0]["content"].startswith("Definition: ")
    model, tokenizer = load_model_and_tokenizer(str(model_dir))
    own = self_generated_rows(model, tokenizer, tmp_path / "answers.jsonl", "chatml", count=3, max_new_tokens=3,
                              batch_size=2)
    answered = [row for row in own if not row["messages"][0]["content"].startswith("Definition: ")]
    assert len(own) - len(answered) == len(rows) and len(answered) <= 3
    assert (tmp_path / "answers.jsonl").read_text().count("\n") == 3  # resumable: every answer written


def test_demo_reports_differences_with_intervals(model_dir, tmp_path, capsys):
    tuning = TuneSettings(data="superni", max_steps=1, batch_size=2, max_length=2048)
    settings = DemoSettings(tuning=tuning, per_category=1, max_new_tokens=4, max_source_tokens=3000)
    report = run_demo(tmp_path / "demo", settings, model=str(model_dir))
    printed = summary(report, tmp_path / "demo" / "eval")  # what `ctd-hf demo` prints
    # The broad held-out sample: 34 test tasks, every one of its 10 categories, in the paper's Table 1 order.
    assert "| Method | Overall | TG | CR | TE | QR | CEC | DAR | AC | KT | DT | WA | task wins |" in printed
    superni = report["benchmarks"]["superni"]
    assert superni["tasks"] == 34 and superni["instances"] == 34
    for pair in ("ctd - od", "ctd - id", "id - od"):
        assert f"| {pair} |" in printed and f"- {pair}: " in printed and "sign test p = " in printed
    assert set(report["benchmarks"]["superni"]["methods"]) == {"od", "id", "ctd"}
    assert "ctd rests on one prefix: its intervals cover the instances only" in printed
    for name in ("report.md", "report.json", "superni_categories.png"):
        assert (tmp_path / "demo" / "eval" / name).is_file()
    tuned_on = (tmp_path / "demo" / "data" / "superni.jsonl").read_text().splitlines()
    assert len(tuned_on) == len(superni_rows()) and json.loads(tuned_on[0])["messages"][-1]["role"] == "assistant"
    again = run_demo(tmp_path / "demo", settings, model=str(model_dir))  # resumes: nothing left to tune or decode
    assert again["benchmarks"] == report["benchmarks"]


@pytest.mark.parametrize("argv, folder, settings", [
    ([], "runs/demo", "FULL"), (["--quick"], "runs/demo-quick", "QUICK"), (["--quick", "--output-dir", "mine"], "mine",
                                                                           "QUICK")])
def test_demo_and_quick_demo_write_to_separate_folders(monkeypatch, argv, folder, settings):
    """A quick run first must not block the full one: their tuning settings differ, so one folder would refuse."""
    import ctd_hf.cli.demo as cli_demo
    from ctd_hf.cli import main
    from ctd_hf.study import demo

    calls = []
    monkeypatch.setattr(cli_demo, "run_demo", lambda output_dir, chosen, prefix, model: calls.append((output_dir,
                                                                                                      chosen)))
    monkeypatch.setattr(cli_demo, "summary", lambda report, folder: "")
    main(["demo", *argv])
    assert calls == [(folder, getattr(demo, settings))]
