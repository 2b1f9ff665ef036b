"""The README's Python examples run as written (on the real default model)."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "runs" / "readme" / "prefix" / "adapter_model.safetensors").is_file()
