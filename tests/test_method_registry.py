"""A decoding method is one declared class: a toy method (the second view is the model behind one fixed vector),
registered here and nowhere else, runs through both transformers executors, the command line (its flags appear),
evaluation and the lm-eval model (and, in tests/test_vllm.py, the vLLM engine); no code outside the registry asks a
method its name."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
import torch

from conftest import LONG, ROOT, build_model
from ctd_hf import (METHODS, BoundMethod, ContrastProcessor, CTDContrast, EvalSettings, LoRAContrast, ODMethod,
                    generate_doubled, register_method, run_evaluation)
from ctd_hf.cli import build_parser, main
from ctd_hf.decoding.answers import encode_messages
from ctd_hf.decoding.methods import ContrastMethod, DecodingMethod
from ctd_hf.models import ensure_pad_token
from ctd_hf.settings import SettingError, contrast_strength, setting


@dataclass(frozen=True, kw_only=True)
class FixedVectorMethod(ContrastMethod):
    """``z~``: the model's logits with one fixed vector (every entry ``value``) before the prompt."""

    name = "fixed"
    help = "a toy: the model behind a fixed vector"

    strength: float = setting(0.5, check=contrast_strength, flag="--fixed-strength", help="contrast strength.")
    value: float = setting(0.1, help="every entry of the vector.")

    def bind(self, model, tokenizer, loaded=None) -> BoundMethod:
        vector = torch.full((1, model.config.hidden_size), self.value)
        return BoundMethod(self, model, tokenizer, CTDContrast(model, vector, self.strength))


@pytest.fixture
def fixed():
    """The toy method, registered for one test."""
    register_method(FixedVectorMethod)
    yield FixedVectorMethod
    METHODS.pop(FixedVectorMethod.name)


MESSAGES = [{"role": "user", "content": text} for text in ("Name three primary colours.", "What is 2 + 2?")]


def test_registry_refuses_a_taken_name_and_unregistered_classes(fixed):
    class Another(FixedVectorMethod):
        pass

    with pytest.raises(ValueError, match="'fixed' is already registered"):
        register_method(dataclass(frozen=True, kw_only=True)(Another))
    METHODS.pop("fixed")
    with pytest.raises(TypeError, match="not a registered decoding method"):
        FixedVectorMethod()
    register_method(FixedVectorMethod)
    assert DecodingMethod.from_name("fixed", value=0.2) == FixedVectorMethod(value=0.2)
    with pytest.raises(SettingError, match="`name` is 'nope'; choose one of od, id, cd, ctd, ctd-lora, fixed"):
        DecodingMethod.from_name("nope")


def test_only_the_registry_asks_a_method_its_name():
    """The method names appear as values only in decoding/methods/ (issue 28: 32 tests in 8 files before)."""
    package = ROOT / "src" / "ctd_hf"
    asking = re.compile(r"""(name|method)\s*(==|!=)\s*["'](od|id|cd|ctd|ctd-lora)["']"""
                        r"""|["'](od|id|cd|ctd)["']\s+(not\s+)?in\s+\w*(name|method)""")
    found = [f"{path.relative_to(package)}:{number}" for path in package.rglob("*.py")
             if "methods" not in path.parts
             for number, line in enumerate(path.read_text().splitlines(), 1) if asking.search(line)]
    assert not found, found


