"""ctd_hf.integrations.vllm against the transformers executors: od, id and ctd token for token against
``generate_doubled``, cd against the stream executor (greedy, fp32), on a tiny random Llama served by one vLLM engine;
the message-level entry point with its token-change record; pairing refusals; seeded sampling. Skipped without vLLM
(``ctd_hf[vllm]``)."""

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

import json  # noqa: E402
import subprocess  # noqa: E402

import torch  # noqa: E402
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast, set_seed  # noqa: E402

from conftest import LONG, build_model, build_tokenizer  # noqa: E402
from ctd_hf import add_soft_prefix  # noqa: E402
from ctd_hf.records import read_records  # noqa: E402
from test_faults import ENV, cli, kill_when, lines  # noqa: E402
from ctd_hf import (CDMethod, ContrastProcessor, CTDMethod, DecodingMethod, IDMethod, ODMethod, format_prompt,  # noqa: E402
                    generate_doubled)
from ctd_hf.decoding.answers import generate_for_messages  # noqa: E402
from ctd_hf.decoding.recording import OriginalPredictions  # noqa: E402
from ctd_hf.decoding.layout import pad_left  # noqa: E402
from ctd_hf.integrations.vllm import TAG, VLLMEngine  # noqa: E402
from ctd_hf.integrations.vllm import compat  # noqa: E402
from ctd_hf.integrations.vllm.processor import CONTRASTS  # noqa: E402
from test_method_registry import fixed  # noqa: E402, F401  (a toy method, registered for one test)
from ctd_hf.models import ensure_pad_token  # noqa: E402

