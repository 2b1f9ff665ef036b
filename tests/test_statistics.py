"""Bootstrap intervals, paired bootstrap tests and sign tests against hand-computed cases, their determinism, the
statistics section of reports, and per-instance scores that average to the reported ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ctd_hf.decoding.methods import CTDMethod, IDMethod, ODMethod
from ctd_hf.evaluation.report import statistics_markdown
from ctd_hf.evaluation.runner import EvalSettings, run_evaluation
from ctd_hf.evaluation.scoring import load_metric
from ctd_hf.evaluation.statistics import (RESAMPLES, bootstrap_interval, group_wins, paired_bootstrap, sign_test,
                                          task_statistics)
from ctd_hf.evaluation.tasks import ScoreContext, get_task
from ctd_hf.models import ensure_pad_token

from conftest import DATA, build_model

# The smallest p-value of the add-one corrected test: 2 * (1 + 0) / (B + 1).
P_MIN = 2 / (RESAMPLES + 1)


def test_sign_test_hand_computed():
    # 9 wins, 1 loss out of 10: P(X <= 1) = (C(10,0) + C(10,1)) / 2^10 = 11/1024; two-sided doubles it: 22/1024.
    assert sign_test(9, 1) == pytest.approx(0.021484375, rel=1e-12)
    assert sign_test(1, 9) == pytest.approx(0.021484375, rel=1e-12)
    # 3 wins, no loss: P(X = 3) = 1/8, doubled = 1/4.
    assert sign_test(3, 0) == pytest.approx(0.25, rel=1e-12)
    # A balanced split and no decided group at all are no evidence.
    assert sign_test(5, 5) == 1.0 and sign_test(0, 0) == 1.0


def test_group_wins_drop_ties_from_the_sign_test():
    # 12 groups of 2 instances: a's group mean is higher in 9, lower in 1, equal in 2 (one of them with unequal
    # instances, +10 and -10, whose means still tie).
    groups = [f"g{g}" for g in range(12) for _ in range(2)]
    b = np.full(24, 50.0)
    a = b + np.repeat([5.0] * 9 + [-5.0, 0.0, 0.0], 2)
    a[22:] = [60.0, 40.0]
    assert group_wins(a, b, groups) == (9, 1, 2)
    assert group_wins(b, a, groups) == (1, 9, 2)
    stats = task_statistics({"b": {"m": b}, "a": {"m": a}}, groups, "m")
    assert stats["pairs"]["a - b"]["by_group"] == {"metric": "m", "wins": 9, "losses": 1, "ties": 2,
                                                   "sign_test_p": pytest.approx(0.021484375, rel=1e-12)}
    # One group: its wins are counted, the sign test is skipped.
    one = task_statistics({"b": {"m": b}, "a": {"m": a}}, ["all"] * 24, "m")
    assert one["groups"] == 1
    assert one["pairs"]["a - b"]["by_group"] == {"metric": "m", "wins": 1, "losses": 0, "ties": 0, "sign_test_p": None}
    lines = statistics_markdown("drop", one)
    assert lines[0] == "## drop: statistics (24 instances, 1 group)"
    assert "- a vs b per group (m): wins 1, losses 0, ties 0 of 1 group; no sign test (fewer than 2 groups)." in lines


def test_constant_values_give_a_point_interval():
    assert bootstrap_interval([7.5] * 5) == (7.5, 7.5)
    assert bootstrap_interval([42.0]) == (42.0, 42.0)


def test_equal_differences_collapse_the_paired_interval():
    # Every a_i - b_i = 2.5 (exact in binary): every resampled mean is 2.5, so the interval is [2.5, 2.5] and no
    # resample is <= 0: p = 2 * (1 + 0) / (B + 1), the smallest the add-one correction allows.
    b = np.array([0.0, 100.0, 50.0, 25.0, 75.0])
    assert paired_bootstrap(b + 2.5, b) == {"difference": 2.5, "low": 2.5, "high": 2.5, "p_value": P_MIN}
    assert paired_bootstrap(b, b + 2.5) == {"difference": -2.5, "low": -2.5, "high": -2.5, "p_value": P_MIN}
    # Identical methods: every resampled difference is 0, both counts are B: p = min(1, 2 (B + 1) / (B + 1)) = 1.
    assert paired_bootstrap(b, b) == {"difference": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}


def test_bootstrap_interval_matches_the_enumerated_distribution():
    # Values (0, 0, 3): the 27 equally likely resamples have k = 0..3 threes, k ~ Binomial(3, 1/3), mean = k:
    # P(0) = 8/27 = 29.6%, P(1) = 12/27 = 44.4%, P(2) = 6/27 = 22.2%, P(3) = 1/27 = 3.7%; cumulative 29.6%, 74.1%,
    # 96.3%, 100%. The 80% interval's 10% quantile lies in the block of 0s and its 90% quantile in the block of 2s,
    # each several Monte-Carlo standard deviations (sqrt(p (1 - p) / B) < 0.5%) inside its block: exactly (0, 2).
    assert bootstrap_interval([0.0, 0.0, 3.0], confidence=0.8) == (0.0, 2.0)
    # At 95% the 2.5% and 97.5% quantiles fall in the extreme blocks (3.7% each): the interval is (0, 3).
    assert bootstrap_interval([0.0, 0.0, 3.0]) == (0.0, 3.0)


def test_paired_bootstrap_matches_the_enumerated_distribution():
    # Differences d = (-1, 0, 4), mean 1. Of the 27 resamples (k_-1, k_0, k_4 counts), the sum -k_-1 + 4 k_4 is
    # <= 0 only without a 4 (4 k_4 >= 4 > k_-1 otherwise): 2^3 = 8 resamples, P(D <= 0) = 8/27; it is >= 0 with a 4
    # (19 resamples) or with all 0s (1): P(D >= 0) = 20/27. So p = 2 * min(8/27, 20/27) = 16/27 = 0.593 (Monte-Carlo
    # standard deviation 2 * sqrt((8/27)(19/27) / B) = 0.009; tolerance 0.04). The extreme means -1 (all -1) and 4
    # (all 4) each have probability 1/27 = 3.7% > 2.5%, so the 95% interval is exactly (-1, 4).
    stats = paired_bootstrap([-1.0, 0.0, 4.0], [0.0, 0.0, 0.0])
    assert stats["difference"] == 1.0 and (stats["low"], stats["high"]) == (-1.0, 4.0)
    assert stats["p_value"] == pytest.approx(16 / 27, abs=0.04)


def test_same_seed_same_numbers_other_seed_close():
    # 300 instances: the 10,000 resamples are drawn in 2 chunks (2^20 // 300 = 3495 rows each).
    rng = np.random.default_rng(7)
    b = rng.uniform(0, 100, 300)
    a = b + rng.normal(1.0, 15.0, 300)  # a small, noisy difference: p neither tiny nor 1
    first, again, other = (paired_bootstrap(a, b, seed=seed) for seed in (0, 0, 1))
    assert first == again and first != other
    width = first["high"] - first["low"]
    assert other["low"] == pytest.approx(first["low"], abs=0.05 * width)
    assert other["high"] == pytest.approx(first["high"], abs=0.05 * width)
    assert other["p_value"] == pytest.approx(first["p_value"], abs=0.04)
    assert 0.001 < first["p_value"] < 0.9
    assert bootstrap_interval(a, seed=3) == bootstrap_interval(a, seed=3) != bootstrap_interval(a, seed=4)
    # The whole task's statistics are reproducible and share the resampled indices with the single functions.
    scores = {"b": {"m": b, "n": b / 2}, "a": {"m": a, "n": a / 2}}
    groups = [f"g{i % 6}" for i in range(300)]
    stats = task_statistics(scores, groups, "m", seed=5)
    assert stats == task_statistics(scores, groups, "m", seed=5)
    assert stats["pairs"]["a - b"]["differences"]["m"] == paired_bootstrap(a, b, seed=5)
    assert (stats["methods"]["a"]["m"]["low"], stats["methods"]["a"]["m"]["high"]) == bootstrap_interval(a, seed=5)
    assert stats["methods"]["a"]["m"]["mean"] == pytest.approx(a.mean())


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])
    with pytest.raises(ValueError, match="same instances"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval([1.0], confidence=1.0)
    with pytest.raises(ValueError, match="one group per instance"):
        group_wins([1.0, 2.0], [1.0, 2.0], ["g"])
    with pytest.raises(ValueError, match="primary metric"):
        task_statistics({"a": {"m": [1.0]}}, ["g"], "f1")


def test_markdown_says_within_noise_or_which_is_better():
    od = np.array([10.0, 20.0, 30.0, 40.0])
    scores = {"od": {"rougeL": od}, "ctd": {"rougeL": od + 5.0}, "cd": {"rougeL": od + [1.0, -1.0, 1.0, -1.0]},
              "id": {"rougeL": od - 5.0}}
    lines = statistics_markdown("superni", task_statistics(scores, ["t1", "t1", "t2", "t2"], "rougeL"))
    text = "\n".join(lines)
    assert lines[0] == "## superni: statistics (4 instances, 2 groups)"
    # ctd = 15, 25, 35, 45: a resampled mean is 15 + 10 S / 4 with S the sum of 4 uniform draws from 0..3;
    # P(S <= 1) = 5/256 = 2.0% < 2.5% < P(S <= 2) = 15/256 = 5.9%, so the 2.5% quantile is at S = 2 (20), and
    # symmetrically the 97.5% quantile at S = 10 (40).
    assert "| ctd | 30.00 [20.00, 40.00] |" in text
    # Constant differences: the interval is the point, p = 2 / 10001 = 0.0002.
    assert "- ctd - od = +5.00 rougeL [+5.00, +5.00], p = 0.0002: ctd is better than od (the interval excludes 0)." \
        in text
    assert "- id - od = -5.00 rougeL [-5.00, -5.00], p = 0.0002: od is better than id (the interval excludes 0)." \
        in text
    # cd - od = (+1, -1, +1, -1): mean 0, resampled means from -1 to +1.
    assert "- cd - od = +0.00 rougeL [-1.00, +1.00], p = 1: within noise (the interval includes 0)." in text
    # Per group (t1: mean of +1, -1 = 0; t2 likewise): two ties, no decided group.
    assert "- cd vs od per group (rougeL): wins 0, losses 0, ties 2 of 2 groups; sign test p = 1." in text
    # ctd wins both groups: p = 2 * (1/2)^2 = 0.5.
    assert "- ctd vs od per group (rougeL): wins 2, losses 0, ties 0 of 2 groups; sign test p = 0.5." in text
    assert sum(" rougeL [" in line for line in lines) == 6  # one line per pair of the 4 methods


def test_report_carries_statistics_for_every_method_and_pair(tokenizer, tmp_path):
    ensure_pad_token(tokenizer)
    # 4096 positions: the protocol's 1024 source tokens are many more tokens of the tiny tokenizer.
    model = build_model(len(tokenizer), initializer_range=0.3, max_position_embeddings=4096)
    torch.manual_seed(3)
    prefix = torch.randn(4, model.config.hidden_size) * 0.5
    methods = {"od": ODMethod(), "id": IDMethod(), "ctd": CTDMethod(prefix=prefix)}
    settings = EvalSettings(options={"superni": dict(dir=str(DATA / "supernatinst"), tasks="sample/train_tasks.txt",
                                                     categories="sample/train_task_test_category_analog.json",
                                                     max_instances=2)},
                            max_new_tokens={"superni": 6}, batch_size=4, max_source_tokens=3000)
    report = run_evaluation(model, tokenizer, methods, settings, tmp_path, "tiny-llama")
    superni = report["benchmarks"]["superni"]
    assert set(superni["methods"]["od"]) == {"overall", "categories", "tasks"}
    stats = json.loads((tmp_path / "report.json").read_text())["benchmarks"]["superni"]["statistics"]
    assert stats == superni["statistics"]
    assert (stats["primary"], stats["instances"], stats["groups"]) == ("rougeL", 24, 12)
    assert (stats["confidence"], stats["resamples"], stats["seed"]) == (0.95, RESAMPLES, 0)
    assert set(stats["methods"]) == {"od", "id", "ctd"}
    for name, values in stats["methods"].items():
        for metric in ("rougeL", "exact_match"):
            entry = values[metric]
            assert entry["mean"] == pytest.approx(superni["methods"][name]["overall"][metric], abs=1e-4)
            assert entry["low"] <= entry["high"]
    assert list(stats["pairs"]) == ["id - od", "ctd - od", "ctd - id"]
    markdown = (tmp_path / "report.md").read_text()
    for pair, values in stats["pairs"].items():
        a, b = values["a"], values["b"]
        assert pair == f"{a} - {b}" and set(values["differences"]) == {"rougeL", "exact_match"}
        for metric, d in values["differences"].items():
            means = stats["methods"][a][metric]["mean"] - stats["methods"][b][metric]["mean"]
            assert d["difference"] == pytest.approx(means, abs=1e-9)
            assert d["low"] <= d["high"] and P_MIN <= d["p_value"] <= 1.0
            line = next(line for line in markdown.splitlines() if line.startswith(f"- {pair} = ")
                        and f" {metric} [" in line)
            assert "within noise" in line or "better than" in line
        g = values["by_group"]
        assert g["metric"] == "rougeL" and g["wins"] + g["losses"] + g["ties"] == 12
        assert g["sign_test_p"] == pytest.approx(sign_test(g["wins"], g["losses"]))
        assert f"- {a} vs {b} per group (rougeL): wins {g['wins']}, losses {g['losses']}, ties {g['ties']} of " \
               "12 groups; sign test p = " in markdown
    # The statistics follow SuperNI's own section and precede the token changes.
    order = [markdown.index(heading) for heading in ("Winning rate", "## superni: statistics", "## Token changes")]
    assert order == sorted(order)


def test_metric_scripts_return_per_instance_scores():
    # The instances of tests/test_metrics.py's averaging cases, unaveraged: SuperNI "Hello, World!" vs "hello world"
    # (Rouge-L 1, EM 1) and "the cat" vs "cat" (Rouge-L 2/3, EM 0); DROP "2 yards" vs "2" (EM 0, F1 rounded 0.67)
    # and "2.0" vs "2" (EM 1, F1 1).
    superni = load_metric("superni", keep_in_memory=True)
    scores = superni.compute(predictions=["Hello, World!", "the cat"], references=[["hello world"], ["cat"]],
                             per_instance=True)
    assert scores == {"rougeL": [100.0, pytest.approx(200 / 3)], "exact_match": [100.0, 0.0]}
    drop = load_metric("drop", keep_in_memory=True)
    scores = drop.compute(predictions=["2 yards", "2.0"], references=[["2"], ["2"]], per_instance=True)
    assert scores == {"exact_match": [0.0, 100.0], "f1": [pytest.approx(67.0), 100.0]}


def _predictions(items: list[dict]) -> list[str]:
    """Right, half right and wrong answers in turn, so that the scores are neither 0 nor 100."""
    answers = []
    for index, item in enumerate(items):
        reference = item["references"][0]
        reference = reference if isinstance(reference, str) else " ".join(reference)
        answers.append([reference, reference.split()[0] + " and more words", "zebra"][index % 3])
    return answers


@pytest.mark.parametrize("name, options, overall", [
    ("superni", {"max_instances": 5}, lambda scores, metric: scores["overall"][metric]),
    ("drop", {"limit": 40}, lambda scores, metric: scores[metric]),
    ("mmlu", {"limit": 2}, lambda scores, metric: scores[metric]),
])
def test_instance_scores_average_to_the_overall_score(name, options, overall, tmp_path):
    task = get_task(name)
    items = task.load(task.make_options(options))
    if name == "mmlu":
        predictions = ["ABCD"[index % 4] for index in range(len(items))]
    else:
        predictions = _predictions(items)
    result = task.score(items, {"m": predictions}, ScoreContext(output_dir=tmp_path, model_name="tiny"))
    per_instance = task.instance_scores(items, predictions)
    assert task.primary_metric in per_instance
    for metric, values in per_instance.items():
        assert len(values) == len(items)
        reported = overall(result["methods"]["m"], metric)
        assert 0 < reported < 100
        # SuperNI's script rounds its means to 4 places; DROP and MMLU average the same values.
        assert np.mean(values) == pytest.approx(reported, abs=1e-4 if name == "superni" else 1e-9)
