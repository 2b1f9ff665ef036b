"""A sweep folder: its settings (a rerun with others is refused), tuning data, baselines and trials."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from ...decoding.methods import CTDMethod, IDMethod, ODMethod
from ...evaluation.runner import EvalSettings, run_evaluation
from ...evaluation.seeds import seed_label
from ...models import load_model_and_tokenizer, model_id
from ...records import check_output_folder, check_resumable, write_json
from ...training.tuning import seed_folder, tune
from ..tuning_data import tuning_data_path
from .settings import SweepSettings, trial_id


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
        produced = (self.root / "baselines").exists() or (self.root / "trials").exists()
        check_resumable(self.root, "sweep.json", self.settings.to_json(), produced)

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
        methods = {"od": ODMethod()}
        methods.update({f"id@{s:g}": IDMethod(strength=s) for s in self.settings.id_strengths})
        model, tokenizer = load_model_and_tokenizer(self.settings.model)
        return run_evaluation(model, tokenizer, methods, self.eval_settings(rung), self.root / "baselines",
                              model_id(model), self.settings.seed)

    def prefixes(self, name: str) -> dict[int, Path]:
        """Trial ``name``'s prefix folders by tuning seed: ``prefix/`` with ``--seed``, ``prefix/seed-N`` with
        ``--seeds``."""
        prefix = self.root / "trials" / name / "prefix"
        if self.settings.seeds is None:
            return {self.settings.seed: prefix}
        return {seed: seed_folder(prefix, seed) for seed in self.settings.seeds}

    def labels(self, method: str) -> list[str]:
        """The evaluation labels of ``method`` (e.g. ``ctd@0.5``): one per seed with ``--seeds``, which the report
        averages into ``method`` (:mod:`~ctd_hf.evaluation.seeds`)."""
        if self.settings.seeds is None:
            return [method]
        return [seed_label(method, index) for index in range(len(self.settings.seeds))]

    def result(self, name: str, rung: int) -> dict | None:
        """Trial ``name``'s scores at rung ``rung``, if it was run."""
        path = self.root / "trials" / name / f"rung-{rung}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def run_trial(self, name: str, rung: int) -> dict:
        """Tune trial ``name``'s prefix (once) and score it at every beta on rung ``rung``; returns the scores."""
        folder, knobs = self.root / "trials" / name, self.trials[name]
        if (done := self.result(name, rung)) is not None:
            return done
        if not (folder / "trial.json").is_file():
            write_json(folder / "trial.json", knobs)
        prefixes = self.prefixes(name)
        tuning = self.settings.tune_settings(knobs, self.data_path(knobs["data"]))
        for seed, prefix in prefixes.items():
            if not (prefix / "train_results.json").is_file():
                tune(dataclasses.replace(tuning, seed=seed), prefix, self.settings.model, disable_tqdm=True)
        model, tokenizer = load_model_and_tokenizer(self.settings.model)
        methods = {label: CTDMethod(strength=beta, prefix=str(prefix)) for beta in self.settings.space.betas
                   for label, prefix in zip(self.labels(f"ctd@{beta:g}"), prefixes.values())}
        report = run_evaluation(model, tokenizer, methods, self.eval_settings(rung), folder / "dev", model_id(model),
                                self.settings.seed)
        runs = [json.loads((prefix / "train_results.json").read_text()) for prefix in prefixes.values()]
        train = {key: statistics.fmean(run[key] for run in runs) for key in ("train_loss", "train_loss_gap")}
        scores = {label: result["overall"]["rougeL"] for label, result in report["benchmarks"]["superni"]["methods"]
                  .items()}
        best = max(scores, key=scores.get)
        result = {"trial": name, "rung": rung, "instances": report["benchmarks"]["superni"]["instances"],
                  "scores": scores, "best": best, "score": scores[best],
                  **train}
        write_json(folder / f"rung-{rung}.json", result)
        return result
