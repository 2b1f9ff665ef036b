"""Several tuning seeds: one prefix per seed, reported as one method whose intervals resample seeds, then instances;
methods decoded once keep their numbers to the digit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from ctd_hf.cli import main
from ctd_hf.evaluation.report import statistics_markdown
from ctd_hf.evaluation.seeds import replicate_groups, seed_means
from ctd_hf.evaluation.statistics import paired_bootstrap, task_statistics
from ctd_hf.study.demo import DemoSettings, run_demo, summary
from ctd_hf.study.sweep import SweepSettings, SweepSpace, run_sweep
from ctd_hf.training.tuning import TuneSettings, seed_prefixes

from conftest import DATA, SFT_SAMPLE, cli_error

GROUPS = [f"task{t}" for t in range(8) for _ in range(5)]


def scores(seed_shift: list[float]) -> dict[str, dict[str, np.ndarray]]:
    """od, id and three ctd seeds on 40 instances; ctd seed k is od + 2 + noise + ``seed_shift[k]``."""
    rng = np.random.default_rng(0)
    od = rng.uniform(0, 100, 40)
    values = {"od": {"rougeL": od}, "id": {"rougeL": od + rng.normal(0, 5, 40)}}
    noise = rng.normal(0, 5, 40)
    for k, shift in enumerate(seed_shift):
        values[f"ctd#{k}"] = {"rougeL": od + 2 + noise + shift}
    return values


def test_the_two_level_interval_widens_with_disagreeing_seeds_only():
    replicates = {"ctd": ["ctd#0", "ctd#1", "ctd#2"]}
    one = task_statistics({k: v for k, v in scores([0.0]).items() if k != "ctd#1"}, GROUPS, "rougeL")
    copies = task_statistics(scores([0.0, 0.0, 0.0]), GROUPS, "rougeL", replicates=replicates)
    apart = task_statistics(scores([-6.0, 0.0, 6.0]), GROUPS, "rougeL", replicates=replicates)
    single = one["pairs"]["ctd#0 - od"]["differences"]["rougeL"]
    same = copies["pairs"]["ctd - od"]["differences"]["rougeL"]
    wide = apart["pairs"]["ctd - od"]["differences"]["rougeL"]
    assert same["low"] == pytest.approx(single["low"], abs=1e-9) and same["high"] == pytest.approx(single["high"],
                                                                                                   abs=1e-9)
    assert wide["difference"] == pytest.approx(single["difference"])  # the seeds' shifts cancel in the mean
    assert wide["high"] - wide["low"] > 1.5 * (single["high"] - single["low"])
    assert apart["pairs"]["ctd - od"]["variance"]["dominant"] == "seeds"
    variance = copies["pairs"]["ctd - od"]["variance"]
    assert variance["seeds"] == 3 and variance["seed_se"] == pytest.approx(0.0, abs=1e-9)
    assert variance["dominant"] == "instances"
    assert variance["instance_se"] == pytest.approx(np.std(scores([0.0])["ctd#0"]["rougeL"] - scores([0.0])["od"][
        "rougeL"], ddof=1) / np.sqrt(40))
    assert apart["methods"]["ctd"]["rougeL"]["seeds"] == pytest.approx(
        [float(np.mean(scores([-6.0, 0.0, 6.0])[f"ctd#{k}"]["rougeL"])) for k in range(3)])
    assert apart["methods"]["ctd"]["rougeL"]["seed_sd"] == pytest.approx(6.0)
    # Methods decoded once: the same numbers, to the digit, with or without seeds beside them.
    assert apart["methods"]["od"] == one["methods"]["od"] and apart["methods"]["id"] == one["methods"]["id"]
    assert apart["pairs"]["id - od"] == one["pairs"]["id - od"]
    # The same two-level interval from paired_bootstrap on seeds x instances.
    rows = np.stack([scores([-6.0, 0.0, 6.0])[f"ctd#{k}"]["rougeL"] for k in range(3)])
    assert paired_bootstrap(rows, scores([0.0])["od"]["rougeL"]) == wide
    lines = statistics_markdown("superni", apart)
    assert any(line.startswith("ctd is the mean of 3 prefixes (one per tuning seed: ctd#0, ctd#1, ctd#2)")
               for line in lines)
    assert any("standard error from the 3 prefixes" in line and "the seeds dominate" in line for line in lines)


def test_seed_labels_group_and_average():
    assert replicate_groups(["od", "ctd@0.1#0", "ctd@0.1#1", "id"]) == {"ctd@0.1": ["ctd@0.1#0", "ctd@0.1#1"]}
    merged = seed_means({"od": {"m": [1.0, 2.0]}, "ctd#0": {"m": [0.0, 4.0]}, "ctd#1": {"m": [2.0, 8.0]}},
                        {"ctd": ["ctd#0", "ctd#1"]})
    assert merged == {"od": {"m": [1.0, 2.0]}, "ctd": {"m": [1.0, 6.0]}}


def test_three_seeds_tune_three_prefixes_that_eval_reports_as_one_method(long_model_dir, tmp_path, capsys):
    folder = tmp_path / "prefixes"
    main(["tune", "--model", str(long_model_dir), "--data", str(SFT_SAMPLE), "--output-dir", str(folder),
          "--fraction", "0.02", "--max-length", "64", "--num-virtual-tokens", "4", "--max-steps", "1",
          "--seeds", "0,1,2"])
    prefixes = seed_prefixes(folder)
    assert prefixes == [str(folder / f"seed-{seed}") for seed in range(3)]
    tensors = [load_file(f"{prefix}/adapter_model.safetensors")["prompt_embeddings"] for prefix in prefixes]
    assert not any(a.equal(b) for i, a in enumerate(tensors) for b in tensors[i + 1:])  # three different draws
    assert seed_prefixes(f"{prefixes[2]},{prefixes[0]}") == [prefixes[2], prefixes[0]]
    with pytest.raises(FileNotFoundError, match="no seed-N prefix folder"):
        seed_prefixes(tmp_path)

    args = ["eval", "--model", str(long_model_dir), "--superni-dir", str(DATA / "supernatinst"), "--superni-tasks",
            "sample/train_tasks.txt", "--max-instances", "1", "--max-new-tokens", "4", "--batch-size", "4",
            "--max-source-tokens", "3000"]
    main([*args, "--methods", "od,id,ctd", "--prefix", str(folder), "--output-dir", str(tmp_path / "seeded")])
    main([*args, "--methods", "od,id,ctd", "--prefix", prefixes[0], "--output-dir", str(tmp_path / "alone")])
    seeded, alone = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("seeded", "alone"))
    superni, single = seeded["benchmarks"]["superni"], alone["benchmarks"]["superni"]
    assert list(superni["methods"]) == ["od", "id", "ctd"]
    assert superni["statistics"]["replicates"] == {"ctd": ["ctd#0", "ctd#1", "ctd#2"]}
    assert superni["statistics"]["methods"]["ctd"]["rougeL"]["seeds"][0] == pytest.approx(
        single["methods"]["ctd"]["overall"]["rougeL"])
    assert superni["methods"]["od"] == single["methods"]["od"] and superni["methods"]["id"] == single["methods"]["id"]
    assert superni["statistics"]["pairs"]["id - od"] == single["statistics"]["pairs"]["id - od"]
    assert "ctd is the mean of 3 prefixes" in (tmp_path / "seeded" / "report.md").read_text()
    error = cli_error(capsys, [*args, "--methods", "ctd", "--prefix", str(tmp_path / "nope"), "--output-dir",
                               str(tmp_path / "x")])
    assert "nope holds no adapter_model.safetensors and no seed-N prefix folder" in error


def test_a_sweep_with_seeds_tunes_a_prefix_per_seed_and_bootstraps_the_winner_over_them(long_model_dir, tmp_path):
    def sweep(seeds):
        return SweepSettings(space=SweepSpace(data=("alpaca",), steps=(1,), betas=(0.0, 0.5)), model=str(long_model_dir),
                             rungs=(1,), max_new_tokens=4, batch_size=2, max_length=2048, id_strengths=(0.3,),
                             eval_batch_size=6, max_source_tokens=3000, seeds=seeds)

    board = run_sweep(sweep((0, 1)), tmp_path / "seeded")
    trial = tmp_path / "seeded" / "trials" / board["winner"]["trial"]
    tensors = [load_file(trial / "prefix" / f"seed-{seed}" / "adapter_model.safetensors")["prompt_embeddings"]
               for seed in (0, 1)]
    assert not tensors[0].equal(tensors[1])
    result = board["trials"][0]["results"][-1]
    assert result["scores"]["ctd@0"] == pytest.approx(board["baselines"][0]["od"], abs=1e-4)  # beta 0 is od
    report = json.loads((trial / "dev" / "report.json").read_text())["benchmarks"]["superni"]
    assert report["statistics"]["replicates"] == {"ctd@0": ["ctd@0#0", "ctd@0#1"], "ctd@0.5": ["ctd@0.5#0", "ctd@0.5#1"]}
    winner = board["winner"]  # compared on the seeds' mean per instance
    assert set(winner["versus"]) == {"od", "id@0.3"}
    assert winner["versus"]["od"]["difference"] == pytest.approx(winner["score"] - board["baselines"][0]["od"])
    assert (tmp_path / "seeded" / "sweep.json").read_text().count('"seeds": [\n    0,\n    1\n  ]') == 1


def test_the_demo_with_seeds_prints_how_many_prefixes_its_verdict_rests_on(long_model_dir, tmp_path):
    tuning = TuneSettings(data="superni", max_steps=1, batch_size=2, max_length=2048)
    settings = DemoSettings(tuning=tuning, per_category=1, max_new_tokens=4, max_source_tokens=3000, seeds=(0, 1))
    report = run_demo(tmp_path / "demo", settings, model=str(long_model_dir))
    assert sorted(path.name for path in (tmp_path / "demo" / "prefixes").iterdir()) == ["seed-0", "seed-1"]
    assert list(report["benchmarks"]["superni"]["methods"]) == ["od", "id", "ctd"]
    printed = summary(report, tmp_path / "demo" / "eval")
    assert "ctd is the mean of 2 prefixes, one per tuning seed (Rouge-L " in printed
    assert "its intervals resample the seeds, then the instances" in printed
