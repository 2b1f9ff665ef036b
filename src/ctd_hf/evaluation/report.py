"""Reports from written predictions: ``report.json`` (every number and the settings), ``report.md`` (each task's own
section and its statistics, then token changes) and PNG charts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._version import __version__
from ..plots import token_change_histograms
from ..records import write_json, write_text
from .analysis import BINS, token_changes
from .seeds import replicate_groups
from .statistics import RESAMPLES, task_statistics
from .tasks import ScoreContext, get_task


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"ctd_hf": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__}


def build_report(
    output_dir: str | Path,
    results: dict[str, tuple[list[dict], dict[str, dict[str, dict]]]],
    run_settings: dict[str, Any],
    model_name: str,
    *,
    resamples: int = RESAMPLES,
    bootstrap_seed: int = 0,
) -> dict:
    """Score ``results`` (task -> (items, method -> item id -> prediction record)) and write ``report.json``
    (every number and ``run_settings``), ``report.md`` and the PNG charts into ``output_dir``.

    Tasks with per-instance scores also get ``result["statistics"]`` (:func:`~.statistics.task_statistics`: bootstrap
    intervals, paired tests between methods, per-group sign tests) from ``resamples`` resamples seeded with
    ``bootstrap_seed``. Labels ``name#k`` are the seeds of method ``name`` (:mod:`~.seeds`): one method in the
    tables, from the two-level bootstrap in the statistics.
    """
    output_dir = Path(output_dir)
    report: dict[str, Any] = {"settings": {**run_settings, "versions": _versions()},
                              "benchmarks": {}}
    context = ScoreContext(output_dir=output_dir, model_name=model_name)
    for name, (items, predictions) in results.items():
        task = get_task(name)
        for method, found in predictions.items():
            missing = [i["id"] for i in items if i["id"] not in found]
            if missing:
                raise ValueError(f"{name}/{method} lacks predictions for {len(missing)} items (e.g. {missing[0]}): "
                                 "run the evaluation to completion first.")
        records = {method: [found[i["id"]] for i in items] for method, found in predictions.items()}
        answers = {method: [r["prediction"] for r in rows] for method, rows in records.items()}
        replicates = replicate_groups(answers)
        result, scores = task.evaluate(items, answers, context, replicates)
        if scores is not None:
            result["statistics"] = task_statistics(scores, [i["group"] for i in items], task.primary_metric,
                                                   replicates=replicates, resamples=resamples, seed=bootstrap_seed)
        changes = {method: token_changes(rows) for method, rows in records.items()
                   if any("original" in r for r in rows)}
        if changes:
            result["token_changes"] = changes
            token_change_histograms({method: records[method] for method in changes},
                                    output_dir / f"token_changes_{name}.png", BINS)
        if task.plot is not None:
            task.plot(result, output_dir)
        report["benchmarks"][name] = result
    write_json(output_dir / "report.json", report)
    write_text(output_dir / "report.md", markdown_report(report))
    return report


def markdown_report(report: dict) -> str:
    """Each task's Markdown section (in the order run) followed by its statistics, then the token-change tables."""
    model, evaluation = report["settings"]["model"], report["settings"]["eval"]
    budgets = evaluation["max_new_tokens"] or "each task's own"
    lines = [f"# Evaluation of {model['name']} ({model['dtype']}, weights {model['fingerprint'][:12]})", "",
             f"Prompt format {evaluation['prompt_format']}; new tokens: {budgets}; source budget "
             f"{evaluation['max_source_tokens']} tokens; greedy decoding on the "
             f"{report['settings'].get('engine', 'hf')} engine.", ""]
    for name, result in report["benchmarks"].items():
        lines += get_task(name).markdown(result)
        if "statistics" in result:
            lines += statistics_markdown(name, result["statistics"])
    for name, result in report["benchmarks"].items():
        if "token_changes" in result:
            lines += [f"## Token changes on {name}", "",
                      "| Method | tokens | changed | changed % | distinct from | distinct to | mean max-prob changed | "
                      "mean max-prob unchanged |", "|---|---|---|---|---|---|---|---|"]
            for method, c in result["token_changes"].items():
                means = [c[k]["mean"] for k in ("max_prob_changed", "max_prob_unchanged")]
                lines.append(f"| {method} | {c['tokens']} | {c['changed']} | {100 * c['changed_fraction']:.1f} | "
                             f"{c['distinct_changed_from']} | {c['distinct_changed_to']} | "
                             + " | ".join("-" if m is None else f"{m:.3f}" for m in means) + " |")
            lines.append("")
    return "\n".join(lines)