MAX_TOKENS = 40
MEMORY = 0.1  # of host memory, for each engine's KV cache: the module's and the command-line runs' beside it
MESSAGES = [{"role": "user", "content": text} for text in (
    "Name three primary colours.", "What is the capital of France?",
    "Give me a short poem about the sea and the wind, please.", "Sort these numbers: 3, 1, 2.")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny fp32 Llama with peaked distributions (no near-ties in greedy) and 64-wide heads, with the tokenizer."""
    path = tmp_path_factory.mktemp("vllm-model") / "tiny-llama"
    tokenizer = build_tokenizer()
    build_model(len(tokenizer), hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1,
                initializer_range=0.3, max_position_embeddings=LONG).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def amateur(model_dir):
    """Contrastive Decoding's amateur: a smaller random Llama with the same tokenizer."""
    return build_model(len(build_tokenizer()), seed=1, hidden_size=64, intermediate_size=128, num_attention_heads=1,
                       num_key_value_heads=1, initializer_range=0.3, max_position_embeddings=LONG)


@pytest.fixture(scope="module")
def amateur_dir(amateur, tmp_path_factory):
    path = tmp_path_factory.mktemp("vllm-amateur") / "amateur"
    amateur.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prefix_dir(model_dir, tmp_path_factory):
    """A CTD prefix folder in the format `ctd-hf tune` writes: 4 rows of random vocabulary embeddings."""
    path = tmp_path_factory.mktemp("vllm-prefix") / "prefix"
    set_seed(0)
    add_soft_prefix(LlamaForCausalLM.from_pretrained(model_dir), num_virtual_tokens=4).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine(model_dir):
    """The module's one engine (about 30 s to start on CPU). Its start-up calls torch APIs torch deprecated
    (``torch.distributed.reduce_op``...): warnings from vLLM's code, not ctd_hf's, so they are ignored here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return VLLMEngine(model_dir, max_model_len=256, max_num_seqs=8, dtype="float32", enforce_eager=True,
                          gpu_memory_utilization=MEMORY)


@pytest.fixture(scope="module")
def hf(model_dir):
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    ensure_pad_token(tokenizer)
    return model, tokenizer


def prompt_ids(tokenizer) -> list[list[int]]:
    return [tokenizer(format_prompt([message], "chatml"), add_special_tokens=False)["input_ids"]
            for message in MESSAGES]


def until_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row


def hf_answers(model, tokenizer, prompts: list[list[int]], contrast, max_new_tokens: int = MAX_TOKENS
               ) -> list[list[int]]:
    """Greedy answers of ``generate()`` (``contrast`` None) or ``generate_doubled``, each up to its first EOS."""
    batch = pad_left(tokenizer, prompts)
    kwargs = dict(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        out = model.generate(**kwargs) if contrast is None else generate_doubled(model, contrast, **kwargs)
    length = batch["input_ids"].shape[1]
    return [until_eos(row.tolist(), tokenizer.eos_token_id) for row in out[:, length:]]


def vllm_answers(engine, prompts, contrast) -> list[list[int]]:
    outputs = engine.decode(prompts, contrast, SamplingParams(temperature=0, max_tokens=MAX_TOKENS))
    return [list(output.outputs[0].token_ids) for output in outputs]


def instructive(model, tokenizer, **settings):
    """Instructive Decoding's contrast of MESSAGES (the opposite noise; their noisy prompts as the second view)."""
    return IDMethod(**settings).bind(model, tokenizer).contrast_for(MESSAGES, "chatml")


def test_plain_decoding_equals_transformers(engine, hf):
    model, tokenizer = hf
    prompts = prompt_ids(tokenizer)
    assert vllm_answers(engine, prompts, None) == hf_answers(model, tokenizer, prompts, None)


def test_instructive_decoding_equals_generate_doubled(engine, hf):
    model, tokenizer = hf
    prompts, contrast = prompt_ids(tokenizer), instructive(model, tokenizer, strength=0.3)
    expected = hf_answers(model, tokenizer, prompts, contrast)
    got = vllm_answers(engine, prompts, contrast)
    assert got == expected
    assert got != hf_answers(model, tokenizer, prompts, None)  # the contrast changed something


def test_ctd_equals_generate_doubled(engine, hf):
    model, tokenizer = hf
    prompts = prompt_ids(tokenizer)
    method = CTDMethod(prefix=torch.randn(4, model.config.hidden_size, generator=torch.Generator().manual_seed(0)),
                       strength=0.5)
    contrast = method.bind(model, tokenizer).contrast()
    expected = hf_answers(model, tokenizer, prompts, contrast)
    got = vllm_answers(engine, prompts, contrast)
    assert got == expected
    assert got != hf_answers(model, tokenizer, prompts, None)


def test_contrastive_decoding_equals_the_stream_executor(engine, hf, amateur):
    model, tokenizer = hf
    prompts = prompt_ids(tokenizer)
    contrast = CDMethod(amateur=amateur, strength=0.5).bind(model, tokenizer).contrast()
    batch = pad_left(tokenizer, prompts)
    with torch.no_grad(), ContrastProcessor(contrast) as processor:
        out = model.generate(**batch, logits_processor=[processor], max_new_tokens=MAX_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    expected = [until_eos(row.tolist(), tokenizer.eos_token_id) for row in out[:, batch["input_ids"].shape[1]:]]
    got = vllm_answers(engine, prompts, contrast)
    assert got == expected
    assert got != hf_answers(model, tokenizer, prompts, None)


@pytest.mark.parametrize("name", ["id", "ctd", "cd"])
def test_messages_and_token_changes_equal_transformers(engine, hf, amateur, name):
    """What evaluation, synthesis and ``ctd-hf generate`` call: the same answers, padded like ``generate()``'s, and
    the same record of the original model's predictions."""
    model, tokenizer = hf
    extra = {"ctd": {"prefix": torch.randn(4, model.config.hidden_size, generator=torch.Generator().manual_seed(0))},
             "cd": {"amateur": amateur}, "id": {}}[name]
    method = DecodingMethod.from_name(name, **extra).bind(model, tokenizer)
    results = []
    for executor in (None, engine):
        record = OriginalPredictions()
        output, length = generate_for_messages(method, MESSAGES, "chatml", record=record, engine=executor,
                                               max_new_tokens=MAX_TOKENS, do_sample=False)
        chosen = output[:, length:]
        results.append((tokenizer.batch_decode(chosen, skip_special_tokens=True), output[:, :length].tolist(),
                        [{key: values for key, values in row.items() if key != "max_prob"}
                         for row in record.rows(chosen, {tokenizer.eos_token_id})],
                        [row["max_prob"] for row in record.rows(chosen, {tokenizer.eos_token_id})]))
    (hf_text, hf_prompts, hf_steps, hf_probs), (text, prompts, steps, probs) = results
    assert (text, prompts, steps) == (hf_text, hf_prompts, hf_steps)
    assert all(len(a) == len(b) for a, b in zip(probs, hf_probs)) and steps[0]["chosen"]
    assert torch.allclose(torch.tensor(sum(probs, [])), torch.tensor(sum(hf_probs, [])), atol=1e-4)


def test_messages_refuse_what_vllm_cannot_follow(engine, hf):
    model, tokenizer = hf
    plain = ODMethod().bind(model, tokenizer)
    with pytest.raises(ValueError, match="num_beams > 1"):
        generate_for_messages(plain, MESSAGES, engine=engine, max_new_tokens=4, num_beams=2)
    with pytest.raises(ValueError, match="output_scores"):
        generate_for_messages(plain, MESSAGES, engine=engine, max_new_tokens=1, output_scores=True)
    with pytest.raises(ValueError, match="backend='stream' picks one of transformers' executors"):
        generate_for_messages(IDMethod(backend="stream").bind(model, tokenizer), MESSAGES, engine=engine,
                              max_new_tokens=4)


def test_seeded_sampling_is_reproducible(engine, hf):
    model, tokenizer = hf
    prompts, contrast = prompt_ids(tokenizer), instructive(model, tokenizer)

    def sample(seed: int) -> list[list[int]]:
        params = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=seed, max_tokens=MAX_TOKENS)
        return [list(out.outputs[0].token_ids) for out in engine.decode(prompts, contrast, params)]

    first = sample(1)
    assert sample(1) == first
    assert sample(2) != first


def test_refusals(engine, hf, model_dir):
    model, tokenizer = hf
    prompts, contrast = prompt_ids(tokenizer), instructive(model, tokenizer)
    with pytest.raises(ValueError, match="Beam search is not supported.*num_beams"):
        engine.decode(prompts, contrast, BeamSearchParams(beam_width=2, max_tokens=4))
    with pytest.raises(ValueError, match="n=2.*n times with different seeds"):
        engine.decode(prompts, contrast, SamplingParams(n=2, max_tokens=4))
    with pytest.raises(ValueError, match="repetition_penalty"):
        engine.decode(prompts, contrast, SamplingParams(repetition_penalty=1.2))
    with pytest.raises(ValueError, match="model is torch.bfloat16 and the engine torch.float32"):
        half = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
        engine.decode(prompts, CTDMethod(prefix=torch.randn(4, model.config.hidden_size)).bind(half, tokenizer)
                      .contrast(), SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="more than the vllm engine's 256.*larger max_model_len"):
        engine.decode(prompts, contrast, SamplingParams(max_tokens=250))
    with pytest.raises(ValueError, match="max_num_seqs must be even"):
        VLLMEngine(model_dir, max_model_len=256, max_num_seqs=3)
    with pytest.raises(NotImplementedError, match="tensor_parallel_size.*one engine per device"):
        VLLMEngine(model_dir, max_model_len=256, tensor_parallel_size=2)


def test_a_registered_method_runs_on_vllm(engine, hf, fixed):
    """The one-class toy method of tests/test_method_registry.py: its contrast (the model behind a fixed vector, as
    prompt embeddings) gives generate_doubled's tokens on the engine."""
    model, tokenizer = hf
    prompts = prompt_ids(tokenizer)
    contrast = fixed(value=0.5, strength=0.5).bind(model, tokenizer).contrast_for(MESSAGES, "chatml")
    got = vllm_answers(engine, prompts, contrast)
    assert got == hf_answers(model, tokenizer, prompts, contrast)
    assert got != hf_answers(model, tokenizer, prompts, None)


def test_compat_names_are_where_they_were(engine):
    """Every vLLM name outside its documented API that ctd_hf uses (integrations/vllm/compat.py) is still there."""
    import vllm
    import vllm.envs

    moved = "vLLM {} moved {}; ctd_hf.integrations.vllm.compat was written for vLLM {}".format
    llm_engine = compat.llm_engine(engine.llm)
    for name in ("add_request", "step", "has_unfinished_requests", "vllm_config"):
        assert hasattr(llm_engine, name), moved(vllm.__version__, f"LLMEngine.{name}", compat.TESTED_VERSION)
    config = llm_engine.vllm_config
    for path in ("model_config.max_model_len", "model_config.dtype", "cache_config.num_gpu_blocks",
                 "cache_config.block_size"):
        holder = config
        for part in path.split("."):
            assert hasattr(holder, part), moved(vllm.__version__, f"vllm_config.{path}", compat.TESTED_VERSION)
            holder = getattr(holder, part)
    assert compat.IN_PROCESS_CORE in vllm.envs.environment_variables, moved(
        vllm.__version__, compat.IN_PROCESS_CORE, compat.TESTED_VERSION)


def test_a_lone_tagged_request_fails_loudly(engine, hf):
    """Last in the module: after a failed step the engine refuses further calls."""
    model, tokenizer = hf
    prompts, contrast = prompt_ids(tokenizer), instructive(model, tokenizer)
    CONTRASTS[id(contrast)] = contrast
    llm_engine = engine.llm.llm_engine
    tag = {"contrast": id(contrast), "pair": -1, "role": "main", "temperature": 0.0, "top_k": 0, "top_p": 1.0,
           "seed": 0}
    request_id = llm_engine.add_request("lone", TokensPrompt(prompt_token_ids=prompts[0]),
                                        SamplingParams(temperature=0, max_tokens=4, extra_args={TAG: tag}))
    assert request_id.startswith("lone")
    with pytest.raises(RuntimeError, match="main row is in this step without its partner"):
        engine._run([])  # noqa: SLF001  (nothing added: the lone request already waits in the engine)
    with pytest.raises(RuntimeError, match="start a new process"):
        engine.decode(prompts, None, SamplingParams(max_tokens=4))


def eval_args(model_dir, amateur_dir, prefix_dir, output_dir, *engine: str) -> list[str]:
    """``ctd-hf eval`` on the shipped SuperNI sample with od, id, cd and ctd."""
    return cli("eval", "--model", str(model_dir), "--methods", "od,id,cd,ctd", "--amateur", str(amateur_dir),
               "--prefix", str(prefix_dir), "--superni-tasks", "sample/train_tasks.txt", "--max-instances", "2",
               "--max-new-tokens", "12", "--batch-size", "4", "--max-source-tokens", "3000", "--output-dir",
               str(output_dir), *engine)


def test_eval_on_vllm_equals_hf_and_resumes_after_kill(model_dir, amateur_dir, prefix_dir, tmp_path):
    """The command line's --engine vllm: the report of --engine hf (greedy, fp32), token changes included; killed
    after its first batch, it resumes without losing or repeating a prediction; another engine is refused."""
    vllm = ("--engine", "vllm", "--vllm-memory", str(MEMORY))
    run = lambda args: subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=900)  # noqa: E731
    assert run(eval_args(model_dir, amateur_dir, prefix_dir, tmp_path / "hf")).returncode == 0
    out = tmp_path / "vllm"
    od = out / "predictions" / "superni" / "od" / "rank-0.jsonl"
    kill_when(eval_args(model_dir, amateur_dir, prefix_dir, out, *vllm), lambda: lines(od) >= 4, tmp_path / "kill.log",
              timeout=600)
    written = od.read_bytes()
    result = run(eval_args(model_dir, amateur_dir, prefix_dir, out, *vllm))
    assert result.returncode == 0, result.stderr[-3000:]
    assert od.read_bytes().startswith(written)
    folder = out / "predictions" / "superni"
    for name in ("od", "id", "cd", "ctd"):
        ids = [record["id"] for record in read_records(folder / name / "rank-0.jsonl")]
        assert len(ids) == len(set(ids)) == 24
    hf_report, vllm_report = (json.loads((tmp_path / run_ / "report.json").read_text()) for run_ in ("hf", "vllm"))
    # The original model's max probabilities come from each engine's own fp32 logits: equal to about 1e-6.
    probabilities = [{name: {key: changes.pop(key) for key in ("max_prob_changed", "max_prob_unchanged")}
                      for name, changes in report["benchmarks"]["superni"]["token_changes"].items()}
                     for report in (hf_report, vllm_report)]
    assert vllm_report["benchmarks"] == hf_report["benchmarks"]
    for name, hf_stats in probabilities[0].items():
        for key, stats in hf_stats.items():
            got = probabilities[1][name][key]
            assert got["count"] == stats["count"]
            assert got["mean"] == pytest.approx(stats["mean"], abs=1e-5)
            assert got["median"] == pytest.approx(stats["median"], abs=1e-5)
    assert vllm_report["settings"]["engine"] == "vllm" and hf_report["settings"]["engine"] == "hf"
    for name in ("id", "cd", "ctd"):  # the token-change record: same original predictions and chosen tokens
        hf_rows, vllm_rows = ({r["id"]: (r["original"], r["chosen"]) for r in read_records(
            tmp_path / run_ / "predictions" / "superni" / name / "rank-0.jsonl")} for run_ in ("hf", "vllm"))
        assert vllm_rows == hf_rows
    refused = run(eval_args(model_dir, amateur_dir, prefix_dir, tmp_path / "hf", *vllm))
    assert refused.returncode == 2 and "the engine: hf, now vllm" in refused.stderr


