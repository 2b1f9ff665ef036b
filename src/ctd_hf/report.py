"""Scores and reports from written predictions: a JSON file with every number and the settings, a Markdown table
laid out like the CTD paper's Table 1, and PNG charts (SuperNI categories, token changes)."""

from __future__ import annotations

import hashlib
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

import peft
import torch
import transformers

from . import __version__
from .analysis import plot_token_changes, token_changes
from .benchmarks import CATEGORY_ABBREVIATIONS
from .methods import DecodingMethod
from .scoring import load_metric


def _superni(items: list[dict], predictions: dict[str, dict[str, dict]]) -> dict:
    metric = load_metric("superni")

    def score(subset: list[dict], name: str) -> dict:
        return metric.compute(predictions=[predictions[name][i["id"]]["prediction"] for i in subset],
                              references=[i["references"] for i in subset])

    by_category = {c: [i for i in items if i["category"] == c] for c in sorted({i["category"] for i in items})}
    by_task = {t: [i for i in items if i["group"] == t] for t in sorted({i["group"] for i in items})}
    result = {name: {"overall": score(items, name),
                     "categories": {c: score(subset, name) for c, subset in by_category.items()},
                     "tasks": {t: score(subset, name) for t, subset in by_task.items()}}
              for name in predictions}
    # Winning rate: share of tasks where method a's Rouge-L beats method b's.
    wins = {f"{a} > {b}": sum(result[a]["tasks"][t]["rougeL"] > result[b]["tasks"][t]["rougeL"] for t in by_task)
            / len(by_task) for a, b in itertools.permutations(predictions, 2)}
    return {"methods": result, "winning_rate": wins, "tasks": len(by_task), "instances": len(items)}


def _drop(items: list[dict], predictions: dict[str, dict[str, dict]]) -> dict:
    metric = load_metric("drop")
    return {"methods": {name: metric.compute(predictions=[p[i["id"]]["prediction"] for i in items],
                                             references=[i["references"] for i in items])
                        for name, p in predictions.items()}, "instances": len(items)}


def _mmlu(items: list[dict], predictions: dict[str, dict[str, dict]]) -> dict:
    def accuracy(subset: list[dict], p: dict) -> float:
        return 100.0 * sum(p[i["id"]]["prediction"] == i["references"][0] for i in subset) / len(subset)

    subjects = {s: [i for i in items if i["group"] == s] for s in sorted({i["group"] for i in items})}
    return {"methods": {name: {"accuracy": accuracy(items, p),
                               "subjects": {s: accuracy(subset, p) for s, subset in subjects.items()}}
                        for name, p in predictions.items()}, "instances": len(items)}


def _alpacaeval(items: list[dict], predictions: dict[str, dict[str, dict]], output_dir: Path, model: str) -> dict:
    result = {}
    for name, p in predictions.items():
        outputs = [{"instruction": i["message"]["content"], "output": p[i["id"]]["prediction"],
                    "generator": f"{model}-{name}", "dataset": i["group"]} for i in items]
        path = output_dir / f"alpaca_eval_{name}.json"
        path.write_text(json.dumps(outputs, indent=2, ensure_ascii=False) + "\n")
        words = [len(o["output"].split()) for o in outputs]
        result[name] = {"file": path.name, "mean_words": statistics.mean(words), "median_words": statistics.median(words),
                        "empty": sum(w == 0 for w in words)}
    return {"methods": result, "instances": len(items)}


