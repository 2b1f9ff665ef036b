"""A sweep folder: its settings (a rerun with others is refused), tuning data, baselines and trials."""

from __future__ import annotations

import json
from pathlib import Path

from ...decoding.methods import CTDMethod, IDMethod, ODMethod
from ...evaluation.runner import EvalSettings, run_evaluation
from ...models import load_model_and_tokenizer, model_id
from ...records import check_output_folder, check_resumable, write_json
from ...training.tuning import tune
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
        prefix = folder / "prefix"
        if not (prefix / "train_results.json").is_file():
            tune(self.settings.tune_settings(knobs, self.data_path(knobs["data"])), prefix, self.settings.model,
                 disable_tqdm=True)
        model, tokenizer = load_model_and_tokenizer(self.settings.model)
        methods = {f"ctd@{beta:g}": CTDMethod(strength=beta, prefix=str(prefix))
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
        write_json(folder / f"rung-{rung}.json", result)
        return result
