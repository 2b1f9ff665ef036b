"""The README's Python examples run as written (on the real default model).

Blocks that use vLLM (they import ``ctd_hf.integrations.vllm`` or ``vllm``) need ``ctd_hf[vllm]``, which this
environment does not have: they are skipped here and run by ``tests/test_vllm_default_model.py`` where vLLM is
installed, each in a process of its own (one vLLM engine per process)."""

from __future__ import annotations

import re

import pytest

from conftest import ROOT

_VLLM_IMPORT = re.compile(r"^\s*(?:from|import)\s+(?:ctd_hf\.integrations\.vllm|vllm)\b", flags=re.M)


def readme_python_blocks() -> list[str]:
    """The README's ```python blocks, in order."""
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def needs_vllm(block: str) -> bool:
    """Whether a README block uses vLLM: it imports ``ctd_hf.integrations.vllm`` or ``vllm`` on a line of its own."""
    return bool(_VLLM_IMPORT.search(block))


def test_needs_vllm_recognises_the_imports():
    assert needs_vllm("import ctd_hf\nfrom ctd_hf.integrations.vllm import VLLMEngine\n")
    assert needs_vllm("    import ctd_hf.integrations.vllm as served\n")
    assert needs_vllm("from vllm import SamplingParams\n")
    assert not needs_vllm("from ctd_hf.integrations.hub import export_custom_generate\n")
    assert not needs_vllm("print('see ctd_hf.integrations.vllm in the README')\nimport vllmish\n")


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = [block for block in readme_python_blocks() if not needs_vllm(block)]
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    assert (tmp_path / "runs" / "readme" / "prefix" / "adapter_model.safetensors").is_file()
