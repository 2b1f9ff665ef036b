"""The evaluation runner: reports, resume after an interruption, data-parallel equality, all four benchmarks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from ctd_hf import get_task
from ctd_hf.evaluation.runner import EvalSettings, run_evaluation
from ctd_hf.evaluation.scoring import load_metric
from ctd_hf.decoding.methods import CTDMethod, DecodingMethod, IDMethod, ODMethod
from ctd_hf.models import ensure_pad_token
from ctd_hf.records import read_records

from conftest import DATA, LONG, build_model

SUPERNI = dict(options={"superni": dict(dir=str(DATA / "supernatinst"), tasks="sample/train_tasks.txt",
                                         categories="sample/train_task_test_category_analog.json", max_instances=2)},
               max_new_tokens={"superni": 6, "drop": 4, "alpacaeval": 4}, batch_size=4, max_source_tokens=3000)


def methods_for(model) -> dict[str, DecodingMethod]:
    torch.manual_seed(3)
    prefix = torch.randn(4, model.config.hidden_size) * 0.5
    return {"od": ODMethod(), "id": IDMethod(), "ctd": CTDMethod(prefix=prefix)}


def test_superni_report_tables_and_plots(tokenizer, tmp_path):
    ensure_pad_token(tokenizer)
    model = build_model(len(tokenizer), initializer_range=0.3, max_position_embeddings=LONG)
    report = run_evaluation(model, tokenizer, methods_for(model), EvalSettings(**SUPERNI), tmp_path, "tiny-llama")
    superni = report["benchmarks"]["superni"]
    assert superni["tasks"] == 12 and superni["instances"] == 24
    assert set(superni["methods"]) == {"od", "id", "ctd"}
    assert len(superni["methods"]["od"]["categories"]) == 12
    assert set(superni["winning_rate"]) == {f"{a} > {b}" for a in ("od", "id", "ctd") for b in ("od", "id", "ctd")
                                            if a != b}
    changes = superni["token_changes"]
    assert set(changes) == {"id", "ctd"} and changes["ctd"]["tokens"] > 0
    markdown = (tmp_path / "report.md").read_text()
    assert "| Method | Overall | TG | CR | TE | QR | CEC | DAR | AC | KT | DT | WA | OE | GEC |" in markdown
    for png in ("superni_categories.png", "token_changes_superni.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    settings = json.loads((tmp_path / "report.json").read_text())["settings"]
    assert settings["methods"]["id"] == {"method": "id", "strength": 0.3, "noise": "opposite", "noise_rate": 0.6}
    assert {"torch", "transformers", "peft", "ctd_hf"} <= set(settings["versions"])
    # Every number is the mean of the per-instance scores of the written predictions (issue 20), overall, per category
    # and per task; the scores are recomputed here with the metric script.
    task = get_task("superni")
    items = task.load(task.make_options(SUPERNI["options"]["superni"]))
    metric = load_metric("superni", keep_in_memory=True)
    for name, reported in superni["methods"].items():
        path = tmp_path / "predictions" / "superni" / name / "rank-0.jsonl"
        found = {r["id"]: r["prediction"] for r in read_records(path)}
        scores = metric.compute(predictions=[found[i["id"]] for i in items],
                                references=[i["references"] for i in items], per_instance=True)

        def means(keep) -> dict:
            return {k: pytest.approx(np.mean([v for v, i in zip(values, items) if keep(i)]), abs=1e-9)
                    for k, values in scores.items()}

        assert reported["overall"] == means(lambda item: True)
        assert reported["categories"] == {c: means(lambda item: item["category"] == c)
                                          for c in {i["category"] for i in items}}
        assert reported["tasks"] == {t: means(lambda item: item["group"] == t) for t in {i["group"] for i in items}}


def test_interrupted_run_resumes_to_the_same_report(tokenizer, tmp_path):
    ensure_pad_token(tokenizer)
    model = build_model(len(tokenizer), initializer_range=0.3, max_position_embeddings=LONG)
    settings = EvalSettings(**SUPERNI)
    full = run_evaluation(model, tokenizer, methods_for(model), settings, tmp_path / "full", "tiny-llama")
    cut = tmp_path / "cut"
    run_evaluation(model, tokenizer, methods_for(model), settings, cut, "tiny-llama")
    # Interrupt: keep 5 of od's predictions, leave a torn line, drop id's file entirely.
    od = cut / "predictions" / "superni" / "od" / "rank-0.jsonl"
    od.write_text("".join(od.read_text().splitlines(keepends=True)[:5]) + '{"id": "torn')
    (cut / "predictions" / "superni" / "id" / "rank-0.jsonl").unlink()
    resumed = run_evaluation(model, tokenizer, methods_for(model), settings, cut, "tiny-llama")
    assert resumed["benchmarks"] == full["benchmarks"]
    assert len(od.read_text().splitlines()) == 24
    changed = EvalSettings(**{**SUPERNI, "max_new_tokens": {"superni": 9}})
    with pytest.raises(ValueError, match="other settings.*max_new_tokens"):
        run_evaluation(model, tokenizer, methods_for(model), changed, cut, "tiny-llama")


def test_all_benchmarks_run(tokenizer, tmp_path):
    ensure_pad_token(tokenizer)
    model = build_model(len(tokenizer), initializer_range=0.3, max_position_embeddings=LONG)
    options = {"drop": {"limit": 3}, "mmlu": {"limit": 1, "shots": 1}, "alpacaeval": {"limit": 3}}
    settings = EvalSettings(benchmarks=("drop", "mmlu", "alpacaeval"), options=options,
                            **{k: v for k, v in SUPERNI.items() if k != "options"})
    report = run_evaluation(model, tokenizer, {"od": ODMethod(), "id": IDMethod()}, settings,
                            tmp_path, "tiny-llama")
    benchmarks = report["benchmarks"]
    assert set(benchmarks["drop"]["methods"]["id"]) == {"exact_match", "f1"}
    assert benchmarks["mmlu"]["instances"] == 57 and 0 <= benchmarks["mmlu"]["methods"]["od"]["accuracy"] <= 100
    predictions = json.loads((tmp_path / "alpaca_eval_id.json").read_text())
    assert len(predictions) == 3 and set(predictions[0]) == {"instruction", "output", "generator", "dataset"}
    assert predictions[0]["generator"] == "tiny-llama-id"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_evaluation_equals_one_process(long_model_dir, tmp_path):
    args = ["eval", "--model", str(long_model_dir), "--methods", "od,id", "--superni-tasks", "sample/train_tasks.txt",
            "--max-instances", "2", "--max-new-tokens", "4", "--batch-size", "4", "--no-token-changes",
            "--max-source-tokens", "3000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "ctd_hf.cli", *args, "--output-dir", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
              "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "ctd_hf.cli"]
    double = subprocess.run([*launch, *args, "--output-dir", str(tmp_path / "two")], env=env, capture_output=True,
                            text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-2000:]
    assert len(list((tmp_path / "two" / "predictions" / "superni" / "od").glob("rank-*.jsonl"))) == 2
    one = json.loads((tmp_path / "one" / "report.json").read_text())["benchmarks"]
    two = json.loads((tmp_path / "two" / "report.json").read_text())["benchmarks"]
    assert one == two


def test_labels_of_one_method_at_several_strengths_keep_their_predictions_apart(tokenizer, tmp_path):
    """`ctd@0` and `ctd@0.5` in one run each answer every item themselves (a file pattern for `ctd@0` once also
    matched `ctd@0.5`'s file and mixed the two)."""
    ensure_pad_token(tokenizer)
    model = build_model(len(tokenizer), initializer_range=0.3, max_position_embeddings=LONG)
    torch.manual_seed(3)
    prefix = torch.randn(4, model.config.hidden_size) * 0.5
    settings = EvalSettings(**SUPERNI, token_changes=False)
    both = {label: CTDMethod(prefix=prefix, strength=value) for label, value in
            (("ctd@0", 0.0), ("ctd@0.5", 0.5))}
    together = run_evaluation(model, tokenizer, both, settings, tmp_path / "both", "tiny-llama")
    for label, method in both.items():
        alone = run_evaluation(model, tokenizer, {label: method}, settings, tmp_path / label, "tiny-llama")
        assert alone["benchmarks"]["superni"]["methods"][label] == together["benchmarks"]["superni"]["methods"][label]
    plain = run_evaluation(model, tokenizer, {"od": ODMethod()}, settings, tmp_path / "od", "tiny-llama")
    assert together["benchmarks"]["superni"]["methods"]["ctd@0"] == plain["benchmarks"]["superni"]["methods"]["od"]


def test_eval_cli_decodes_one_prefix_at_several_strengths(long_model_dir, tmp_path, capsys):
    from ctd_hf.cli import main

    model_dir = long_model_dir
    main(["tune", "--model", str(model_dir), "--output-dir", str(tmp_path / "prefix"), "--max-steps", "1",
          "--fraction", "0.01", "--max-length", "96", "--batch-size", "2", "--num-virtual-tokens", "3"])
    main(["eval", "--model", str(model_dir), "--methods", "od,ctd@0,ctd@0.5", "--prefix", str(tmp_path / "prefix"),
          "--superni-tasks", "sample/train_tasks.txt", "--max-instances", "1", "--max-new-tokens", "3",
          "--max-source-tokens", "3000", "--output-dir", str(tmp_path / "eval")])
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    methods = report["benchmarks"]["superni"]["methods"]
    assert list(methods) == ["od", "ctd@0", "ctd@0.5"]
    assert methods["ctd@0"] == methods["od"]  # beta 0 is plain decoding
    assert report["settings"]["methods"]["ctd@0.5"]["strength"] == 0.5
    assert "ctd@0.5 - od" in capsys.readouterr().out
