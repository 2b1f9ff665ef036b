"""``ctd-hf sweep``: a search over tuning settings and the decoding strength, selected on training tasks only.

Each trial is one set of tuning knobs (data, learning rate, steps, alpha, prefix length, init, data fraction); its
prefix is tuned once and decoded at every ``beta`` of the space in one evaluation run. Trials are scored on the
development tasks (``sample/dev_tasks.txt``, SuperNI TRAIN tasks: never a test task) by successive halving: every
trial on a few instances per task, the best share of them on more. Plain decoding and Instructive Decoding at several
strengths are measured on the same instances once, as the bar a trial must clear.

Everything lives in one folder and resumes: ``sweep.json`` (the settings: a rerun with others is refused),
``data/`` (built tuning data), ``baselines/``, ``trials/<id>/`` (``trial.json``, ``prefix/``, ``dev/``,
``rung-<k>.json``), and the leaderboard (``leaderboard.md``, ``leaderboard.json``, ``leaderboard.png``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..decoding.methods import DecodingMethod
from ..evaluation.report import verdict
from ..evaluation.runner import EvalSettings, collect_predictions, run_evaluation
from ..evaluation.statistics import paired_bootstrap
from ..evaluation.tasks import get_task
from ..evaluation.tasks.superni import official_test_tasks_in
from ..models import load_model_and_tokenizer, model_id
from ..plots import knob_panels
from ..records import check_output_folder, write_json
from ..resources import resource_path
from ..training.tuning import TuneSettings, tune
from .tuning_data import TUNING_DATA, tuning_data_path

KNOBS = ("data", "learning_rate", "steps", "alpha", "num_virtual_tokens", "init", "fraction")
SEARCHES = ("grid", "random")


@dataclass(kw_only=True)
class SweepSpace:
    """The values each knob may take; a trial picks one value per tuning knob and is decoded at every beta."""

    data: tuple[str, ...] = field(default=("alpaca",), metadata={"help": f"Tuning data: {TUNING_DATA} or paths."})
    learning_rate: tuple[float, ...] = field(default=(1e-2,), metadata={"help": "AdamW learning rates."})
    steps: tuple[int, ...] = field(default=(32,), metadata={"help": "Optimizer steps."})
    alpha: tuple[float, ...] = field(default=(0.3,), metadata={"help": "Contrast strengths of the loss."})
    num_virtual_tokens: tuple[int, ...] = field(default=(20,), metadata={"help": "Prefix lengths."})
    init: tuple[str, ...] = field(default=("vocab",), metadata={"help": "Prefix initialisations."})
    fraction: tuple[float, ...] = field(default=(1.0,), metadata={"help": "Seeded fractions of the tuning data."})
    betas: tuple[float, ...] = field(default=(0.1, 0.3, 0.5), metadata={"help": "Decoding strengths (no retuning)."})

    def __post_init__(self) -> None:
        for name in (*KNOBS, "betas"):
            values = tuple(getattr(self, name))
            if not values:
                raise ValueError(f"The sweep knob `{name}` has no value.")
            setattr(self, name, values)
        for name in self.data:
            if name not in TUNING_DATA and not Path(name).exists():
                raise ValueError(f"Tuning data {name!r} is neither one of {TUNING_DATA} nor an existing file.")

    def trials(self, search: str = "grid", samples: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
        """Knob settings of the trials: every combination (``grid``), or ``samples`` of them drawn at random."""
        grid = [dict(zip(KNOBS, values)) for values in itertools.product(*(getattr(self, knob) for knob in KNOBS))]
        if search == "grid":
            return grid
        if search != "random" or not samples or samples < 1:
            raise ValueError(f"search is one of {SEARCHES}; random search needs samples >= 1.")
        return random.Random(seed).sample(grid, min(samples, len(grid)))


@dataclass(kw_only=True)
class SweepSettings:
    """What the sweep varies and how it measures (see the module docstring)."""

    space: SweepSpace = field(default_factory=SweepSpace)
    search: str = field(default="grid", metadata={"help": f"One of {SEARCHES}."})
    samples: int | None = field(default=None, metadata={"help": "Trials drawn by random search."})
    seed: int = field(default=0, metadata={"help": "Seeds random search and tuning."})
    model: str = field(default="default", metadata={"help": "The model to tune prefixes for."})
    prompt_format: str = field(default="chatml", metadata={"help": "Prompt format of tuning and decoding."})
    batch_size: int = field(default=8, metadata={"help": "Tuning batch size."})
    max_length: int = field(default=256, metadata={"help": "Tuning tokens per example."})
    dev_tasks: str = field(default="sample/dev_tasks.txt", metadata={"help": "Development task list (train tasks)."})
    rungs: tuple[int, ...] = field(default=(5, 20), metadata={
        "help": "Successive halving: development instances per task at each rung."})
    keep: float = field(default=1 / 3, metadata={"help": "Share of trials promoted to the next rung."})
    max_new_tokens: int = field(default=64, metadata={"help": "New tokens when decoding the development tasks."})
    max_source_tokens: int = field(default=1024, metadata={"help": "Instruction + input tokens (the protocol's)."})
    id_strengths: tuple[float, ...] = field(default=(0.1, 0.3, 0.5), metadata={
        "help": "Instructive Decoding strengths measured as baselines."})
    eval_batch_size: int = field(default=8, metadata={"help": "Prompts per generate() call."})

    def __post_init__(self) -> None:
        if self.search not in SEARCHES:
            raise ValueError(f"`search` is one of {SEARCHES}, got {self.search!r}.")
        if not self.rungs or list(self.rungs) != sorted(set(self.rungs)) or self.rungs[0] < 1:
            raise ValueError(f"`rungs` are increasing instance counts >= 1, got {self.rungs}.")
        if not 0 < self.keep <= 1:
            raise ValueError(f"`keep` must be in (0, 1], got {self.keep}.")
        for knobs in self.space.trials(self.search, self.samples, self.seed):  # validates the search and each trial
            self.tune_settings(knobs)
        tests = official_test_tasks_in(resource_path("supernatinst", "splits") / self.dev_tasks)
        if tests:
            raise ValueError(f"`dev_tasks` {self.dev_tasks} lists {len(tests)} official SuperNI test task(s) "
                             f"({', '.join(tests[:3])}{' ...' if len(tests) > 3 else ''}): settings are chosen on "
                             "training tasks only. Use a list of train tasks, such as sample/dev_tasks.txt.")

    def tune_settings(self, knobs: dict[str, Any], data: str | None = None) -> TuneSettings:
        """The tuning settings of a trial (checked as they are built); ``data`` is its data file once built."""
        return TuneSettings(data=data or knobs["data"], prompt_format=self.prompt_format,
                            fraction=knobs["fraction"], max_length=self.max_length,
                            num_virtual_tokens=knobs["num_virtual_tokens"], init=knobs["init"],
                            init_text=INIT_TEXT if knobs["init"] == "text" else None, alpha=knobs["alpha"],
                            learning_rate=knobs["learning_rate"], max_steps=knobs["steps"],
                            batch_size=self.batch_size, save_steps=8, seed=self.seed)


def trial_id(index: int, knobs: dict[str, Any]) -> str:
    """A readable, stable folder name for a trial."""
    data = Path(knobs["data"]).stem if knobs["data"] not in TUNING_DATA else knobs["data"]
    return (f"t{index:03d}-{data}-lr{knobs['learning_rate']:g}-s{knobs['steps']}-a{knobs['alpha']:g}"
            f"-p{knobs['num_virtual_tokens']}-{knobs['init']}-f{knobs['fraction']:g}")


class Sweep:
    """A sweep folder: its settings, trials, tuning data, baselines and leaderboard."""

    def __init__(self, settings: SweepSettings, output_dir: str | Path) -> None:
        self.settings, self.root = settings, Path(output_dir)
        self.trials = {trial_id(i, knobs): knobs for i, knobs in
                       enumerate(settings.space.trials(settings.search, settings.samples, settings.seed))}

    # ---------------------------------------------------------------------------------------------- setting up
    def prepare(self) -> None:
        """Refuse a folder swept with other settings; record ours (over those of an earlier run that stopped before
        producing anything)."""
        check_output_folder(self.root)
        path, current = self.root / "sweep.json", json.loads(json.dumps(dataclasses.asdict(self.settings)))
        produced = (self.root / "baselines").exists() or (self.root / "trials").exists()
        if path.is_file() and produced:
            previous = json.loads(path.read_text())
            if previous != current:
                changed = sorted(k for k in current if previous.get(k) != current[k])
                raise ValueError(f"{self.root} holds a sweep with other settings ({', '.join(changed)}): use a new "
                                 "--output-dir, or delete it to start over.")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            write_json(path, current)

    def data_path(self, name: str) -> str:
        """The tuning data file of ``name`` (built on first use)."""
        return tuning_data_path(name, self.root / "data", self.settings.model, self.settings.prompt_format)

    def eval_settings(self, rung: int) -> EvalSettings:
        task = {"tasks": self.settings.dev_tasks, "max_instances": self.settings.rungs[rung],
                "categories": "sample/train_task_test_category_analog.json"}
        return EvalSettings(options={"superni": task}, prompt_format=self.settings.prompt_format,
                            batch_size=self.settings.eval_batch_size,
                            max_new_tokens={"superni": self.settings.max_new_tokens},
                            max_source_tokens=self.settings.max_source_tokens)

    # ---------------------------------------------------------------------------------------------- running
    def run_baselines(self, rung: int) -> dict:
        """Plain decoding and Instructive Decoding at each strength on rung ``rung``'s instances."""
        methods = {"od": DecodingMethod("od")}
        methods.update({f"id@{s:g}": DecodingMethod("id", strength=s) for s in self.settings.id_strengths})
        model, tokenizer = load_model_and_tokenizer(self.settings.model)
        return run_evaluation(model, tokenizer, methods, self.eval_settings(rung), self.root / "baselines",
                              model_id(model), self.settings.seed)

    def run_trial(self, name: str, rung: int) -> dict:
        """Tune trial ``name``'s prefix (once) and score it at every beta on rung ``rung``; returns the scores."""
        folder, knobs = self.root / "trials" / name, self.trials[name]
        result_path = folder / f"rung-{rung}.json"
        if result_path.is_file():
            return json.loads(result_path.read_text())
        if not (folder / "trial.json").is_file():
            write_json(folder / "trial.json", knobs)
        prefix = folder / "prefix"
        if not (prefix / "train_results.json").is_file():
            tune(self.settings.tune_settings(knobs, self.data_path(knobs["data"])), prefix, self.settings.model,
                 disable_tqdm=True)
        model, tokenizer = load_model_and_tokenizer(self.settings.model)
        methods = {f"ctd@{beta:g}": DecodingMethod("ctd", strength=beta, prefix=str(prefix))
                   for beta in self.settings.space.betas}
        report = run_evaluation(model, tokenizer, methods, self.eval_settings(rung), folder / "dev", model_id(model),
                                self.settings.seed)
        train = json.loads((prefix / "train_results.json").read_text())
        scores = {label: result["overall"]["rougeL"] for label, result in report["benchmarks"]["superni"]["methods"]
                  .items()}
        best = max(scores, key=scores.get)
        result = {"trial": name, "rung": rung, "instances": report["benchmarks"]["superni"]["instances"],
                  "scores": scores, "best": best, "score": scores[best],
                  "train_loss": train.get("train_loss"), "train_loss_gap": train.get("train_loss_gap")}
        write_json(result_path, result)
        return result


