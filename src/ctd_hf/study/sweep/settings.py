"""What a sweep searches (:class:`SweepSpace`) and how it measures (:class:`SweepSettings`).

A knob of the space holds several values of one tuning or decoding setting, each checked as that setting is
(``settings.like``); a trial picks one value per tuning knob and is decoded at every beta.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...decoding.methods import CTDMethod, IDMethod
from ...evaluation.tasks.superni import official_test_tasks_in
from ...resources import resource_path
from ...settings import SettingError, check_settings, like, positive_int, setting, unit_interval
from ...training.tuning import TuneSettings, seeds_setting
from ..tuning_data import TUNING_DATA, tuning_data_source

KNOBS = ("data", "learning_rate", "steps", "alpha", "num_virtual_tokens", "init", "fraction")
SEARCHES = ("grid", "random")
INIT_TEXT = "Answer the task exactly in the format it asks for, as briefly as possible."


@dataclass(kw_only=True)
class SweepSpace:
    """The values each knob may take (comma-separated on the command line)."""

    data: tuple[str, ...] = setting(("alpaca",), check=tuning_data_source,
                                    help=f"Tuning data: {', '.join(TUNING_DATA)}, or JSON/JSONL paths.")
    learning_rate: tuple[float, ...] = like(TuneSettings, "learning_rate", (1e-2,), aliases=("--lr",),
                                            help="AdamW learning rates.")
    steps: tuple[int, ...] = like(TuneSettings, "max_steps", (32,), help="Optimizer steps.")
    alpha: tuple[float, ...] = like(TuneSettings, "alpha", (0.3,), help="Contrast strengths of the loss.")
    num_virtual_tokens: tuple[int, ...] = like(TuneSettings, "num_virtual_tokens", (20,), help="Prefix lengths.")
    init: tuple[str, ...] = like(TuneSettings, "init", ("vocab",), help="Prefix initialisations.")
    fraction: tuple[float, ...] = like(TuneSettings, "fraction", (1.0,), help="Seeded fractions of the tuning data.")
    betas: tuple[float, ...] = like(CTDMethod, "strength", (0.1, 0.3, 0.5), flag=None,
                                    help="Decoding strengths, each evaluated on every prefix without retuning.")

    def __post_init__(self) -> None:
        check_settings(self)

    def trials(self, search: str = "grid", samples: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
        """Knob settings of the trials: every combination (``grid``), or ``samples`` of them drawn at random."""
        grid = [dict(zip(KNOBS, values)) for values in itertools.product(*(getattr(self, knob) for knob in KNOBS))]
        if search == "random":
            if samples is None:
                raise SettingError("samples", "is needed by random search: how many trials to draw.")
            return random.Random(seed).sample(grid, min(samples, len(grid)))
        return grid


@dataclass(kw_only=True)
class SweepSettings:
    """What the sweep varies and how it measures (see :mod:`ctd_hf.study.sweep`)."""

    space: SweepSpace = setting(default_factory=SweepSpace, cli=False, help="The values each knob may take.")
    search: str = setting("grid", choices=SEARCHES, help="Every combination of the knobs, or a random sample.")
    samples: int | None = setting(None, check=positive_int, help="Trials drawn by --search random.")
    seed: int = setting(0, help="Seeds random search and tuning.")
    seeds: tuple[int, ...] | None = seeds_setting()
    model: str = setting("default", help="Local folder or hub name; 'default' is the embedded SmolLM2-135M-Instruct.")
    prompt_format: str = like(TuneSettings, "prompt_format")
    batch_size: int = like(TuneSettings, "batch_size", help="Tuning batch size.")
    max_length: int = like(TuneSettings, "max_length")
    dev_tasks: str = setting("sample/dev_tasks.txt", help="Development task list (SuperNI TRAIN tasks only).")
    rungs: tuple[int, ...] = setting((5, 20), check=positive_int,
                                     help="Successive halving: development instances per task at each rung.")
    keep: float = setting(1 / 3, check=unit_interval, help="Share of trials promoted at each rung.")
    max_new_tokens: int = setting(64, check=positive_int, help="New tokens when decoding the development tasks.")
    max_source_tokens: int = setting(1024, check=positive_int,
                                     help="Instruction + input tokens of a development prompt (the protocol's is "
                                          "1024).")
    id_strengths: tuple[float, ...] = like(IDMethod, "strength", (0.1, 0.3, 0.5), flag=None,
                                           help="Instructive Decoding strengths measured as baselines.")
    eval_batch_size: int = setting(8, check=positive_int, help="Prompts per generate() call.")

    def __post_init__(self) -> None:
        check_settings(self)
        if list(self.rungs) != sorted(set(self.rungs)):
            raise SettingError("rungs", f"must be increasing instance counts, got {self.rungs}.")
        for knobs in self.space.trials(self.search, self.samples, self.seed):  # checks each trial's combination
            self.tune_settings(knobs)
        tests = official_test_tasks_in(resource_path("supernatinst", "splits") / self.dev_tasks)
        if tests:
            raise SettingError("dev_tasks", f"{self.dev_tasks} lists {len(tests)} official SuperNI test task(s) "
                                            f"({', '.join(tests[:3])}{' ...' if len(tests) > 3 else ''}): settings "
                                            "are chosen on training tasks only. Use a list of train tasks, such as "
                                            "sample/dev_tasks.txt.")

    def tune_settings(self, knobs: dict[str, Any], data: str | None = None) -> TuneSettings:
        """The tuning settings of a trial (checked as they are built); ``data`` is its data file once built."""
        return TuneSettings(data=data or knobs["data"], prompt_format=self.prompt_format,
                            fraction=knobs["fraction"], max_length=self.max_length,
                            num_virtual_tokens=knobs["num_virtual_tokens"], init=knobs["init"],
                            init_text=INIT_TEXT if knobs["init"] == "text" else None, alpha=knobs["alpha"],
                            learning_rate=knobs["learning_rate"], max_steps=knobs["steps"],
                            batch_size=self.batch_size, save_steps=8, seed=self.seed)

    @classmethod
    def from_json(cls, values: dict) -> SweepSettings:
        """The settings a ``sweep.json`` records."""
        values = dict(values)
        space = SweepSpace(**values.pop("space"))
        return cls(space=space, **values)

    def to_json(self) -> dict:
        """The settings as ``sweep.json`` records them (tuples as lists)."""
        return _jsonable(dataclasses.asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return list(map(_jsonable, value)) if isinstance(value, (list, tuple)) else value


def trial_id(index: int, knobs: dict[str, Any]) -> str:
    """A readable, stable folder name for a trial."""
    data = Path(knobs["data"]).stem if knobs["data"] not in TUNING_DATA else knobs["data"]
    return (f"t{index:03d}-{data}-lr{knobs['learning_rate']:g}-s{knobs['steps']}-a{knobs['alpha']:g}"
            f"-p{knobs['num_virtual_tokens']}-{knobs['init']}-f{knobs['fraction']:g}")
