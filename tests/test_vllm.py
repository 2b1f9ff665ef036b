"""ctd_hf.integrations.vllm against ctd_hf.generate_doubled: od, id and ctd token for token (greedy, fp32) on a tiny
random Llama served by one vLLM engine; pairing refusals; seeded sampling. Skipped without vLLM (``ctd_hf[vllm]``)."""

from __future__ import annotations

import warnings

import pytest

# vLLM's imports reach torch modules that torch itself deprecated (torch.jit.script_method); the suite's
# filterwarnings turns that into an error, so it is ignored here by its message and nothing else.
JIT_DEPRECATION = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
pytestmark = pytest.mark.filterwarnings(JIT_DEPRECATION)
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
    pytest.importorskip("vllm")
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import BeamSearchParams

import torch  # noqa: E402
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from conftest import build_model, build_tokenizer  # noqa: E402
from ctd_hf import DecodingMethod, format_prompt, generate_doubled  # noqa: E402
from ctd_hf.decoding.layout import pad_left  # noqa: E402
from ctd_hf.integrations.vllm import TAG, VLLMEngine  # noqa: E402
from ctd_hf.models import ensure_pad_token  # noqa: E402

MAX_TOKENS = 40
MESSAGES = [{"role": "user", "content": text} for text in (
    "Name three primary colours.", "What is the capital of France?",
    "Give me a short poem about the sea and the wind, please.", "Sort these numbers: 3, 1, 2.")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny fp32 Llama with peaked distributions (no near-ties in greedy) and 64-wide heads, with the tokenizer."""
    path = tmp_path_factory.mktemp("vllm-model") / "tiny-llama"
    tokenizer = build_tokenizer()
    build_model(len(tokenizer), hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1,
                initializer_range=0.3).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine(model_dir):
    """The module's one engine (about 30 s to start on CPU). Its start-up calls torch APIs torch deprecated
    (``torch.distributed.reduce_op``...): warnings from vLLM's code, not ctd_hf's, so they are ignored here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return VLLMEngine(model_dir, max_model_len=256, max_num_seqs=8, dtype="float32", enforce_eager=True,
                          gpu_memory_utilization=0.3)


@pytest.fixture(scope="module")
def hf(model_dir):
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    ensure_pad_token(tokenizer)
    return model, tokenizer


def prompt_ids(tokenizer) -> list[list[int]]:
    return [tokenizer(format_prompt([message], "chatml"), add_special_tokens=False)["input_ids"]
            for message in MESSAGES]


def unpadded(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [row[keep.bool()].tolist() for row, keep in zip(ids, mask)]


def until_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row


def hf_answers(model, tokenizer, prompts: list[list[int]], contrast) -> list[list[int]]:
    batch = pad_left(tokenizer, prompts)
    kwargs = dict(**batch, max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        out = model.generate(**kwargs) if contrast is None else generate_doubled(model, contrast, **kwargs)
    length = batch["input_ids"].shape[1]
    return [until_eos(row.tolist(), tokenizer.eos_token_id) for row in out[:, length:]]


def vllm_answers(engine, prompts, method, **kwargs) -> list[list[int]]:
    outputs = engine.generate(prompts, method, SamplingParams(temperature=0, max_tokens=MAX_TOKENS), **kwargs)
    return [list(output.outputs[0].token_ids) for output in outputs]


def noisy(method: DecodingMethod, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    return method.noisy_prompts(tokenizer, MESSAGES, "chatml")


def test_plain_decoding_equals_transformers(engine, hf):
    model, tokenizer = hf
    prompts = prompt_ids(tokenizer)
    assert vllm_answers(engine, prompts, DecodingMethod("od")) == hf_answers(model, tokenizer, prompts, None)


def test_instructive_decoding_equals_generate_doubled(engine, hf):
    model, tokenizer = hf
    prompts, method = prompt_ids(tokenizer), DecodingMethod("id", strength=0.3)
    noisy_batch = noisy(method, tokenizer)
    expected = hf_answers(model, tokenizer, prompts, method.contrast(model, tokenizer, noisy_batch))
    got = vllm_answers(engine, prompts, method, noisy_prompts=unpadded(*noisy_batch))
    assert got == expected
    assert got != hf_answers(model, tokenizer, prompts, None)  # the contrast changed something


def test_ctd_equals_generate_doubled(engine, hf):
    model, tokenizer = hf
    prompts = prompt_ids(tokenizer)
    method = DecodingMethod("ctd", prefix=torch.randn(4, model.config.hidden_size, generator=torch.Generator()
                                                      .manual_seed(0)), strength=0.5)
    expected = hf_answers(model, tokenizer, prompts, method.contrast(model, tokenizer))
    got = vllm_answers(engine, prompts, method, model=model)
    assert got == expected
    assert got != hf_answers(model, tokenizer, prompts, None)


def test_seeded_sampling_is_reproducible(engine, hf):
    model, tokenizer = hf
    prompts, method = prompt_ids(tokenizer), DecodingMethod("id")
    noisy_prompts = unpadded(*noisy(method, tokenizer))

    def sample(seed: int) -> list[list[int]]:
        params = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=seed, max_tokens=MAX_TOKENS)
        return [list(out.outputs[0].token_ids)
                for out in engine.generate(prompts, method, params, noisy_prompts=noisy_prompts)]

    first = sample(1)
    assert sample(1) == first
    assert sample(2) != first


def test_refusals(engine, hf, model_dir):
    model, tokenizer = hf
    prompts, method = prompt_ids(tokenizer), DecodingMethod("id")
    noisy_prompts = unpadded(*noisy(method, tokenizer))
    with pytest.raises(ValueError, match="Beam search is not supported.*num_beams"):
        engine.generate(prompts, method, BeamSearchParams(beam_width=2, max_tokens=4), noisy_prompts=noisy_prompts)
    with pytest.raises(ValueError, match="n=2.*n times with different seeds"):
        engine.generate(prompts, method, SamplingParams(n=2, max_tokens=4), noisy_prompts=noisy_prompts)
    with pytest.raises(ValueError, match="repetition_penalty"):
        engine.generate(prompts, method, SamplingParams(repetition_penalty=1.2), noisy_prompts=noisy_prompts)
    with pytest.raises(NotImplementedError, match="planned"):
        engine.generate(prompts, DecodingMethod("cd", amateur=str(model_dir)), SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="needs `noisy_prompts`"):
        engine.generate(prompts, method, SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="exceed max_model_len"):
        engine.generate(prompts, method, SamplingParams(max_tokens=250), noisy_prompts=noisy_prompts)
    with pytest.raises(ValueError, match="max_num_seqs must be even"):
        VLLMEngine(model_dir, max_model_len=256, max_num_seqs=3)


def test_a_lone_tagged_request_fails_loudly(engine, hf):
    """Last in the module: after a failed step the engine refuses further calls."""
    model, tokenizer = hf
    prompts = prompt_ids(tokenizer)
    llm_engine = engine.llm.llm_engine
    tag = {"pair": -1, "role": "main", "strength": 0.3, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
    request_id = llm_engine.add_request("lone", TokensPrompt(prompt_token_ids=prompts[0]),
                                        SamplingParams(temperature=0, max_tokens=4, extra_args={TAG: tag}))
    assert request_id.startswith("lone")
    with pytest.raises(RuntimeError, match="main row is in this step without its partner"):
        engine._run([])  # noqa: SLF001  (nothing added: the lone request already waits in the engine)
    with pytest.raises(RuntimeError, match="start a new process"):
        engine.generate(prompts, DecodingMethod("od"), SamplingParams(max_tokens=4))
