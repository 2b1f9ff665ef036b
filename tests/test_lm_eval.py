"""The lm-evaluation-harness model ``ctd_hf`` on local YAML tasks over local JSONL data and a tiny random Llama: od is
the harness's ``hf`` model, ctd with beta 0 is od, contrastive scores equal a brute-force computation, generation
runs the doubled executor, ``--limit`` and ``--use_cache`` work, and the command line finds the model."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from conftest import build_model
from ctd_hf import CTDContrast, InstructiveContrast, add_soft_prefix, generate_doubled, noisy_instruction
from ctd_hf.formula import contrastive_decoding_scores
from ctd_hf.adapter import write_card

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.tasks import TaskManager  # noqa: E402

from ctd_hf.integrations.lm_eval import CTDLM  # noqa: E402  (registers the model "ctd_hf")
from test_method_registry import fixed  # noqa: E402, F401  (a toy method, registered for one test)

TASKS = ["tiny_mc", "tiny_gen"]
MC_TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
description: "Answer the question.\\n\\n"
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
metadata:
  version: 1.0
"""
GEN_TASK = """task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer_dir):
    """A tiny random Llama folder (larger init, so greedy answers vary), an amateur, a random prefix, two tasks."""
    root = tmp_path_factory.mktemp("lm-eval")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    for name, layers, seed in (("tiny-llama", 2, 0), ("amateur", 1, 1)):
        build_model(len(tokenizer), seed=seed, num_hidden_layers=layers, initializer_range=0.2).save_pretrained(
            root / name)
        tokenizer.save_pretrained(root / name)
    model = AutoModelForCausalLM.from_pretrained(root / "tiny-llama").eval()
    torch.manual_seed(0)
    prefixed = add_soft_prefix(model, num_virtual_tokens=4, init="random")
    prefixed.save_pretrained(root / "prefix")
    write_card(root / "prefix", prefixed)
    rows = [{"question": f"What is {i} plus {i}?", "choices": ["two", "four", "six"], "label": i % 3,
             "answer": str(2 * i)} for i in range(6)]
    (root / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "tasks").mkdir()
    (root / "tasks" / "tiny_mc.yaml").write_text(MC_TASK.format(data=root / "data.jsonl"))
    (root / "tasks" / "tiny_gen.yaml").write_text(GEN_TASK.format(data=root / "data.jsonl"))
    return SimpleNamespace(root=root, model=model, tokenizer=tokenizer,  # prompt tuning leaves `model` unchanged
                           tasks=TaskManager(include_path=str(root / "tasks")),
                           base=f"pretrained={root / 'tiny-llama'},dtype=float32")


def evaluate(setup, model: str = "ctd_hf", extra: str = "", **options):
    options = {"batch_size": 4, **options}
    return lm_eval.simple_evaluate(model=model, model_args=setup.base + extra, tasks=TASKS, task_manager=setup.tasks,
                                   device="cpu", log_samples=True, **options)


def metrics(results) -> dict:
    return {task: {key: value for key, value in values.items() if "," in key}
            for task, values in results["results"].items()}


def responses(results, task: str) -> list:
    return [sample["resps"] for sample in results["samples"][task]]


def log_likelihoods(results) -> list[float]:
    return [choice[0][0] for sample in responses(results, "tiny_mc") for choice in sample]


@pytest.fixture(scope="module")
def od(setup):
    return evaluate(setup, extra=",method=od")


def test_registered_and_od_is_the_hf_model(setup, od):
    assert lm_eval.api.registry.get_model("ctd_hf") is CTDLM
    plain = evaluate(setup, model="hf")
    assert metrics(od) == metrics(plain)
    for task in TASKS:
        assert responses(od, task) == responses(plain, task)


def test_ctd_with_beta_zero_is_od(setup, od):
    ctd = evaluate(setup, extra=f",method=ctd,prefix={setup.root / 'prefix'},beta=0")
    assert metrics(ctd)["tiny_mc"] == metrics(od)["tiny_mc"]
    assert log_likelihoods(ctd) == pytest.approx(log_likelihoods(od), abs=1e-4)
    assert responses(ctd, "tiny_gen") == responses(od, "tiny_gen")


def brute_force(setup, method: str, context: str, continuation: str) -> float:
    """The contrasted log-likelihood of one request, one unpadded sequence per view, without ctd_hf's code paths."""
    model, tokenizer = setup.model, setup.tokenizer
    ids = tokenizer.encode(context)
    tokens = tokenizer.encode(context + continuation)[len(ids):]  # the harness's split of context and continuation
    full = torch.tensor([ids + tokens])
    scored = slice(len(ids) - 1, -1)  # the positions that predict the continuation
    with torch.no_grad():
        z = model(full).logits[0, scored]
        if method == "ctd":
            prefix = load_file(setup.root / "prefix" / "adapter_model.safetensors")["prompt_embeddings"]
            embeds = torch.cat([prefix[None], model.get_input_embeddings()(full)], dim=1)
            z_prefixed = model(inputs_embeds=embeds).logits[0, len(prefix):][scored]
            scores = F.log_softmax(z - 0.5 * z_prefixed, -1)
        elif method == "id":
            instruction, _, task_input = context.partition("\n\n")
            noisy = tokenizer.encode(noisy_instruction(instruction, task_input, "opposite"))
            z_noisy = model(torch.tensor([noisy + tokens])).logits[0, len(noisy) - 1 : -1]
            scores = F.log_softmax(z - 0.5 * z_noisy, -1)
        else:
            amateur = AutoModelForCausalLM.from_pretrained(setup.root / "amateur").eval()
            z_amateur = amateur(full).logits[0, scored]
            scores = contrastive_decoding_scores(F.log_softmax(z, -1), F.log_softmax(z_amateur, -1), 1e-9, 1.0)
    return float(scores.gather(-1, torch.tensor(tokens)[:, None]).sum())


@pytest.mark.parametrize("method", ["ctd", "id", "cd"])
def test_contrasted_scores_equal_brute_force(setup, od, method):
    extra = {"ctd": f",method=ctd,prefix={setup.root / 'prefix'},beta=0.5", "id": ",method=id,strength=0.5",
             "cd": f",method=cd,amateur={setup.root / 'amateur'},beta=1.0,plausibility=1e-9"}[method]
    results = evaluate(setup, extra=extra, limit=2)
    assert log_likelihoods(results) != pytest.approx(log_likelihoods(od)[: len(log_likelihoods(results))], abs=1e-3)
    sample = results["samples"]["tiny_mc"][1]
    for (context, continuation), response in zip(sample["arguments"], sample["resps"]):
        expected = brute_force(setup, method, context, continuation)
        assert math.isfinite(expected)  # (a tiny plausibility threshold keeps CD's scores finite)
        assert math.isclose(response[0][0], expected, rel_tol=1e-5, abs_tol=1e-4), (method, response, expected)


@pytest.mark.parametrize("method", ["ctd", "id"])
def test_generation_runs_the_doubled_executor(setup, od, method):
    """Each answer equals generate_doubled on the request's prompt; id's noisy prompt is the opposite sentence followed
    by the whole context (the generation task has no description, so no blank line)."""
    extra = f",method=ctd,prefix={setup.root / 'prefix'},beta=0.5" if method == "ctd" else ",method=id,strength=0.5"
    results = evaluate(setup, extra=extra)
    assert responses(results, "tiny_gen") != responses(od, "tiny_gen")
    for sample in results["samples"]["tiny_gen"]:
        context = sample["arguments"][0][0]
        inputs = setup.tokenizer([context], return_tensors="pt")
        if method == "ctd":
            contrast = CTDContrast(setup.model, setup.root / "prefix", strength=0.5)
        else:
            noisy = setup.tokenizer([noisy_instruction("", context, "opposite")], return_tensors="pt")
            contrast = InstructiveContrast(setup.model, noisy["input_ids"], noisy["attention_mask"], strength=0.5)
        output = generate_doubled(setup.model, contrast, **inputs, max_new_tokens=8, do_sample=False,
                                  pad_token_id=setup.tokenizer.eos_token_id)
        text = setup.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert sample["resps"] == [[text.split("\n")[0]]]


def test_limit_and_cache(setup, tmp_path, monkeypatch):
    extra = f",method=ctd,prefix={setup.root / 'prefix'},beta=0.5"
    first = evaluate(setup, extra=extra, limit=2, use_cache=str(tmp_path / "cache"), batch_size=1)
    assert [len(first["samples"][task]) for task in TASKS] == [2, 2]

    def fail(*args, **kwargs):
        raise AssertionError("the cached requests were recomputed")

    monkeypatch.setattr(CTDLM, "_loglikelihood_tokens", fail)
    monkeypatch.setattr(CTDLM, "_model_generate", fail)
    again = evaluate(setup, extra=extra, limit=2, use_cache=str(tmp_path / "cache"), batch_size=1)
    assert metrics(again) == metrics(first)
    assert [responses(again, task) for task in TASKS] == [responses(first, task) for task in TASKS]


