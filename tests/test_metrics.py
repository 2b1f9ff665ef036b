"""Shipped SuperNI and DROP metrics against hand-computed scores, and offline loading by path."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from ctd_hf import get_task
from ctd_hf.evaluation.scoring import load_metric, metric_path
from ctd_hf.evaluation.tasks import ScoreContext


@pytest.fixture(scope="module")
def superni():
    return load_metric("superni", keep_in_memory=True)


@pytest.fixture(scope="module")
def drop():
    return load_metric("drop", keep_in_memory=True)


@pytest.mark.parametrize(
    "prediction, references, rouge_l, exact_match",
    [
        # Case and punctuation: both sides become "hello world" (EM) and tokens [hello, world] (Rouge-L).
        ("Hello, World!", ["hello world"], 100.0, 100.0),
        # Articles are kept by EM: "the cat" != "cat". Rouge-L: LCS([the, cat], [cat]) = 1, P = 1/2, R = 1,
        # F = 2 * 1/2 * 1 / (1/2 + 1) = 2/3 -> 66.6667.
        ("the cat", ["cat"], 66.6667, 0.0),
        # Stemming: Porter maps "running" (runn+ing -> run) and "runs" (run+s) to "run", so Rouge-L F = 1;
        # EM compares the unstemmed strings and fails.
        ("running", ["runs"], 100.0, 0.0),
        # Max over references: vs [the, big, dog] LCS = 2, P = 2/2, R = 2/3, F = (4/3) / (5/3) = 0.8;
        # vs [dog] LCS = 1, P = 1/2, R = 1, F = 2/3; max = 0.8 -> 80. Neither reference matches exactly.
        ("big dog", ["the big dog", "dog"], 80.0, 0.0),
        # EM max: the second reference normalises to "blue" like the prediction.
        ("blue", ["red", "Blue."], 100.0, 100.0),
        # Empty prediction: rouge-score gives F = 0 when a side has no token; EM holds because "?!" also
        # normalises to "" (the official script's behaviour for a blank prediction).
        ("", ["?!"], 0.0, 100.0),
        ("", ["answer"], 0.0, 0.0),
    ],
)
def test_superni_single(superni, prediction, references, rouge_l, exact_match):
    scores = superni.compute(predictions=[prediction], references=[references])
    assert scores == {"rougeL": pytest.approx(rouge_l), "exact_match": pytest.approx(exact_match)}


def test_superni_averages_over_instances(superni):
    # Instance 1: Rouge-L 1, EM 1; instance 2 ("the cat" vs "cat"): Rouge-L 2/3, EM 0.
    # Rouge-L = (1 + 2/3) / 2 = 5/6 -> 83.3333; EM = (1 + 0) / 2 -> 50.
    scores = superni.compute(predictions=["Hello, World!", "the cat"], references=[["hello world"], ["cat"]])
    assert scores == {"rougeL": pytest.approx(83.3333), "exact_match": pytest.approx(50.0)}


@pytest.mark.parametrize(
    "prediction, answers, exact_match, f1",
    [
        # Case and punctuation: "The Eagles!" -> tokens "the" (article, dropped) and "eagles" -> "eagles".
        ("The Eagles!", ["eagles"], 100.0, 100.0),
        # Articles are removed by DROP (unlike SuperNI EM): "the cat" -> "cat".
        ("the cat", ["cat"], 100.0, 100.0),
        # Numbers compare as floats: "2.0" and "2" both become "2.0".
        ("2.0", ["2"], 100.0, 100.0),
        # "1,000" is no float, so its comma goes -> "1000" -> "1000.0"; "1000" -> "1000.0".
        ("1,000", ["1000"], 100.0, 100.0),
        # Hyphens split tokens: "well-known" -> "well known".
        ("well-known", ["well known"], 100.0, 100.0),
        # "2 yards" -> {2.0, yards} vs {2.0}: P = 1/2, R = 1, F1 = (2 * 1/2) / (3/2) = 2/3 -> rounded 0.67.
        ("2 yards", ["2"], 0.0, 67.0),
        # Gold has the number 2.0, the prediction only 3.0: F1 is 0 although "yards" overlaps.
        ("3 yards", ["2 yards"], 0.0, 0.0),
        # Max over answers: vs "tom brady" P = 1, R = 1/2, F1 = 2/3 -> 0.67; vs "brady" 0.
        ("Tom", ["Tom Brady", "Brady"], 0.0, 67.0),
        ("Tom Brady", ["Brady", "Tom Brady"], 100.0, 100.0),
        # Empty prediction: its bag is empty, and the gold number 2.0 is not in it -> 0.
        ("", ["2"], 0.0, 0.0),
        # A blank acceptable answer is skipped (official script), so "" does not match it; "cat" gives 0.
        ("", ["", "cat"], 0.0, 0.0),
    ],
)
def test_drop_single(drop, prediction, answers, exact_match, f1):
    scores = drop.compute(predictions=[prediction], references=[answers])
    assert scores == {"exact_match": pytest.approx(exact_match), "f1": pytest.approx(f1)}


@pytest.mark.parametrize(
    "prediction, answer, exact_match, f1",
    [
        # Bags: predicted {tom, brady}, {eli}; gold {eli, manning}, {tom, brady}. Best alignment:
        # {tom, brady}-{tom, brady} F1 1 and {eli}-{eli, manning} P = 1, R = 1/2, F1 2/3;
        # mean (1 + 2/3) / 2 = 5/6 -> rounded 0.83. EM needs equal span sets -> 0.
        (["Tom Brady", "Eli"], ["Eli Manning", "Tom Brady"], 0.0, 83.0),
        # Span order does not matter for EM or F1.
        (["Eli Manning", "Tom Brady"], ["Tom Brady", "Eli Manning"], 100.0, 100.0),
        # A missing span scores 0: slots [1, 0] -> 1/2.
        (["Tom Brady"], ["Tom Brady", "Eli Manning"], 0.0, 50.0),
        # An extra span scores 0 too: slots over max(2, 3) = 3 spans, [1, 1, 0] -> 2/3 -> rounded 0.67.
        (["Tom Brady", "Eli Manning", "Peyton"], ["Tom Brady", "Eli Manning"], 0.0, 67.0),
    ],
)
def test_drop_multi_span(drop, prediction, answer, exact_match, f1):
    scores = drop.compute(predictions=[prediction], references=[[answer]])
    assert scores == {"exact_match": pytest.approx(exact_match), "f1": pytest.approx(f1)}


def test_drop_string_prediction_against_multi_span_answer(drop):
    # One predicted bag {tom, brady} against two gold bags: slots [1, 0] -> 0.5 -> 50.
    scores = drop.compute(predictions=["Tom Brady"], references=[[["Tom Brady", "Eli Manning"]]])
    assert scores == {"exact_match": 0.0, "f1": pytest.approx(50.0)}


def test_drop_averages_over_questions(drop):
    # Question 1 ("2 yards" vs "2"): EM 0, F1 0.67; question 2 ("2.0" vs "2"): EM 1, F1 1.
    # EM = (0 + 1) / 2 -> 50; F1 = (0.67 + 1) / 2 = 0.835 -> 83.5.
    scores = drop.compute(predictions=["2 yards", "2.0"], references=[["2"], ["2"]])
    assert scores == {"exact_match": pytest.approx(50.0), "f1": pytest.approx(83.5)}


def _items_and_answers(name: str, options: dict) -> tuple[list[dict], list[str]]:
    """A task's shipped items and answers scoring strictly between 0 and 100: every other answer is the first
    reference, the others that reference with two more words."""
    task = get_task(name)
    items = task.load(task.make_options(options))
    first = [i["references"][0] if isinstance(i["references"][0], str) else " ".join(i["references"][0]) for i in items]
    return items, [reference if k % 2 == 0 else reference + " or so" for k, reference in enumerate(first)]


@pytest.mark.parametrize("name, options", [("superni", {"max_instances": 5}), ("drop", {"limit": 40})])
def test_aggregate_is_the_mean_of_the_instance_scores(name, options):
    """What lets a report average per-instance scores instead of rerunning the metric (issue 20): both official
    aggregates are means over instances, x100 (SuperNI's rounded to 4 places)."""
    items, answers = _items_and_answers(name, options)
    references = [i["references"] for i in items]
    metric = load_metric(name, keep_in_memory=True)
    aggregate = metric.compute(predictions=answers, references=references)
    per_instance = metric.compute(predictions=answers, references=references, per_instance=True)
    assert set(aggregate) == set(per_instance) and all(0 < value < 100 for value in aggregate.values())
    tolerance = 5e-5 if name == "superni" else 1e-9
    assert aggregate == {k: pytest.approx(np.mean(v), abs=tolerance) for k, v in per_instance.items()}


def test_superni_scores_equal_the_metric_on_each_category_and_task(tmp_path):
    """The SuperNI scorer once ran the metric on the whole set, each category and each task; the means of the
    per-instance scores it reports now are the same numbers, but unrounded."""
    items, answers = _items_and_answers("superni", {"max_instances": 5})
    reported = get_task("superni").score(items, {"m": answers}, ScoreContext(output_dir=tmp_path, model_name="tiny"))
    reported = reported["methods"]["m"]
    metric = load_metric("superni", keep_in_memory=True)

    def official(keep) -> dict:
        chosen = [k for k, item in enumerate(items) if keep(item)]
        scores = metric.compute(predictions=[answers[k] for k in chosen],
                                references=[items[k]["references"] for k in chosen])
        return {metric_name: pytest.approx(value, abs=5e-5) for metric_name, value in scores.items()}

    assert reported["overall"] == official(lambda item: True)
    assert set(reported["categories"]) == {i["category"] for i in items} and len(reported["categories"]) > 1
    assert set(reported["tasks"]) == {i["group"] for i in items} and len(reported["tasks"]) > 1
    for category, scores in reported["categories"].items():
        assert scores == official(lambda item: item["category"] == category), category
    for task, scores in reported["tasks"].items():
        assert scores == official(lambda item: item["group"] == task), task


def test_unknown_metric_names_the_shipped_ones():
    with pytest.raises(ValueError, match=r"shipped metrics: \['drop', 'superni'\]"):
        metric_path("rouge")


def test_load_with_network_disabled(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access in an offline test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)

    # A fresh load of each module, not the fixtures: both modules build and compute without any socket.
    superni = load_metric("superni", keep_in_memory=True)
    assert superni.compute(predictions=["yes"], references=[["Yes!"]]) == {"rougeL": 100.0, "exact_match": 100.0}
    drop = load_metric("drop", keep_in_memory=True)
    assert drop.compute(predictions=["two"], references=[["Two."]]) == {"exact_match": 100.0, "f1": 100.0}