INIT_TEXT = "Answer the task exactly in the format it asks for, as briefly as possible."


def _worker_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def run_trials(
    sweep: Sweep, names: list[str], rung: int, deadline: float | None, claims: Path | None = None, position: int = 0
) -> None:
    """Run ``names`` at ``rung`` in this process, stopping before a trial once ``deadline`` (epoch seconds) passed.

    With ``claims`` (a folder shared by worker processes), a trial is run only by the worker that first creates its
    claim file there, so idle workers take the next trial whatever the others are doing.
    """
    for name in tqdm(names, desc=f"rung {rung}", unit="trial", position=position, file=sys.stderr):
        if deadline is not None and time.time() > deadline:
            break
        if claims is not None:
            try:
                os.close(os.open(claims / name, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                continue
        sweep.run_trial(name, rung)


def run_sweep(
    settings: SweepSettings, output_dir: str | Path, time_budget: float | None = None, workers: int = 1
) -> dict:
    """Run (or resume) the sweep into ``output_dir`` and write the leaderboard; returns it.

    ``time_budget`` (minutes) stops starting trials once spent (a rerun continues); ``workers`` > 1 runs the trials
    of a rung in that many processes (``ctd-hf sweep --worker``), each with an equal share of the CPU threads.
    """
    if workers < 1:
        raise ValueError(f"`workers` must be >= 1, got {workers}.")
    sweep = Sweep(settings, output_dir)
    sweep.prepare()
    deadline = None if time_budget is None else time.time() + 60 * time_budget
    for name in {knobs["data"] for knobs in sweep.trials.values()}:
        sweep.data_path(name)
    alive = list(sweep.trials)
    for rung in range(len(settings.rungs)):
        sweep.run_baselines(rung)
        pending = [name for name in alive if not (sweep.root / "trials" / name / f"rung-{rung}.json").is_file()]
        if workers == 1:
            run_trials(sweep, pending, rung, deadline)
        elif pending:
            _run_workers(sweep, pending, rung, deadline, workers)
        results = [_result(sweep, name, rung) for name in alive]
        if any(result is None for result in results):
            break  # the budget ran out inside this rung: the next run finishes it
        results.sort(key=lambda result: -result["score"])
        alive = [result["trial"] for result in results[: max(1, math.ceil(len(results) * settings.keep))]]
    return write_leaderboard(sweep)


def _run_workers(sweep: Sweep, pending: list[str], rung: int, deadline: float | None, workers: int) -> None:
    # Longest tuning first, so the last trials to finish are short ones; claims from an interrupted run are void.
    plan, claims = sweep.root / f"rung-{rung}-plan.json", sweep.root / f"rung-{rung}-claims"
    shutil.rmtree(claims, ignore_errors=True)
    claims.mkdir(parents=True)
    order = sorted(pending, key=lambda name: -sweep.trials[name]["steps"])
    write_json(plan, {"trials": order, "deadline": deadline})
    env = {**os.environ, "OMP_NUM_THREADS": str(_worker_threads(workers))}
    processes = [subprocess.Popen([sys.executable, "-m", "ctd_hf.cli", "sweep", "--output-dir", str(sweep.root),
                                   "--worker", f"{index}/{workers}", "--rung", str(rung)], env=env)
                 for index in range(workers)]
    failed = [process.wait() for process in processes]
    if any(failed):
        raise RuntimeError(f"{sum(1 for code in failed if code)} sweep worker(s) failed; rerun the same command to "
                           "resume (finished trials are kept).")


def run_worker(output_dir: str | Path, index: int, workers: int, rung: int) -> None:
    """One worker process of :func:`run_sweep`: the rung's planned trials that no other worker has claimed."""
    root = Path(output_dir)
    settings = settings_from_json(json.loads((root / "sweep.json").read_text()))
    plan = json.loads((root / f"rung-{rung}-plan.json").read_text())
    torch.set_num_threads(_worker_threads(workers))
    run_trials(Sweep(settings, root), plan["trials"], rung, plan["deadline"], root / f"rung-{rung}-claims", index)


def settings_from_json(values: dict) -> SweepSettings:
    """The :class:`SweepSettings` a ``sweep.json`` records."""
    space = SweepSpace(**{key: tuple(value) for key, value in values.pop("space").items()})
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
    return SweepSettings(space=space, **values)


def _result(sweep: Sweep, name: str, rung: int) -> dict | None:
    path = sweep.root / "trials" / name / f"rung-{rung}.json"
    return json.loads(path.read_text()) if path.is_file() else None


# -------------------------------------------------------------------------------------------------- leaderboard
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
        results = [r for rung in range(len(settings.rungs)) if (r := _result(sweep, name, rung)) is not None]
        rows.append({"trial": name, "knobs": knobs, "results": results})
    finished = [row for row in rows if row["results"]]
    finished.sort(key=lambda row: (-row["results"][-1]["rung"], -row["results"][-1]["score"]))
    board: dict[str, Any] = {"settings": json.loads(json.dumps(dataclasses.asdict(settings))), "trials": finished,
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
        winner = _instance_scores(sweep.root / "trials" / top["trial"] / "dev", top["best"], items)
        baselines = board["baselines"].get(rung, {})
        best_id = max((label for label in baselines if label.startswith("id@")), key=baselines.get, default=None)
        board["winner"] = {"trial": top["trial"], "knobs": finished[0]["knobs"], "beta": top["best"],
                           "score": top["score"], "rung": rung, "instances": len(items), "best_id": best_id,
                           "versus": {label: paired_bootstrap(winner, _instance_scores(sweep.root / "baselines", label,
                                                                                       items), seed=settings.seed)
                                      for label in ("od", best_id) if label}}
    write_json(sweep.root / "leaderboard.json", board)
    (sweep.root / "leaderboard.md").write_text(leaderboard_markdown(board))
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
