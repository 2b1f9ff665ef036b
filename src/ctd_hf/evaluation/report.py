"""Reports from written predictions: ``report.json`` (every number and the settings), ``report.md`` (each task's own
section, then token changes) and PNG charts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._version import __version__
from ..records import write_json
from .analysis import BINS, token_changes
from .plots import token_change_histograms
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
) -> dict:
    """Score ``results`` (task -> (items, method -> item id -> prediction record)) and write ``report.json``
    (every number and ``run_settings``), ``report.md`` and the PNG charts into ``output_dir``."""
    output_dir = Path(output_dir)
    report: dict[str, Any] = {"settings": {"model": model_name, **run_settings, "versions": _versions()},
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
        result = task.score(items, {method: [r["prediction"] for r in rows] for method, rows in records.items()},
                            context)
        changes = {method: token_changes(rows) for method, rows in records.items() if any("original" in r for r in rows)}
        if changes:
            result["token_changes"] = changes
            token_change_histograms({method: records[method] for method in changes},
                                    output_dir / f"token_changes_{name}.png", BINS)
        if task.plot is not None:
            task.plot(result, output_dir)
        report["benchmarks"][name] = result
    write_json(output_dir / "report.json", report)
    (output_dir / "report.md").write_text(markdown_report(report))
    return report


def markdown_report(report: dict) -> str:
    """Each task's Markdown section (in the order run), then the token-change tables."""
    lines = [f"# Evaluation of {report['settings']['model']}", ""]
    for name, result in report["benchmarks"].items():
        lines += get_task(name).markdown(result)
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
