"""Benchmark: od, id and ctd on transformers, on vLLM's offline engine (its engine core in this process, and in its
own process, vLLM's default) and behind ``ctd-hf serve`` (concurrent clients), same prompts, one run (a benchmark
script, not a test).

One job: ``--prompts`` (64) SuperNI prompts, ``--new-tokens`` (64) new tokens each, greedy, fp32, the default model
(SmolLM2-135M-Instruct), decoded with

* ``od``   plain decoding;
* ``id``   Instructive Decoding (``opposite`` noise, strength ``--id-strength``);
* ``ctd``  CTD with a 20-row prefix (by default the embeddings of 20 random vocabulary tokens, as in bench/decode.py:
  timing does not need a trained prefix; ``--prefix DIR`` takes a folder written by ``ctd-hf tune``), beta ``--beta``;

on three engines:

* ``hf``    transformers: ``model.generate()`` for od, ``ctd_hf.generate_doubled()`` (one forward of 2B rows per step)
  for id and ctd, ``--hf-batch`` (16) prompts per call, longest prompts first as ``ctd-hf eval`` batches them
  (similar lengths share a batch: less padding), left-padded, stopping when every row of the batch has its EOS;
* ``vllm-inproc``  ``ctd_hf.integrations.vllm.VLLMEngine`` with its engine core in this process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): all prompts in one ``decode()`` call, the engine scheduling
  ``--max-num-seqs`` (32) requests per step (for id and ctd: 16 pairs, the same rows per step as a doubled HF batch
  of 16);
* ``vllm``  the same with vLLM's defaults: the engine core (and, on CPU, the worker) in processes of their own.

Then the server: ``ctd-hf serve`` (vLLM's defaults) in a process of its own, ``--server-clients`` (8) clients each
sending its share of ``--server-requests`` (96) chat requests, the methods taking turns (od, id, ctd) over the same
prompts, greedy: requests/s, generated tokens/s and the median latency, and whether each answer's tokens equal the
offline ``vllm`` engine's.

The prompts are a fixed sample of the SuperNI data shipped in the package: the development sample
``splits/sample/train_tasks.txt`` (12 training tasks, none of them an official test task), taken round-robin over the
tasks in the order of the list, the first instances of each (64 prompts: 6 instances of the first 4 tasks, 5 of the
others), zero-shot in ChatML. A task list holding an official test task is refused.

Timing: the model and the engine are loaded first (their load times are printed but excluded from every throughput);
one warm-up round (``--warmup-prompts`` prompts, ``--warmup-tokens`` new tokens, every method on both engines); then
``--reps`` timed rounds, the methods in order and, within a method, HF and vLLM back to back (the order of the two
alternating between rounds). Throughput = generated tokens actually produced, up to and including each answer's first
EOS (the tokens HF computes for rows that already finished are not counted), over the wall time of the call. With
more than one round, medians. The tokens of the two engines are compared prompt by prompt, up to and including the
first EOS.

    python bench/engines.py                          # about 12 minutes on 2 CPU cores
    python bench/engines.py --prompts 8 --new-tokens 16 --hf-batch 4 --max-num-seqs 8 --server-requests 12  # smoke

Needs ``ctd_hf[vllm]`` (docs/serving.md). Prints a Markdown table, the ratios against the targets (PASS/FAIL) and one
JSON line (``BENCH_JSON {...}``); ``--json-out`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # read when vLLM is imported: keep the benchmark's output short

import torch  # noqa: E402
import transformers  # noqa: E402

with warnings.catch_warnings():  # vLLM's imports reach torch.jit.script_method, which torch itself deprecated
    warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
    import vllm  # noqa: E402
    from vllm import SamplingParams  # noqa: E402

    from ctd_hf.integrations.vllm import VLLMEngine  # noqa: E402

import ctd_hf  # noqa: E402
from ctd_hf import (CTDMethod, IDMethod, ODMethod, add_soft_prefix, format_prompt, generate_doubled,  # noqa: E402
                    load_model_and_tokenizer)
from ctd_hf.decoding.layout import pad_left  # noqa: E402
from ctd_hf.evaluation.tasks.superni import (SuperNIOptions, load_superni, official_test_tasks_in,  # noqa: E402
                                              task_names)
from ctd_hf.models import resolve_model_path  # noqa: E402
from ctd_hf.prompts import encode_prompt  # noqa: E402
from ctd_hf.resources import resource_path  # noqa: E402
from machine import cpu_jiffies, cpu_name, process_tree  # noqa: E402  (bench/, this script's folder)

METHODS = ("od", "id", "ctd")
ENGINES = ("hf", "vllm-inproc", "vllm")
PROMPT_FORMAT = "chatml"
# name -> (numerator, denominator, quantity, comparison, limit)
TARGETS = {
    "vLLM od / HF od throughput": (("vllm", "od"), ("hf", "od"), "tokens_per_s", ">=", 2.0),
    "vLLM ctd / HF ctd (doubled) throughput": (("vllm", "ctd"), ("hf", "ctd"), "tokens_per_s", ">=", 1.5),
    "vLLM ctd time / vLLM od time": (("vllm", "ctd"), ("vllm", "od"), "wall_s", "<=", 2.2),
}
INFO_RATIOS = {  # printed beside the targets, no target of their own
    "vLLM id / HF id (doubled) throughput": (("vllm", "id"), ("hf", "id"), "tokens_per_s"),
    "vLLM id time / vLLM od time": (("vllm", "id"), ("vllm", "od"), "wall_s"),
    "vLLM ctd / vLLM od time per generated token": (("vllm", "ctd"), ("vllm", "od"), "s_per_token"),
    "HF ctd time / HF od time": (("hf", "ctd"), ("hf", "od"), "wall_s"),
    "vLLM ctd time / vLLM od time, core in process": (("vllm-inproc", "ctd"), ("vllm-inproc", "od"), "wall_s"),
    "vLLM (defaults) / vLLM (core in process) ctd throughput": (("vllm", "ctd"), ("vllm-inproc", "ctd"),
                                                               "tokens_per_s"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64, help="SuperNI prompts (default 64)")
    parser.add_argument("--new-tokens", type=int, default=64, help="max new tokens per answer (default 64)")
    parser.add_argument("--tasks", default="sample/train_tasks.txt",
                        help="task list under the shipped splits/ (default: the development sample, 12 training "
                             "tasks); lists with an official test task are refused")
    parser.add_argument("--hf-batch", type=int, default=16, help="prompts per transformers generate() call")
    parser.add_argument("--max-num-seqs", type=int, default=32,
                        help="vLLM requests per step (a pair takes two; default 32)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.15,
                        help="each vLLM engine's share of memory for weights and KV cache (on CPU: of host memory)")
    parser.add_argument("--server-clients", type=int, default=8, help="concurrent clients of the server (0: none)")
    parser.add_argument("--server-requests", type=int, default=96, help="requests the clients send in all")
    parser.add_argument("--reps", type=int, default=1, help="timed rounds after the warm-up round (default 1)")
    parser.add_argument("--warmup-prompts", type=int, default=4)
    parser.add_argument("--warmup-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, set before the engine starts")
    parser.add_argument("--prefix", type=Path, default=None,
                        help="a prefix folder written by `ctd-hf tune` (default: 20 random vocabulary embeddings)")
    parser.add_argument("--prefix-len", type=int, default=20, help="rows of the random prefix")
    parser.add_argument("--beta", type=float, default=0.3, help="CTD's strength")
    parser.add_argument("--id-strength", type=float, default=0.3, help="Instructive Decoding's strength")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON record to this file")
    return parser.parse_args()


def load_items(tasks: str, count: int) -> tuple[list[dict], dict[str, int]]:
    """``count`` SuperNI items of the shipped task list ``tasks``, round-robin over its tasks (the first instances of
    each), and how many each task gave."""
    task_list = resource_path("supernatinst", "splits", tasks)
    if test_tasks := official_test_tasks_in(task_list):
        raise SystemExit(f"{tasks} holds official SuperNI test tasks ({', '.join(test_tasks)}): use a development "
                         "list such as sample/train_tasks.txt.")
    names = task_names(task_list)
    items = load_superni(SuperNIOptions(tasks=tasks, max_instances=math.ceil(count / len(names))))
    rank: dict[str, int] = {}
    ranked = []
    for item in items:  # load_superni gives each task's instances together, tasks in the list's order
        rank[item["group"]] = rank.get(item["group"], -1) + 1
        ranked.append((rank[item["group"]], names.index(item["group"]), item))
    chosen = [item for _, _, item in sorted(ranked, key=lambda entry: entry[:2])[:count]]
    if len(chosen) < count:
        raise SystemExit(f"{tasks} gives only {len(chosen)} instances, fewer than --prompts {count}.")
    per_task = {name: sum(item["group"] == name for item in chosen) for name in names}
    return chosen, per_task


def until_eos(row: list[int], eos: int) -> list[int]:
    """The tokens an answer produced: up to and including its first EOS."""
    return row[: row.index(eos) + 1] if eos in row else row


def busy_jiffies() -> tuple[int, int]:
    """(jiffies all CPUs spent busy, jiffies this process and its descendants, the engines' processes, spent): the
    difference is other processes' load."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle and iowait
    return busy, sum(cpu_jiffies(pid) for pid in process_tree(os.getpid()))


def agree(reference: dict[int, list[int]], other: dict[int, list[int]], items: list[dict]) -> dict:
    """How many prompts got the same tokens, and where the others first differ."""
    differ = {i: next((k for k, (a, b) in enumerate(zip(reference[i], other[i])) if a != b),
                      min(len(reference[i]), len(other[i]))) for i in reference if reference[i] != other[i]}
    return {"equal": len(reference) - len(differ), "prompts": len(reference),
            "first_difference_at": {items[i]["id"]: k for i, k in differ.items()}}


def serve_and_measure(args: argparse.Namespace, messages: list[dict], prefix: Path, max_model_len: int, eos: int,
                      offline: dict, items: list[dict]) -> dict:
    """``ctd-hf serve`` in a process of its own, ``--server-clients`` concurrent clients: throughput, latency, and
    whether each answer equals the offline engine's."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "ctd_hf.cli", "serve", "--port", str(port), "--vllm-max-model-len",
               str(max_model_len), "--vllm-max-num-seqs", str(args.max_num_seqs), "--vllm-memory",
               str(args.gpu_memory_utilization)]
    started = time.perf_counter()
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"ctd-hf serve exited: {' '.join(command)}") from None
            time.sleep(1)
    start_s = time.perf_counter() - started
    settings = {"od": {}, "id": {"strength": args.id_strength}, "ctd": {"prefix": str(prefix), "strength": args.beta}}
    jobs = [(METHODS[index % len(METHODS)], index % len(messages)) for index in range(args.server_requests)]

    def ask(job: tuple[str, int]) -> tuple[float, list[int], tuple[str, int]]:
        name, prompt = job
        body = {"messages": [{"role": "user", "content": messages[prompt]["content"],
                              "input": messages[prompt].get("input", "")}], "max_tokens": args.new_tokens,
                "temperature": 0, "return_token_ids": True, "method": name, **settings[name]}
        request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        sent = time.perf_counter()
        with urllib.request.urlopen(request, timeout=3600) as response:
            reply = json.loads(response.read())
        return time.perf_counter() - sent, reply["choices"][0]["token_ids"], job

    try:
        begin = time.perf_counter()
        with ThreadPoolExecutor(args.server_clients) as pool:
            results = list(pool.map(ask, jobs))
        wall = time.perf_counter() - begin
    finally:
        server.terminate()
        server.wait(timeout=120)
    tokens = sum(len(until_eos(answer, eos)) for _, answer, _ in results)
    equal = sum(until_eos(answer, eos) == offline[("vllm", name)][prompt] for _, answer, (name, prompt) in results)
    return {"requests": len(results), "wall_s": wall, "requests_per_s": len(results) / wall,
            "tokens_per_s": tokens / wall, "median_latency_s": statistics.median(t for t, _, _ in results),
            "equal": equal, "start_s": start_s}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)  # before the engine starts: vLLM's CPU worker then disables set_num_threads
    torch.manual_seed(0)

    items, per_task = load_items(args.tasks, args.prompts)
    messages = [item["message"] for item in items]

    t0 = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer()  # the default model, fp32, CPU
    model.eval()
    hf_load_s = time.perf_counter() - t0
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    if args.prefix is not None:
        prefix_label, prefix = str(args.prefix), args.prefix
    else:  # a folder, which the server reads too
        vocab = model.get_input_embeddings().weight.shape[0]
        tokens = torch.randint(0, vocab, (args.prefix_len,), generator=torch.Generator().manual_seed(0))
        prefixed = add_soft_prefix(model, num_virtual_tokens=args.prefix_len)
        with torch.no_grad():
            prefixed.prompt_encoder["default"].embedding.weight.copy_(model.get_input_embeddings()(tokens))
        prefix = Path(tempfile.mkdtemp(), "prefix")
        prefixed.save_pretrained(prefix)
        prefix_label = f"{args.prefix_len} random vocabulary embeddings (seed 0)"
    # Bound once: the prefix is read and checked once.
    specs = {"od": ODMethod(), "id": IDMethod(strength=args.id_strength),
             "ctd": CTDMethod(prefix=prefix, strength=args.beta)}
    methods = {name: spec.bind(model, tokenizer) for name, spec in specs.items()}
    prefix_rows = methods["ctd"].prefix_length

    prompts = [encode_prompt(format_prompt([message], PROMPT_FORMAT), tokenizer, PROMPT_FORMAT)
               for message in messages]
    noisy = [encode_prompt(format_prompt([methods["id"].second_message(message)], PROMPT_FORMAT), tokenizer,
                           PROMPT_FORMAT) for message in messages]
    longest = max(max(len(p) + prefix_rows, len(n)) for p, n in zip(prompts, noisy))
    max_model_len = 16 * math.ceil((longest + args.new_tokens) / 16)
    hf_order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), items[i]["id"]))  # as ctd-hf eval

    engines, vllm_load_s = {}, {}
    for name, in_process in (("vllm-inproc", True), ("vllm", False)):
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # the engine's start-up calls torch APIs that torch deprecated (vLLM's code)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"  # read when an engine is built
            engines[name] = VLLMEngine(resolve_model_path("default"), max_model_len=max_model_len,
                                       max_num_seqs=args.max_num_seqs, dtype="float32",
                                       memory=args.gpu_memory_utilization)
        vllm_load_s[name] = time.perf_counter() - t0
    threads_after_start = torch.get_num_threads()

    def run_hf(name: str, chosen: list[int], new_tokens: int) -> dict[int, list[int]]:
        answers = {}
        for start in range(0, len(chosen), args.hf_batch):
            rows = chosen[start : start + args.hf_batch]
            batch = pad_left(tokenizer, [prompts[i] for i in rows])
            options = dict(**batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=eos)
            with torch.inference_mode():
                contrast = methods[name].contrast_for([messages[i] for i in rows], PROMPT_FORMAT)
                out = model.generate(**options) if contrast is None else generate_doubled(model, contrast, **options)
            width = batch["input_ids"].shape[1]
            answers.update((i, until_eos(row, eos)) for i, row in zip(rows, out[:, width:].tolist()))
        return answers

    def vllm_runner(engine: VLLMEngine):
        def run_vllm(name: str, chosen: list[int], new_tokens: int) -> dict[int, list[int]]:
            contrast = methods[name].contrast_for([messages[i] for i in chosen], PROMPT_FORMAT)
            outputs = engine.decode([prompts[i] for i in chosen], contrast,
                                    SamplingParams(temperature=0, max_tokens=new_tokens))
            return {i: until_eos(list(output.outputs[0].token_ids), eos) for i, output in zip(chosen, outputs)}

        return run_vllm

    runners = {"hf": run_hf, **{name: vllm_runner(engine) for name, engine in engines.items()}}
    every = list(range(len(prompts)))
    tick = os.sysconf("SC_CLK_TCK")
    load_before = os.getloadavg()
    runs: dict[tuple[str, str], list[dict]] = {(engine_name, name): [] for name in METHODS for engine_name in ENGINES}
    answers: dict[tuple[str, str], dict[int, list[int]]] = {}
    t_start = time.perf_counter()
    for rep in range(args.reps + 1):  # round 0 is the warm-up
        warmup = rep == 0
        # HF batches the longest prompts first; vLLM takes them in their order and schedules them itself.
        order = {name: every[: args.warmup_prompts] for name in ENGINES} if warmup else {
            "hf": hf_order, "vllm-inproc": every, "vllm": every}
        new_tokens = args.warmup_tokens if warmup else args.new_tokens
        for name in METHODS:
            for engine_name in (ENGINES if rep % 2 == 0 else ENGINES[::-1]):
                busy0, own0 = busy_jiffies()
                start = time.perf_counter()
                got = runners[engine_name](name, order[engine_name], new_tokens)
                wall = time.perf_counter() - start
                busy1, own1 = busy_jiffies()
                cpu = (own1 - own0) / tick
                other = max(0.0, ((busy1 - busy0) - (own1 - own0)) / tick / wall)
                tokens = sum(len(answer) for answer in got.values())
                print(f"rep {rep}{' (warm-up)' if warmup else ''}: {engine_name:11s} {name:3s} {len(got)} prompts, "
                      f"{tokens} tokens in {wall:.2f} s ({tokens / wall:.1f} tok/s, {cpu / wall:.2f} cores, other "
                      f"processes {other:.2f} cores)", file=sys.stderr, flush=True)
                if warmup:
                    continue
                runs[(engine_name, name)].append({"wall_s": wall, "cpu_s": cpu, "tokens": tokens,
                                                  "tokens_per_s": tokens / wall, "other_cores": other})
                answers.setdefault((engine_name, name), got)  # the first timed round's tokens
    total = time.perf_counter() - t_start
    load_after = os.getloadavg()

    rows = []
    summary: dict[tuple[str, str], dict[str, float]] = {}
    for name in METHODS:
        for engine_name in ENGINES:
            measured = runs[(engine_name, name)]
            tokens = statistics.median(run["tokens"] for run in measured)
            wall = statistics.median(run["wall_s"] for run in measured)
            summary[(engine_name, name)] = {
                "wall_s": wall, "tokens": tokens,
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in measured),
                "s_per_token": wall / tokens, "cores": statistics.median(r["cpu_s"] / r["wall_s"] for r in measured),
                "other_cores": max(run["other_cores"] for run in measured),
            }
            rows.append({"engine": engine_name, "method": name, **summary[(engine_name, name)], "runs": measured})

    agreement = {f"{engine_name} {name}": agree(answers[("hf", name)], answers[(engine_name, name)], items)
                 for engine_name in ENGINES[1:] for name in METHODS}
    for engine in engines.values():
        engine.close()  # before the server starts its own engine
    server = serve_and_measure(args, messages, prefix, max_model_len, eos, answers, items) \
        if args.server_clients else None

    def ratio(numerator, denominator, quantity) -> float:
        return summary[numerator][quantity] / summary[denominator][quantity]

    targets = {}
    for key, (numerator, denominator, quantity, comparison, limit) in TARGETS.items():
        value = ratio(numerator, denominator, quantity)
        met = value >= limit if comparison == ">=" else value <= limit
        targets[key] = {"value": value, "target": f"{comparison} {limit}", "met": met}
    info = {key: ratio(*spec) for key, spec in INFO_RATIOS.items()}

    print(f"\n## od, id and ctd on transformers and vLLM (CPU): {cpu_name()}, {args.threads} threads, fp32, greedy\n")
    print(f"{len(prompts)} SuperNI prompts ({args.tasks}), up to {args.new_tokens} new tokens; HF batch "
          f"{args.hf_batch} (longest first), vLLM max_num_seqs {args.max_num_seqs}, max_model_len {max_model_len}; "
          f"ctd prefix: {prefix_label}, beta {args.beta}; id strength {args.id_strength}. Load times (excluded): "
          f"HF model {hf_load_s:.1f} s, vLLM engines {vllm_load_s['vllm-inproc']:.1f} s (core in this process), "
          f"{vllm_load_s['vllm']:.1f} s (vLLM's defaults).\n")
    print("| engine | method | wall s | generated tokens | tokens/s | CPU cores used | other processes (cores) |"
          " runs (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        label = {"hf": "transformers", "vllm-inproc": "vLLM, core in process", "vllm": "vLLM, defaults"}[
            row["engine"]]
        executor = {"od": "generate", "id": "doubled", "ctd": "doubled"}[row["method"]] if row["engine"] == "hf" \
            else "VLLMEngine"
        runs_s = ", ".join(f"{run['wall_s']:.2f}" for run in row["runs"])
        print(f"| {label} ({executor}) | {row['method']} | {row['wall_s']:.2f} | {row['tokens']:.0f} | "
              f"{row['tokens_per_s']:.1f} | {row['cores']:.2f} | {row['other_cores']:.2f} | {runs_s} |")
    print("\n| target | measured | target | met |\n|---|---:|---|---|")
    for key, target in targets.items():
        print(f"| {key} | {target['value']:.2f}x | {target['target']}x | {'PASS' if target['met'] else 'FAIL'} |")
    for key, value in info.items():
        print(f"| {key} | {value:.2f}x | (none) | |")
    print("\n| engine, method | prompts whose vLLM tokens equal HF's (up to and including the first EOS) |\n|---|---|")
    for name, agreed in agreement.items():
        where = agreed["first_difference_at"]
        detail = f"; first differing token at {sorted(where.values())}" if where else ""
        print(f"| {name} | {agreed['equal']} / {agreed['prompts']}{detail} |")
    shared = {f"{row['engine']} {row['method']}": row["other_cores"] for row in rows if row["other_cores"] > 0.1}
    if shared:
        print("\nThe machine was shared: other processes used more than 0.1 CPU cores during "
              + ", ".join(f"{case} ({cores:.2f})" for case, cores in shared.items())
              + ": those times are disturbed; rerun on a quiet machine.")
    print(f"\ntotal timed loop {total:.0f} s (warm-up included); load average before {load_before[0]:.2f}, after "
          f"{load_after[0]:.2f} (1 min); torch threads after the engine started: {threads_after_start}")
    if server is not None:
        print(f"\n## ctd-hf serve: {args.server_clients} concurrent clients, {server['requests']} chat requests "
              f"(od, id, ctd in turn), up to {args.new_tokens} new tokens, greedy; server start "
              f"{server['start_s']:.0f} s (excluded)\n")
        print(f"| requests/s | generated tokens/s | median latency (s) | wall (s) | answers equal to VLLMEngine's |\n"
              f"|---:|---:|---:|---:|---|\n| {server['requests_per_s']:.2f} | {server['tokens_per_s']:.1f} | "
              f"{server['median_latency_s']:.2f} | {server['wall_s']:.1f} | {server['equal']} / {server['requests']} |")

    record = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "vllm": vllm.__version__,
                     "ctd_hf": ctd_hf.__version__},
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "threads": args.threads, "threads_after_engine_start": threads_after_start, "dtype": "float32",
        "model": ctd_hf.DEFAULT_MODEL, "prompt_format": PROMPT_FORMAT, "tasks": args.tasks, "per_task": per_task,
        "prompt_ids": [item["id"] for item in items], "prompt_tokens": [len(p) for p in prompts],
        "new_tokens": args.new_tokens, "hf_batch": args.hf_batch, "max_num_seqs": args.max_num_seqs,
        "max_model_len": max_model_len, "gpu_memory_utilization": args.gpu_memory_utilization, "reps": args.reps,
        "warmup_prompts": args.warmup_prompts, "warmup_tokens": args.warmup_tokens, "prefix": prefix_label,
        "prefix_rows": prefix_rows, "beta": args.beta, "id_strength": args.id_strength,
        "load_s": {"hf_model": hf_load_s, **vllm_load_s},
        "rows": rows, "shared_machine": shared, "targets": targets, "info_ratios": info, "agreement": agreement,
        "server": server, "server_clients": args.server_clients,
        "total_s": total, "loadavg_before": load_before, "loadavg_after": load_after,
    }
    line = json.dumps(record)
    print("BENCH_JSON " + line)
    if args.json_out:
        args.json_out.write_text(line + "\n")


if __name__ == "__main__":
    main()
