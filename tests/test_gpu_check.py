"""bench/gpu_check.py, the prepared GPU check, in its CPU dry run (``--device cpu --tiny``: a tiny random Llama, a
few prompts): every step runs or says why not, both files are written and the correctness checks pass, so the script
cannot rot before a GPU runs it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import torch

from conftest import ROOT

STEPS = {"correctness-fp32", "correctness-bf16", "decode-speed", "tuning-speed", "vllm"}


def test_cpu_dry_run_writes_both_files_and_passes(tmp_path):
    # Deprecations caused by the script's own calls are errors, as in the suite (pyproject.toml's filterwarnings).
    command = [sys.executable, "-W", "error::DeprecationWarning:__main__", "-W", "error::FutureWarning:__main__",
               str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny", "--threads", "2", "--out",
               str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    # transformers logs some deprecations instead of warning; vLLM's own (in its processes) are not the script's.
    before_vllm = done.stderr.split("[vllm] limit")[0]
    assert "deprecat" not in before_vllm.lower(), before_vllm[-4000:]
    assert (tmp_path / "gpu_check.md").read_text().startswith("# GPU check")
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert done.stdout.splitlines()[-1] == "BENCH_JSON " + json.dumps(record)
    assert set(record["steps"]) == STEPS and record["passed"]
    for name, step in record["steps"].items():
        assert step["status"] and step["wall_s"] is not None, name

    for dtype in ("fp32", "bf16"):
        step = record["steps"][f"correctness-{dtype}"]
        assert step["status"] == "passed", step
        checks = step["results"]["checks"]
        assert len(checks) == 10 and step["results"]["alone_prompts"] == {"done": 4, "asked": 4}
        allowed = {"pass"} if dtype == "fp32" else {"pass", "counted", "reference"}
        assert {check["verdict"] for check in checks} <= allowed, checks

    speed = record["steps"]["decode-speed"]
    assert speed["status"] == "done"
    cases = speed["results"]["cases"]
    for size in (1, 4):
        for executor in ("plain", "doubled", "stream"):
            assert cases[f"{executor} dynamic b{size}"]["status"] == "measured"
        for cache in ("static", "static+compile"):
            assert cases[f"plain {cache} b{size}"]["status"] == "measured"
            assert cases[f"doubled {cache} b{size}"]["status"].startswith("not supported: The doubled executor")
            assert cases[f"stream {cache} b{size}"]["status"].startswith("not supported: ContrastProcessor")
    tuning = record["steps"]["tuning-speed"]
    assert tuning["status"] == "done" and tuning["results"]["ratios"]["time ctd / sft"] > 0

    vllm = record["steps"]["vllm"]
    if importlib.util.find_spec("vllm") is None:
        assert vllm["status"] == "skipped" and "vllm is not importable" in vllm["reason"]
    else:
        assert vllm["status"] == "passed", vllm


def test_a_difference_fails_where_the_guarantee_table_says_and_is_counted_elsewhere(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # the script imports bench/machine.py
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # dataclasses look their module up there
    spec.loader.exec_module(gpu_check)
    # One row, two steps: (top score, second score, largest |score|) per step; the answers part at step 1, where the
    # top two are 0.1 apart: within 2 bf16 rounding steps at |score| 30 (2 x 0.125), far outside fp32's.
    top = torch.tensor([[[5.0, 1.0, 30.0], [5.0, 4.9, 30.0]]])
    a, b = gpu_check.Run([[7, 8]], top, 0.0), gpu_check.Run([[7, 9]], top, 0.0)
    failed = gpu_check.compare("fp32", [(a, 0, b, 0)], torch.float32, "guarantee")
    assert failed["verdict"] == "FAIL" and failed["differences"][0]["first_differing_step"] == 1
    assert not failed["differences"][0]["near_tie"]
    counted = gpu_check.compare("bf16", [(a, 0, b, 0), (a, 0, a, 0)], torch.bfloat16, "counted")
    assert counted["verdict"] == "counted" and (counted["equal"], counted["differ"], counted["near_ties"]) == (1, 1, 1)
    assert gpu_check.compare("same", [(a, 0, a, 0)], torch.float32, "guarantee")["verdict"] == "pass"
