"""``ctd-hf demo``: does CTD help this model? Tune a prefix, decode a held-out SuperNI sample with plain decoding,
Instructive Decoding and CTD, and report the differences with their 95% intervals.

The held-out sample is the broad one shipped with the package: 34 official SuperNI *test* tasks in 10 categories,
never used to choose anything, decoded a few instances per task so that every category weighs about the same. The
settings below were chosen by measurement on SuperNI *training* tasks only (``docs/results.md``); ``--quick`` is a
small run that shows the pipeline, too small to answer the question.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..decoding.methods import CTDMethod, IDMethod, ODMethod
from ..evaluation.report import verdict
from ..evaluation.runner import EvalSettings, run_evaluation
from ..evaluation.tasks.superni import CATEGORY_ABBREVIATIONS, ordered_categories
from ..models import load_model_and_tokenizer, model_id
from ..records import check_output_folder
from ..settings import check_settings, like, positive_int, setting
from ..evaluation.seeds import seed_labels
from ..training.tuning import TuneSettings, seed_prefixes, seeds_setting, tune, tune_seeds
from .tuning_data import tuning_data_path

logger = logging.getLogger(__name__)
PAIRS = ("ctd - od", "ctd - id", "id - od")
HELD_OUT = "broad/test_tasks.txt"


@dataclass(kw_only=True)
class DemoSettings:
    """A demo run: how the prefix is tuned and how much of the held-out sample is decoded."""

    tuning: TuneSettings = setting(default_factory=TuneSettings, help=(
        "How the prefix is tuned; `data` may name a built-in tuning set (alpaca, superni, self)."))
    per_category: int = setting(10, check=positive_int, help=(
        "Held-out instances per category (10 categories), shared evenly by its tasks, at least one each."))
    max_new_tokens: int = setting(64, check=positive_int, help="New tokens per answer.")
    max_source_tokens: int = setting(1024, check=positive_int, help="Instruction + input tokens (the protocol's).")
    seeds: tuple[int, ...] = seeds_setting((0,))
    beta: float = like(CTDMethod, "strength", flag=None, help="CTD's decoding strength.")
    id_strength: float = like(IDMethod, "strength", flag=None,
                              help="Instructive Decoding's strength (official default).")
    batch_size: int = setting(8, check=positive_int, help="Prompts per generate() call.")

    def __post_init__(self) -> None:
        check_settings(self)


# The sweep's best 16-step trial on the development tasks (docs/results.md). One prefix is what fits the 12-minute
# budget on 2 cores: three seeds would take about 18 minutes from a fresh clone (measured: 10 minutes to tune them,
# 1.7 per ctd decoding; chosen by time, never by scores). docs/results.md section 8 measures it over 5 seeds.
FULL = DemoSettings(tuning=TuneSettings(data="superni", max_steps=16, learning_rate=1e-2, batch_size=8,
                                        max_length=256), per_category=10, beta=0.1)
QUICK = DemoSettings(tuning=TuneSettings(data="superni", max_steps=4, learning_rate=1e-2, batch_size=4,
                                         max_length=256), per_category=1, max_new_tokens=24, beta=0.1)


def run_demo(
    output_dir: str | Path, settings: DemoSettings = FULL, prefix: str | Path | None = None, model: str = "default"
) -> dict:
    """Tune (unless ``prefix`` is given; a rerun resumes), evaluate od, id and ctd on the held-out sample and return
    the report (``report.md``, ``report.json`` and the charts are in ``output_dir/eval``; :func:`summary` is what
    ``ctd-hf demo`` prints)."""
    output_dir, started = check_output_folder(output_dir), time.time()
    steps = 2 if prefix else 3
    if prefix is None:
        count = len(settings.seeds)
        what = (f"a {settings.tuning.num_virtual_tokens}-token prefix (seed {settings.seeds[0]})" if count == 1 else
                f"{count} {settings.tuning.num_virtual_tokens}-token prefixes (seeds "
                f"{', '.join(map(str, settings.seeds))}), each")
        _phase(1, steps, f"tuning {what} for {settings.tuning.max_steps} steps (resumes if interrupted)", started)
        prefix = output_dir / ("prefix" if count == 1 else "prefixes")
        data = tuning_data_path(settings.tuning.data, output_dir / "data", model, settings.tuning.prompt_format)
        tuning = dataclasses.replace(settings.tuning, data=data)
        if count == 1:
            tune(dataclasses.replace(tuning, seed=settings.seeds[0]), prefix, model)
        else:
            tune_seeds(tuning, settings.seeds, prefix, model)
    prefixes = seed_prefixes(prefix)
    _phase(steps - 1, steps, f"decoding the broad held-out SuperNI sample (34 test tasks, about "
                             f"{settings.per_category} instances per category) with od, id and ctd "
                             f"({len(prefixes)} prefix{'es' if len(prefixes) > 1 else ''})", started)
    base, tokenizer = load_model_and_tokenizer(model)
    methods = {"od": ODMethod(), "id": IDMethod(strength=settings.id_strength)}
    methods.update({label: CTDMethod(strength=settings.beta, prefix=folder)
                    for label, folder in zip(seed_labels("ctd", len(prefixes)), prefixes)})
    evaluation = EvalSettings(options={"superni": {"tasks": HELD_OUT, "per_category": settings.per_category}},
                              prompt_format=settings.tuning.prompt_format, batch_size=settings.batch_size,
                              max_new_tokens={"superni": settings.max_new_tokens},
                              max_source_tokens=settings.max_source_tokens)
    report = run_evaluation(base, tokenizer, methods, evaluation, output_dir / "eval", model_id(base))
    _phase(steps, steps, "report", started)
    return report


def _phase(index: int, count: int, what: str, started: float) -> None:
    logger.info("[%d/%d] %s (%.1f min so far)", index, count, what, (time.time() - started) / 60)


def _difference(pairs: dict, a: str, b: str) -> tuple[float, float, float, float, str, str]:
    """``a - b`` in Rouge-L with its interval and p-value, then a's task wins against b (``wins:losses``) and the ties
    with the sign test's p, from the report's pairs (stored either way round)."""
    key = next(key for key, pair in pairs.items() if {pair["a"], pair["b"]} == {a, b})
    pair = pairs[key]
    sign = 1 if pair["a"] == a else -1
    diff = pair["differences"]["rougeL"]
    low, high = sorted((sign * diff["low"], sign * diff["high"]))
    wins, losses = (pair["by_group"]["wins"], pair["by_group"]["losses"])[::sign]
    sign_test = f"({pair['by_group']['ties']} ties), sign test p = {pair['by_group']['sign_test_p']:.3g}"
    return sign * diff["difference"], low, high, diff["p_value"], f"{wins}:{losses}", sign_test


def summary(report: dict, folder: Path) -> str:
    """The paper's Table-1 layout (Rouge-L, methods as rows, overall and categories as columns), the paired
    differences with their 95% intervals, and what they say."""
    superni = report["benchmarks"]["superni"]
    methods, pairs = superni["methods"], superni["statistics"]["pairs"]
    categories = ordered_categories(next(iter(methods.values()))["categories"])
    names = [CATEGORY_ABBREVIATIONS.get(category, category) for category in categories]
    lines = [f"SuperNI held-out sample: {superni['tasks']} test tasks, {superni['instances']} instances, Rouge-L", "",
             "| Method | Overall | " + " | ".join(names) + " | task wins |", "|---|---|" + "---|" * len(names) + "---|"]
    for name, scores in methods.items():
        lines.append(f"| {name} | {scores['overall']['rougeL']:.2f} | "
                     + " | ".join(f"{scores['categories'][c]['rougeL']:.2f}" for c in categories) + " | |")
    verdicts = []
    for label in PAIRS:
        a, b = (part.strip() for part in label.split("-"))
        difference, low, high, p_value, wins, sign_test = _difference(pairs, a, b)
        cells = [f"{difference:+.2f} [{low:+.2f}, {high:+.2f}]"]
        cells += [f"{methods[a]['categories'][c]['rougeL'] - methods[b]['categories'][c]['rougeL']:+.2f}"
                  for c in categories]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {wins} |")
        verdicts.append(f"- {label}: {difference:+.2f} Rouge-L [{low:+.2f}, {high:+.2f}], p = {p_value:.3g}: "
                        f"{verdict(a, b, low, high)}; task wins {wins} {sign_test}.")
    seeds = superni["statistics"]["replicates"].get("ctd", ["ctd"])
    if len(seeds) > 1:
        spread = superni["statistics"]["methods"]["ctd"]["rougeL"]
        variance = next(pair["variance"] for pair in pairs.values() if {pair["a"], pair["b"]} == {"ctd", "od"})
        basis = (f"ctd is the mean of {len(seeds)} prefixes, one per tuning seed (Rouge-L "
                 f"{', '.join(f'{v:.2f}' for v in spread['seeds'])}; between-seed SD {spread['seed_sd']:.2f}); its "
                 "intervals resample the seeds, then the instances (for ctd - od the "
                 f"{variance['dominant']} dominate: standard error {variance['seed_se']:.2f} from the prefixes, "
                 f"{variance['instance_se']:.2f} from the instances).")
    else:
        basis = ("ctd rests on one prefix: its intervals cover the instances only, not the prefix's own randomness "
                 "(how far another tuning seed moves it: docs/results.md, section 8; `--seeds 0,1,2` tunes several).")
    return "\n".join([*lines, "", "Differences: paired over the same instances; 95% paired-bootstrap interval "
                       "(overall column); task wins: tasks where the first method's mean Rouge-L is higher, with the "
                       "sign test over tasks.", basis, "", *verdicts, "", f"Full report: {folder / 'report.md'} (and "
                       "report.json, superni_categories.png, token_changes_superni.png)."])