def _groups(count: int) -> str:
    return f"{count} group" if count == 1 else f"{count} groups"


def verdict(a: str, b: str, low: float, high: float) -> str:
    """What the interval ``[low, high]`` of ``a - b`` says, in words."""
    if low > 0:
        return f"{a} is better than {b} (the interval excludes 0)"
    if high < 0:
        return f"{b} is better than {a} (the interval excludes 0)"
    return "within noise (the interval includes 0)"


def statistics_markdown(name: str, statistics: dict) -> list[str]:
    """A task's statistics as Markdown: each method's means with their intervals, then per pair every metric's
    difference with its interval, p-value and verdict in words, and the per-group wins with the sign test."""
    level = f"{statistics['confidence']:.0%}"
    metrics = list(next(iter(statistics["methods"].values())))
    primary = statistics["primary"]
    lines = [f"## {name}: statistics ({statistics['instances']} instances, {_groups(statistics['groups'])})", "",
             f"Means over instances with {level} percentile-bootstrap intervals ({statistics['resamples']} resamples "
             f"of the instances, seed {statistics['seed']}):", "",
             "| Method | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 1)]
    for method, values in statistics["methods"].items():
        cells = [f"{v['mean']:.2f} [{v['low']:.2f}, {v['high']:.2f}]" for v in (values[k] for k in metrics)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
    for method, labels in statistics.get("replicates", {}).items():
        seeds = statistics["methods"][method][primary]
        spread = "" if seeds["seed_sd"] is None else f"; between-seed SD {seeds['seed_sd']:.2f}"
        lines += [f"{method} is the mean of {len(labels)} prefixes (one per tuning seed: "
                  f"{', '.join(labels)}), {primary} {', '.join(f'{v:.2f}' for v in seeds['seeds'])}{spread}; its "
                  "intervals and differences are from the two-level bootstrap (seeds, then instances).", ""]
    if not statistics["pairs"]:
        return lines
    lines += [f"Paired differences a - b over the same instances, with {level} paired-bootstrap intervals and "
              "two-sided paired-bootstrap p-values; per group, a's wins, losses and ties on the group mean of "
              f"{primary}, with an exact sign test over wins and losses (ties dropped):", ""]
    for pair, values in statistics["pairs"].items():
        a, b = values["a"], values["b"]
        for metric, d in values["differences"].items():
            lines.append(f"- {pair} = {d['difference']:+.2f} {metric} [{d['low']:+.2f}, {d['high']:+.2f}], "
                         f"p = {d['p_value']:.2g}: {verdict(a, b, d['low'], d['high'])}.")
        if "variance" in values:
            v = values["variance"]
            lines.append(f"- {pair}: standard error from the {v['seeds']} prefixes {v['seed_se']:.2f}, from the "
                         f"instances {v['instance_se']:.2f} ({v['metric']}): the {v['dominant']} dominate.")
        g = values["by_group"]
        sign = ("no sign test (fewer than 2 groups)" if g["sign_test_p"] is None
                else f"sign test p = {g['sign_test_p']:.2g}")
        lines.append(f"- {a} vs {b} per group ({g['metric']}): wins {g['wins']}, losses {g['losses']}, "
                     f"ties {g['ties']} of {_groups(statistics['groups'])}; {sign}.")
    return lines + [""]