def test_both_executors_decode_the_toy(fixed, left_tokenizer):
    model = build_model(len(left_tokenizer), initializer_range=0.3)
    bound = fixed(value=0.3, strength=1.0).bind(model, left_tokenizer)
    assert bound.prefix_length == 1
    contrast = bound.contrast_for(MESSAGES, "chatml")
    inputs = encode_messages(left_tokenizer, MESSAGES)
    options = dict(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    doubled = generate_doubled(model, contrast, **options)
    with ContrastProcessor(contrast) as processor:
        stream = model.generate(logits_processor=[processor], **options)
    assert torch.equal(doubled, stream)
    assert not torch.equal(doubled, model.generate(**options))


def test_evaluation_and_the_command_line_run_the_toy(fixed, long_model_dir, tmp_path, capsys):
    subcommands = next(action for action in build_parser()._actions if getattr(action, "choices", None)).choices
    assert {"--fixed-strength", "--value"} <= {s for a in subcommands["eval"]._actions for s in a.option_strings}
    main(["generate", "--model", str(long_model_dir), "--method", "fixed", "--value", "0.3", "--prompt",
          MESSAGES[0]["content"], "--max-new-tokens", "4"])
    record = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert record["method"] == "fixed" and record["value"] == 0.3 and record["strength"] == 0.5
    assert "--value is a setting of method fixed" in _error(capsys, ["generate", "--model", str(long_model_dir),
                                                                       "--prompt", "Hi", "--value", "0.3"])
    out = tmp_path / "eval"
    main(["eval", "--model", str(long_model_dir), "--methods", "od,fixed,fixed@2", "--value", "0.3",
          "--superni-tasks", "sample/train_tasks.txt", "--max-instances", "1", "--max-new-tokens", "6",
          "--max-source-tokens", "3000", "--output-dir", str(out)])
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["methods"]["fixed@2"] == {"method": "fixed", "strength": 2.0, "value": 0.3}
    assert set(report["benchmarks"]["superni"]["token_changes"]) == {"fixed", "fixed@2"}
    predictions = [[json.loads(line)["prediction"] for line in (out / "predictions" / "superni" / name /
                                                                "rank-0.jsonl").read_text().splitlines()]
                   for name in ("od", "fixed@2")]
    assert predictions[0] != predictions[1]


def test_run_evaluation_with_the_toy_in_python(fixed, tokenizer, tmp_path):
    ensure_pad_token(tokenizer)
    model = build_model(len(tokenizer), initializer_range=0.3, max_position_embeddings=LONG)
    settings = EvalSettings(options={"superni": {"tasks": "sample/train_tasks.txt", "max_instances": 1}},
                            max_new_tokens=6, max_source_tokens=3000)
    report = run_evaluation(model, tokenizer, {"od": ODMethod(), "fixed": fixed(strength=2.0)}, settings, tmp_path,
                            "tiny-llama")
    assert report["settings"]["methods"]["fixed"]["value"] == 0.1


def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(argv)
    return capsys.readouterr().err


def test_the_lora_variant_is_a_method_that_leaves_the_model_plain(left_tokenizer, tmp_path):
    """ctd-lora injects its adapter into the model's modules (one set of weights), switched on only for its own
    second view: plain decoding of the same model is unchanged, and its answers are LoRAContrast's on a PeftModel."""
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model

    base = build_model(len(left_tokenizer), initializer_range=0.3)
    torch.manual_seed(1)
    trained = get_peft_model(build_model(len(left_tokenizer), initializer_range=0.3),
                             LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, init_lora_weights=False))
    trained.save_pretrained(tmp_path / "lora")
    inputs = encode_messages(left_tokenizer, MESSAGES)
    options = dict(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    plain = base.generate(**options)
    bound = DecodingMethod.from_name("ctd-lora", adapter=str(tmp_path / "lora"), strength=0.5).bind(base,
                                                                                                     left_tokenizer)
    with ContrastProcessor(bound.contrast()) as processor:
        contrasted = base.generate(logits_processor=[processor], **options)
    assert torch.equal(base.generate(**options), plain)  # the adapter is off outside its second view
    reference_model = build_model(len(left_tokenizer), initializer_range=0.3)
    reference = PeftModel.from_pretrained(reference_model, tmp_path / "lora")
    with ContrastProcessor(LoRAContrast(reference, strength=0.5)) as processor:
        expected = reference.generate(logits_processor=[processor], **options)
    assert torch.equal(contrasted, expected) and not torch.equal(contrasted, plain)
    with pytest.raises(SettingError, match="`backend` doubled cannot run method ctd-lora"):
        DecodingMethod.from_name("ctd-lora", adapter=str(tmp_path / "lora"), backend="doubled")
    with pytest.raises(ValueError, match="already carries a peft adapter"):
        DecodingMethod.from_name("ctd-lora", adapter=str(tmp_path / "lora")).bind(reference, left_tokenizer)

