"""The command line is generated from the settings dataclasses: the same flags as 0.2, every flag from a field, the
fields' defaults and checks."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from ctd_hf.cli import build_parser
from ctd_hf.cli.flags import values
from ctd_hf.settings import SettingError

# Every flag of 0.2 (kept), plus the names generated from the fields where 0.2 spelled them otherwise (--lr), plus
# the engine's (0.3), plus --restart and the SuperNI Rouge-L tokenizer (fail-loudly round 3), plus --seeds (issue 31).
VLLM = " --vllm-max-model-len --vllm-max-num-seqs --vllm-memory --vllm-tensor-parallel-size"
ENGINE = " --engine" + VLLM
FLAGS = {
    "demo": "--model --output-dir --prefix --quick --seeds",
    "tune": "--adapter --alpha --batch-size --data --dtype --epochs --fraction --grad-accum --init --init-text "
            "--learning-rate --lora-r --lr --max-length --max-steps --model --num-virtual-tokens --output-dir "
            "--prompt-format --restart --save-steps --seed --seeds",
    "generate": "--amateur --amateur-temperature --backend --batch-size --beta --cd-beta --do-sample --dtype "
                "--id-strength --max-new-tokens --method --model --noise --noise-rate --num-beams --output --path "
                "--plausibility --prefix --prompt --prompt-format --prompts-file --seed --temperature --top-k "
                "--top-p" + ENGINE,
    "eval": "--alpacaeval-limit --alpacaeval-path --alpacaeval-split --amateur --amateur-temperature --backend "
            "--batch-size --benchmarks --beta --cd-beta --drop-limit --drop-path --drop-split --dtype --id-strength "
            "--max-instances --max-new-tokens --max-source-tokens --methods --mmlu-limit --mmlu-path --mmlu-shots "
            "--model --no-token-changes --noise --noise-rate --output-dir --path --plausibility --prefix "
            "--prompt-format --restart --seed --superni-categories --superni-dataset --superni-dir "
            "--superni-max-instances --superni-per-category --superni-rouge-tokenizer --superni-split --superni-tasks"
            + ENGINE,
    "synth": "--also-plain --amateur --amateur-temperature --backend --batch-size --beta --cd-beta --do-sample "
             "--dtype --expert --format --id-strength --instructions --limit --max-new-tokens --method --noise "
             "--noise-rate --num-beams --output-dir --path --plausibility --prefix --prompt-format --restart --seed "
             "--temperature --top-k --top-p" + ENGINE,
    "sweep": "--alpha --batch-size --betas --data --dev-tasks --eval-batch-size --fraction --id-strengths --init "
             "--keep --learning-rate --lr --max-length --max-new-tokens --max-source-tokens --model "
             "--num-virtual-tokens --output-dir --prompt-format --rungs --samples --search --seed --seeds --steps "
             "--time-budget --workers",
    "export-hub": "--beta prefix_dir",
    "serve": "--cache-methods --dtype --host --max-tokens --model --port --prompt-format --served-model-name" + VLLM,
}
REQUIRED = {"tune": ["--output-dir", "o"], "eval": ["--output-dir", "o"], "sweep": ["--output-dir", "o"],
            "synth": ["--output-dir", "o", "--instructions", "i.json"], "generate": ["--prompt", "Hi"],
            "export-hub": ["p"], "demo": [], "serve": []}


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_each_subcommand_keeps_its_flags():
    assert set(subparsers()) == set(FLAGS)
    for name, parser in subparsers().items():
        listed = {s for a in parser._actions for s in (a.option_strings or [a.dest]) if s not in ("-h", "--help")}
        assert listed == set(FLAGS[name].split()), name


def test_every_flag_comes_from_a_settings_field():
    for name, parser in subparsers().items():
        generated = parser.get_default("flags")
        for action in parser._actions:
            if action.dest != "help":
                assert action.dest in generated, (name, action.option_strings)


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_defaults_are_the_fields_defaults(command):
    """Parsing only the required flags gives each settings dataclass its declared defaults."""
    from ctd_hf.decoding.answers import GenerationSettings
    from ctd_hf.evaluation.runner import EvalSettings
    from ctd_hf.study.sweep import SweepSettings, SweepSpace
    from ctd_hf.synthesis import SynthSettings
    from ctd_hf.training.tuning import TuneSettings

    args = build_parser().parse_args([command, *REQUIRED[command]])
    classes = {"tune": [TuneSettings], "eval": [EvalSettings], "sweep": [SweepSettings, SweepSpace],
               "synth": [SynthSettings, GenerationSettings], "generate": [GenerationSettings]}.get(command, [])
    for settings in classes:
        parsed = values(args, settings)
        assert parsed, settings
        defaults = {f.name: getattr(settings(), f.name) for f in dataclasses.fields(settings) if f.name in parsed}
        assert parsed == defaults, settings


@pytest.mark.parametrize("argv, settings, kwargs", [
    (["tune", "--output-dir", "o", "--alpha", "-1"], "TuneSettings", {"alpha": -1.0}),
    (["tune", "--output-dir", "o", "--lr", "0"], "TuneSettings", {"learning_rate": 0.0}),
    (["sweep", "--output-dir", "o", "--alpha", "0.3,-1"], "TuneSettings", {"alpha": -1.0}),
    (["generate", "--prompt", "Hi", "--top-p", "2"], "GenerationSettings", {"top_p": 2.0}),
])
def test_a_flag_is_refused_by_its_fields_check(capsys, argv, settings, kwargs):
    """The flag's error is the settings' own message, whether the value comes from Python or the command line."""
    import ctd_hf

    with pytest.raises(SettingError) as refused:
        getattr(ctd_hf, settings)(**kwargs)
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert refused.value.problem.rstrip(".") in capsys.readouterr().err
