"""The scripts in examples/ run as written (on a tiny model: they take --model)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.parametrize("script, expected", [("tune_and_decode.py", "[ctd]"), ("lora_trl_style.py", "")])
def test_example_runs(tiny_model_dir, tmp_path, script, expected):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--model", str(tiny_model_dir),
                             "--steps", "1", "--output-dir", str(tmp_path / "out")], env=ENV, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout
