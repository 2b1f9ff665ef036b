"""ctd_hf.integrations.vllm on the real default model (SmolLM2-135M-Instruct): od equals ``model.generate()``, id and
ctd equal ``generate_doubled`` token for token (greedy, fp32, 4 ChatML prompts), up to and including each answer's
first EOS (``<|im_end|>``, id 2, which is also the pad token); and the README's vLLM example runs. Slow (the real
model, one vLLM engine for the module, about 10-20 s to start on CPU); skipped without vLLM (``ctd_hf[vllm]``)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

# vLLM's imports reach torch modules that torch itself deprecated (torch.jit.script_method); the suite's
# filterwarnings turns that into an error, so it is ignored here by its message and nothing else.
JIT_DEPRECATION = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings(JIT_DEPRECATION)]
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
    pytest.importorskip("vllm")
    from vllm import SamplingParams

import torch  # noqa: E402

from ctd_hf import CTDMethod, IDMethod, format_prompt, load_model_and_tokenizer  # noqa: E402
from ctd_hf.integrations.vllm import VLLMEngine  # noqa: E402
from ctd_hf.models import resolve_model_path  # noqa: E402
from ctd_hf.prompts import encode_prompt  # noqa: E402
from conftest import ROOT  # noqa: E402
from test_readme import needs_vllm, readme_python_blocks  # noqa: E402
from test_vllm import MESSAGES, hf_answers, until_eos  # noqa: E402

MAX_TOKENS = 48


def test_readme_vllm_example_runs(tmp_path):
    """The README's vLLM block, in a process of its own (it starts its own engine: one per process). First in the
    module, so it runs before the module's engine holds its share of memory."""
    blocks = [block for block in readme_python_blocks() if needs_vllm(block)]
    assert len(blocks) == 1
    result = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "runs" / "readme-vllm" / "prefix" / "adapter_model.safetensors").is_file()


@pytest.fixture(scope="module")
def hf():
    model, tokenizer = load_model_and_tokenizer("default")  # fp32
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def engine():
    """The module's one engine. Its start-up calls torch APIs torch deprecated (``torch.distributed.reduce_op``...):
    warnings from vLLM's code, not ctd_hf's, so they are ignored here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        engine = VLLMEngine(resolve_model_path("default"), max_model_len=256, max_num_seqs=8, dtype="float32")
    yield engine
    engine.close()


def prompt_ids(tokenizer) -> list[list[int]]:
    return [encode_prompt(format_prompt([message], "chatml"), tokenizer, "chatml") for message in MESSAGES]


def vllm_answers(engine, tokenizer, prompts, contrast) -> list[list[int]]:
    outputs = engine.decode(prompts, contrast, SamplingParams(temperature=0, max_tokens=MAX_TOKENS))
    return [until_eos(list(output.outputs[0].token_ids), tokenizer.eos_token_id) for output in outputs]


def check_equal(got: list[list[int]], expected: list[list[int]], eos: int) -> None:
    assert got == expected
    # The comparison covers both ways an answer ends: at its EOS (included) and at MAX_TOKENS.
    assert any(answer[-1] == eos for answer in got), "no answer reached its EOS: lengthen MAX_TOKENS"


def test_plain_decoding_equals_transformers(engine, hf):
    model, tokenizer = hf
    prompts = prompt_ids(tokenizer)
    check_equal(vllm_answers(engine, tokenizer, prompts, None),
                hf_answers(model, tokenizer, prompts, None, MAX_TOKENS), tokenizer.eos_token_id)


def test_instructive_decoding_equals_generate_doubled(engine, hf):
    model, tokenizer = hf
    prompts = prompt_ids(tokenizer)
    contrast = IDMethod().bind(model, tokenizer).contrast_for(MESSAGES, "chatml")  # opposite noise, strength 0.3
    expected = hf_answers(model, tokenizer, prompts, contrast, MAX_TOKENS)
    got = vllm_answers(engine, tokenizer, prompts, contrast)
    check_equal(got, expected, tokenizer.eos_token_id)
    assert got != hf_answers(model, tokenizer, prompts, None, MAX_TOKENS)  # the contrast changed something


def test_ctd_equals_generate_doubled(engine, hf):
    model, tokenizer = hf
    prompts = prompt_ids(tokenizer)
    embeddings = model.get_input_embeddings()
    tokens = torch.randint(0, embeddings.weight.shape[0], (20,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # a 20-row prefix of vocabulary embeddings (a tuned one's scale), strength 0.3
        contrast = CTDMethod(prefix=embeddings(tokens).clone()).bind(model, tokenizer).contrast()
    expected = hf_answers(model, tokenizer, prompts, contrast, MAX_TOKENS)
    got = vllm_answers(engine, tokenizer, prompts, contrast)
    check_equal(got, expected, tokenizer.eos_token_id)
    assert got != hf_answers(model, tokenizer, prompts, None, MAX_TOKENS)


def test_readme_serving_lines_run(tmp_path):
    """The README's two serving lines as written: `ctd-hf serve` on the default model (the console script of this
    environment), then the curl request."""
    block = next(block for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
                 if "ctd-hf serve" in block)
    serve_line, curl_line = (line for line in block.splitlines() if line.strip())
    assert serve_line.endswith(" &") and curl_line.startswith("curl ")
    command = shlex.split(serve_line[:-2])
    command[0] = str(Path(sys.executable).parent / command[0])
    server = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen("http://127.0.0.1:8000/health", timeout=1)
                break
            except OSError:
                assert server.poll() is None
                time.sleep(1)
        reply = json.loads(subprocess.run(curl_line, shell=True, capture_output=True, text=True, check=True).stdout)
    finally:
        server.terminate()
        server.wait(timeout=120)
    assert reply["ctd_hf"]["method"] == "id" and reply["choices"][0]["message"]["content"]