def test_synth_and_generate_on_vllm_equal_hf(model_dir, amateur_dir, tmp_path):
    """``ctd-hf synth`` (CoDIT: cd, with the plain answers) and ``ctd-hf generate`` (id) write what the hf engine
    writes; a synthesis folder refuses to resume on another engine."""
    instructions = tmp_path / "instructions.json"
    instructions.write_text(json.dumps([{"instruction": message["content"]} for message in MESSAGES]))
    vllm = ("--engine", "vllm", "--vllm-memory", str(MEMORY))

    def run(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(cli(*args), env=ENV, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    synth = ("synth", "--expert", str(model_dir), "--amateur", str(amateur_dir), "--instructions", str(instructions),
             "--max-new-tokens", "16", "--also-plain", "--output-dir")
    for name, engine in (("hf", ()), ("vllm", vllm)):
        run(*synth, str(tmp_path / f"synth-{name}"), *engine)
    hf_data, vllm_data = ((tmp_path / f"synth-{name}" / "data.jsonl").read_text() for name in ("hf", "vllm"))
    assert vllm_data == hf_data
    refused = subprocess.run(cli(*synth, str(tmp_path / "synth-hf"), *vllm), env=ENV, capture_output=True, text=True)
    assert refused.returncode == 2 and "engine: 'hf' -> 'vllm'" in refused.stderr

    generate = ("generate", "--model", str(model_dir), "--method", "id", "--max-new-tokens", "16",
                *(flag for message in MESSAGES for flag in ("--prompt", message["content"])))
    outputs = [run(*generate, *engine).stdout for engine in ((), vllm)]
    assert outputs[1] == outputs[0] and len(outputs[0].splitlines()) == len(MESSAGES)