def test_a_registered_method_runs_with_its_own_settings(setup, od, fixed):
    """A method registered outside ctd_hf (tests/test_method_registry.py) takes its settings from --model_args."""
    toy = evaluate(setup, extra=",method=fixed,value=0.3,strength=2.0")
    assert log_likelihoods(toy) != log_likelihoods(od)
    assert responses(toy, "tiny_gen") != responses(od, "tiny_gen")
    with pytest.raises(ValueError, match="method=od does not use value"):
        CTDLM(pretrained=str(setup.root / "tiny-llama"), method="od", value=0.3, device="cpu")


def test_bad_settings_are_refused(setup):
    folder = str(setup.root / "tiny-llama")
    with pytest.raises(ValueError, match="Unknown method 'xyz'"):
        CTDLM(pretrained=folder, method="xyz", device="cpu")
    with pytest.raises(ValueError, match="`prefix` is needed by method ctd"):
        CTDLM(pretrained=folder, method="ctd", device="cpu")
    with pytest.raises(ValueError, match="integer batch_size"):
        CTDLM(pretrained=folder, method="id", batch_size="auto", device="cpu")
    with pytest.raises(ValueError, match="one of them"):
        CTDLM(pretrained=folder, method="id", beta=0.1, strength=0.2, device="cpu")
    model = CTDLM(pretrained=folder, method="ctd", prefix=str(setup.root / "prefix"), device="cpu")
    with pytest.raises(NotImplementedError, match="method=od"):
        model.loglikelihood_rolling([])


@pytest.mark.parametrize(("method", "settings", "unused"), [
    ("od", dict(prefix="PREFIX", beta=0.5), "prefix, beta"), ("id", dict(prefix="PREFIX"), "prefix"),
    ("ctd", dict(prefix="PREFIX", noise="none"), "noise"), ("od", dict(strength=0.3), "strength"),
    ("ctd", dict(prefix="PREFIX", amateur="PREFIX"), "amateur")])
def test_settings_the_method_does_not_use_are_refused(setup, method, settings, unused):
    """0.2: prefix=...,beta=0.5 without method=ctd scored with plain decoding, as od does."""
    settings = {name: str(setup.root / "prefix") if value == "PREFIX" else value for name, value in settings.items()}
    with pytest.raises(ValueError, match=f"method={method} does not use {unused} "):
        CTDLM(pretrained=str(setup.root / "tiny-llama"), method=method, device="cpu", **settings)


def test_noise_none_from_model_args_is_the_none_noise(setup):
    """0.2: the harness turns `noise=none` into None, which reached DecodingMethod as no noise type at all."""
    model = CTDLM(pretrained=str(setup.root / "tiny-llama"), method="id", noise=None, device="cpu")
    assert model.method.spec.noise == "none"


def test_command_line_finds_the_model(setup, tmp_path):
    """``ctd-hf-lm-eval`` (the harness's command line after importing the plugin) in a fresh process."""
    extra = f",method=ctd,prefix={setup.root / 'prefix'},beta=0.5"
    command = [sys.executable, "-c", "from ctd_hf.integrations.lm_eval import main; main()", "--model", "ctd_hf",
               "--model_args", setup.base + extra, "--tasks", "tiny_mc", "--include_path", str(setup.root / "tasks"),
               "--limit", "2", "--batch_size", "2", "--device", "cpu", "--output_path", str(tmp_path), "--log_samples"]
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = Path(tmp_path).rglob("results_*.json")
    (samples_file,) = Path(tmp_path).rglob("samples_tiny_mc_*.jsonl")
    in_process = evaluate(setup, extra=extra, limit=2, batch_size=2)
    from_cli = json.loads(results_file.read_text())["results"]["tiny_mc"]
    assert from_cli["acc,none"] == metrics(in_process)["tiny_mc"]["acc,none"]
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    from_cli = [float(choice[0][0]) for sample in samples for choice in sample["resps"]]
    assert from_cli == pytest.approx(log_likelihoods(in_process))
