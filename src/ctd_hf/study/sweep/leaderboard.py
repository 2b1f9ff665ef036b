"""The sweep's leaderboard: every trial's development score, the baselines on the same instances, the winner's paired
differences, and the score against each knob (``leaderboard.md``, ``.json``, ``.png``)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ...evaluation.report import verdict
from ...evaluation.runner import collect_predictions
from ...evaluation.statistics import paired_bootstrap
from ...evaluation.tasks import get_task
from ...plots import knob_panels
from ...records import write_json, write_text
from .folder import Sweep
from .settings import KNOBS


def _instance_scores(folder: Path, label: str, rung_items: list[dict]) -> list[float]:
    """Per-instance Rouge-L of ``label``'s predictions in an evaluation folder, on ``rung_items``."""
    found = collect_predictions(folder, "superni", label)
    task = get_task("superni")
    return task.instance_scores(rung_items, [found[item["id"]]["prediction"] for item in rung_items])["rougeL"]


def write_leaderboard(sweep: Sweep) -> dict:
    """``leaderboard.md``/``.json``/``.png``: every trial's development score at the highest rung it reached, the
    baselines on the same instances, the winner's paired difference to them, and the score against each knob."""
    settings, rows = sweep.settings, []
    for name, knobs in sweep.trials.items():
        results = [r for rung in range(len(settings.rungs)) if (r := sweep.result(name, rung)) is not None]
        rows.append({"trial": name, "knobs": knobs, "results": results})
    finished = [row for row in rows if row["results"]]
    finished.sort(key=lambda row: (-row["results"][-1]["rung"], -row["results"][-1]["score"]))
    board: dict[str, Any] = {"settings": settings.to_json(), "trials": finished,
                             "pending": [row["trial"] for row in rows if not row["results"]], "baselines": {}}
    task = get_task("superni")
    labels = ["od", *(f"id@{value:g}" for value in settings.id_strengths)]
    for rung in range(len(settings.rungs)):
        items = task.load(sweep.eval_settings(rung).task_options(task))
        try:
            board["baselines"][rung] = {label: statistics.fmean(_instance_scores(sweep.root / "baselines", label,
                                                                                 items)) for label in labels}
        except KeyError:  # this rung's baselines were not run (the budget ran out before it)
            break
    if finished:
        top = finished[0]["results"][-1]
        rung = top["rung"]
        items = task.load(sweep.eval_settings(rung).task_options(task))
        seeds = [_instance_scores(sweep.root / "trials" / top["trial"] / "dev", label, items)
                 for label in sweep.labels(top["best"])]
        winner = seeds[0] if len(seeds) == 1 else seeds  # several seeds: the two-level bootstrap
        baselines = board["baselines"].get(rung, {})
        best_id = max((label for label in baselines if label.startswith("id@")), key=baselines.get, default=None)
        board["winner"] = {"trial": top["trial"], "knobs": finished[0]["knobs"], "beta": top["best"],
                           "score": top["score"], "rung": rung, "instances": len(items), "best_id": best_id,
                           "versus": {label: paired_bootstrap(winner, _instance_scores(sweep.root / "baselines", label,
                                                                                       items), seed=settings.seed)
                                      for label in ("od", best_id) if label}}
    write_json(sweep.root / "leaderboard.json", board)
    write_text(sweep.root / "leaderboard.md", leaderboard_markdown(board))
    if finished:
        knob_panels(sweep.root / "leaderboard.png", [{**row["knobs"], "score": row["results"][0]["score"],
                                                      "best beta": row["results"][0]["best"]} for row in finished],
                    [*KNOBS, "best beta"], board["baselines"].get(0, {}), "development Rouge-L (rung 0)")
    return board


def leaderboard_markdown(board: dict) -> str:
    """The leaderboard as Markdown: baselines per rung, trials best first, the winner against the baselines."""
    settings = board["settings"]
    lines = ["# Sweep leaderboard", "",
             f"Development set: SuperNI TRAIN tasks `{settings['dev_tasks']}` (never a test task), "
             f"{settings['max_new_tokens']} new tokens, prompt format {settings['prompt_format']}, model "
             f"{settings['model']}; successive halving over {list(settings['rungs'])} instances per task, keeping "
             f"{settings['keep']:.0%} at each rung.", "", "## Baselines (Rouge-L)", "",
             "| rung | " + " | ".join(next(iter(board["baselines"].values()), {})) + " |",
             "|---|" + "---|" * len(next(iter(board["baselines"].values()), {}))]
    for rung, scores in board["baselines"].items():
        lines.append(f"| {rung} | " + " | ".join(f"{value:.2f}" for value in scores.values()) + " |")
    betas = [f"ctd@{b:g}" for b in settings["space"]["betas"]]
    lines += ["", "## Trials (best first; Rouge-L at the highest rung reached)", "",
              "| trial | " + " | ".join(KNOBS) + " | rung | " + " | ".join(betas) + " | best | train loss gap |",
              "|---|" + "---|" * (len(KNOBS) + len(betas) + 3)]
    for row in board["trials"]:
        last = row["results"][-1]
        gap = last.get("train_loss_gap")
        lines.append(f"| {row['trial']} | " + " | ".join(str(row["knobs"][k]) for k in KNOBS)
                     + f" | {last['rung']} | " + " | ".join(f"{last['scores'][b]:.2f}" for b in betas)
                     + f" | {last['score']:.2f} | " + ("-" if gap is None else f"{gap:+.4f}") + " |")
    if board["pending"]:
        lines += ["", f"Not run yet (time budget): {', '.join(board['pending'])}."]
    first = [row for row in board["trials"] if row["results"][0]["rung"] == 0]
    varied = [knob for knob in KNOBS if len({str(row["knobs"][knob]) for row in first}) > 1]
    if varied:
        lines += ["", "## What each knob did (rung 0: mean of each trial's best score, over the trials with that "
                  "value)", ""]
        for knob in varied:
            means = {}
            for row in first:
                means.setdefault(str(row["knobs"][knob]), []).append(row["results"][0]["score"])
            lines.append(f"- {knob}: " + ", ".join(f"{value} {statistics.fmean(scores):.2f} ({len(scores)})"
                                                   for value, scores in sorted(means.items())))
    if "winner" in board:
        winner = board["winner"]
        lines += ["", "## Selected", "", f"Trial `{winner['trial']}` at {winner['beta']}: development Rouge-L "
                  f"{winner['score']:.2f} on {winner['instances']} instances (rung {winner['rung']}).", ""]
        for label, diff in winner["versus"].items():
            lines.append(f"- {winner['beta']} - {label} = {diff['difference']:+.2f} [{diff['low']:+.2f}, "
                         f"{diff['high']:+.2f}], p = {diff['p_value']:.3g}: "
                         f"{verdict(winner['beta'], label, diff['low'], diff['high'])}.")
    return "\n".join(lines) + "\n"