def method_settings(method: DecodingMethod) -> dict[str, Any]:
    """The method's settings, with the SHA-256 of its prefix weights for CTD."""
    settings = method.settings()
    if method.name == "ctd" and not isinstance(method.prefix, torch.Tensor):
        weights = Path(method.prefix) / "adapter_model.safetensors"
        settings["prefix_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    return settings


def build_report(
    output_dir: str | Path,
    results: dict[str, tuple[list[dict], dict[str, dict[str, dict]]]],
    run_settings: dict[str, Any],
    model_name: str,
) -> dict:
    """Score ``results`` (benchmark -> (items, method -> item id -> prediction record)) and write ``report.json``
    (every number and ``run_settings``), ``report.md`` and the PNG charts into ``output_dir``."""
    output_dir = Path(output_dir)
    report: dict[str, Any] = {
        "settings": {"model": model_name, **run_settings,
                     "versions": {"ctd_hf": __version__, "torch": torch.__version__,
                                  "transformers": transformers.__version__, "peft": peft.__version__}},
        "benchmarks": {},
    }
    for benchmark, (items, predictions) in results.items():
        for name, found in predictions.items():
            missing = [i["id"] for i in items if i["id"] not in found]
            if missing:
                raise ValueError(f"{benchmark}/{name} lacks predictions for {len(missing)} items (e.g. {missing[0]}): "
                                 "run the evaluation to completion first.")
        if benchmark == "superni":
            result = _superni(items, predictions)
        elif benchmark == "drop":
            result = _drop(items, predictions)
        elif benchmark == "mmlu":
            result = _mmlu(items, predictions)
        else:
            result = _alpacaeval(items, predictions, output_dir, model_name)
        records = {name: [p[i["id"]] for i in items] for name, p in predictions.items()}
        changes = {name: token_changes(r) for name, r in records.items() if any("original" in x for x in r)}
        if changes:
            result["token_changes"] = changes
            plot_token_changes({name: records[name] for name in changes}, output_dir / f"token_changes_{benchmark}.png")
        report["benchmarks"][benchmark] = result
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (output_dir / "report.md").write_text(markdown_report(report))
    if "superni" in report["benchmarks"]:
        plot_categories(report["benchmarks"]["superni"], output_dir / "superni_categories.png")
    return report


def _ordered(categories: dict) -> list[str]:
    """Categories in the paper's Table 1 order, any others after them alphabetically."""
    order = list(CATEGORY_ABBREVIATIONS)
    return sorted(categories, key=lambda c: (order.index(c) if c in order else len(order), c))


def markdown_report(report: dict) -> str:
    """Markdown tables: SuperNI Rouge-L like the paper's Table 1 (methods as rows, Overall and categories as
    columns), then exact match, winning rates, the other benchmarks and token changes."""
    lines = [f"# Evaluation of {report['settings']['model']}", ""]
    benchmarks = report["benchmarks"]
    if "superni" in benchmarks:
        superni = benchmarks["superni"]
        methods = superni["methods"]
        categories = _ordered(next(iter(methods.values()))["categories"])
        header = ["Method", "Overall"] + [CATEGORY_ABBREVIATIONS.get(c, c) for c in categories]
        for metric, title in (("rougeL", "Rouge-L"), ("exact_match", "Exact match")):
            lines += [f"## SuperNI {title} ({superni['tasks']} tasks, {superni['instances']} instances)", "",
                      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for name, scores in methods.items():
                row = [name, f"{scores['overall'][metric]:.2f}"]
                row += [f"{scores['categories'][c][metric]:.2f}" for c in categories]
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
        lines += ["Winning rate (share of tasks where the first method's Rouge-L is higher):", ""]
        lines += [f"- {pair}: {rate:.2%}" for pair, rate in superni["winning_rate"].items()] + [""]
    for benchmark, keys in (("drop", ("exact_match", "f1")), ("mmlu", ("accuracy",)),
                            ("alpacaeval", ("mean_words", "median_words", "empty"))):
        if benchmark in benchmarks:
            lines += [f"## {benchmark} ({benchmarks[benchmark]['instances']} items)", "",
                      "| Method | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
            for name, scores in benchmarks[benchmark]["methods"].items():
                lines.append(f"| {name} | " + " | ".join(f"{scores[k]:.2f}" if isinstance(scores[k], float)
                                                         else str(scores[k]) for k in keys) + " |")
            lines.append("")
    for benchmark, result in benchmarks.items():
        if "token_changes" in result:
            lines += [f"## Token changes on {benchmark}", "",
                      "| Method | tokens | changed | changed % | distinct from | distinct to | mean max-prob changed | "
                      "mean max-prob unchanged |", "|---|---|---|---|---|---|---|---|"]
            for name, c in result["token_changes"].items():
                means = [c[k]["mean"] for k in ("max_prob_changed", "max_prob_unchanged")]
                lines.append(f"| {name} | {c['tokens']} | {c['changed']} | {100 * c['changed_fraction']:.1f} | "
                             f"{c['distinct_changed_from']} | {c['distinct_changed_to']} | "
                             + " | ".join("-" if m is None else f"{m:.3f}" for m in means) + " |")
            lines.append("")
    return "\n".join(lines)


def plot_categories(superni: dict, path: str | Path) -> None:
    """PNG bar chart: Rouge-L per SuperNI category (and overall), one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = superni["methods"]
    categories = _ordered(next(iter(methods.values()))["categories"])
    labels = ["Overall"] + [CATEGORY_ABBREVIATIONS.get(c, c) for c in categories]
    width = 0.8 / len(methods)
    figure, axis = plt.subplots(figsize=(min(16, 2 + 0.8 * len(labels)), 4))
    for offset, (name, scores) in enumerate(methods.items()):
        values = [scores["overall"]["rougeL"]] + [scores["categories"][c]["rougeL"] for c in categories]
        axis.bar([x + offset * width for x in range(len(labels))], values, width, label=name)
    axis.set_xticks([x + width * (len(methods) - 1) / 2 for x in range(len(labels))], labels)
    axis.set_ylabel("Rouge-L")
    axis.set_title("SuperNI Rouge-L by category")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
