"""Benchmark: contrastive tuning (CTD) vs plain prompt tuning of the same soft prefix, on CPU.

Not a test. It measures, on the real default model (SmolLM2-135M-Instruct) and real SFT data, one optimizer step of

  (a) ``ctd``: ``CTDTrainer.training_step`` -> ``CTDTrainer.compute_loss`` (one no-grad forward with the adapter
      disabled + one forward with the prefix, contrastive loss) + backward, then an AdamW step over the prefix;
  (b) ``pt``:  plain ``transformers.Trainer.training_step`` -> ``Trainer.compute_loss`` (the peft prompt-tuning
      model's forward with ``labels``, i.e. its built-in causal-LM loss) + backward, then an AdamW step over the
      same prefix.

Both optimizers come from ``Trainer.create_optimizer()`` (the Trainer's default AdamW) and hold only the prefix.

Time: one process, the two modes interleaved round by round on the same batch (a b, b a, a b, ...), warm-up rounds
discarded, median over the measured rounds.

Memory: one fresh subprocess per mode, so the peaks never mix. Definition (Linux): before each measured step the
process runs ``gc.collect()`` + glibc ``malloc_trim(0)`` (freed heap goes back to the OS, so the resident set is the
live memory: weights, optimizer state, batches, Python/torch runtime), reads ``VmRSS`` and resets the high-water mark
(``echo 5 > /proc/self/clear_refs``); after the step it reads ``VmHWM``. "step peak" = max over measured steps of
``VmHWM - VmRSS_before`` (what training adds on top of the resident model: activations, logits, gradients,
loss buffers); "process peak" = max ``VmHWM`` (absolute). One warm-up step runs first so the optimizer state and
lazy initialisations exist before measuring.

Run:  python bench/tune.py            (about 5 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from machine import ROOT, cpu_name, git_state  # bench/, this script's folder

DEFAULT_DATA = ROOT / "src" / "ctd_hf" / "resources" / "sft" / "alpaca_en_demo.json"
TARGET_TIME, TARGET_MEMORY = 1.4, 1.15
MODES = ("ctd", "pt")
MODE_NAMES = {"ctd": "(a) contrastive tuning", "pt": "(b) prompt tuning"}


# ----------------------------------------------------------------------------------------------- memory probes
def _proc_status() -> dict[str, int]:
    text = Path("/proc/self/status").read_text()
    return {key: int(value) * 1024 for key, value in re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", text, re.M)}


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _busy_jiffies() -> tuple[int, int]:
    """(jiffies all CPUs spent busy, jiffies this process spent) so far: the difference is other processes' load."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle and iowait
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])  # utime + stime of all threads


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ----------------------------------------------------------------------------------------------- setup
def _setup(args: argparse.Namespace):
    import torch
    import transformers
    from transformers import Trainer, TrainingArguments

    from ctd_hf import CTDConfig, CTDTrainer, RightPaddingCollator, add_soft_prefix, load_sft_data
    from ctd_hf import load_model_and_tokenizer, tokenize_sft
    from ctd_hf.formula import IGNORE_INDEX

    torch.set_num_threads(args.threads)
    transformers.set_seed(0)
    transformers.logging.set_verbosity_error()
    model, tokenizer = load_model_and_tokenizer(args.model)
    model = add_soft_prefix(model, num_virtual_tokens=args.prefix)

    # Batches of exactly batch_size x seq_len: examples whose prompt + answer reach seq_len tokens, cut at seq_len by
    # tokenize_sft (labels on the answer tokens only), so no row is padded and every row has the same length.
    data = tokenize_sft(load_sft_data(args.data), tokenizer, max_length=args.seq_len)
    full = [row for row in data if len(row["input_ids"]) == args.seq_len]
    if not full:
        raise SystemExit(f"No example of {args.data} reaches {args.seq_len} tokens; lower --seq-len.")
    collator = RightPaddingCollator(tokenizer.pad_token_id)
    rows_needed = args.batch_size * args.rounds
    rows = [full[i % len(full)] for i in range(rows_needed)]  # repeats examples only if there are too few
    batches = [collator(rows[i : i + args.batch_size]) for i in range(0, rows_needed, args.batch_size)]
    for batch in batches:
        assert batch["input_ids"].shape == (args.batch_size, args.seq_len), batch["input_ids"].shape
        assert bool(batch["attention_mask"].all())

    out = tempfile.mkdtemp(prefix="ctd-bench-")
    common = dict(
        use_cpu=True,
        report_to="none",
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        remove_unused_columns=False,
        save_strategy="no",
        disable_tqdm=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ctd = CTDTrainer(model=model, args=CTDConfig(out, alpha=args.alpha, **common), data_collator=collator)
        pt = Trainer(model=model, args=TrainingArguments(out, **common), data_collator=collator)
    trainers = {"ctd": ctd, "pt": pt}
    for trainer in trainers.values():
        trainer.create_optimizer()
        # Outside Trainer.train() this attribute is unset; one micro-batch per optimizer step.
        trainer.current_gradient_accumulation_steps = 1
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["prompt_encoder.default.embedding.weight"], trainable
    for trainer in trainers.values():
        params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
        assert len(params) == 1 and params[0] is model.get_parameter(trainable[0])

    def step(mode: str, batch: dict) -> float:
        trainer = trainers[mode]
        # What Trainer.train() passes: the label tokens (after the causal shift) of the accumulated batch.
        items = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        loss = trainer.training_step(model, dict(batch), num_items_in_batch=items)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        return float(loss)

    label_tokens = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches]
    info = {
        "examples_at_seq_len": len(full),
        "label_tokens_per_batch": label_tokens,
        "optimizer": type(ctd.optimizer).__name__,
        "optim_arg": str(ctd.args.optim),
        "attn_implementation": model.get_base_model().config._attn_implementation,
        "vocab_size": model.get_base_model().config.vocab_size,
    }
    return step, batches, info


# ----------------------------------------------------------------------------------------------- workers
def _worker_time(args: argparse.Namespace) -> dict:
    step, batches, info = _setup(args)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    foreign: dict[str, list[float]] = {mode: [] for mode in MODES}
    losses: dict[str, list[float]] = {mode: [] for mode in MODES}
    tick = os.sysconf("SC_CLK_TCK")
    for round_ in range(args.warmup + args.steps):
        batch = batches[round_ % len(batches)]
        order = MODES if round_ % 2 == 0 else MODES[::-1]
        for mode in order:
            busy0, own0 = _busy_jiffies()
            cpu0, start = time.process_time(), time.perf_counter()
            loss = step(mode, batch)
            elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu0
            busy1, own1 = _busy_jiffies()
            other = max(0.0, ((busy1 - busy0) - (own1 - own0)) / tick / elapsed)  # CPU cores used by other processes
            tag = "warmup" if round_ < args.warmup else "measured"
            print(f"[time] round {round_} {mode:3s} {elapsed:7.2f} s (cpu {cpu_s:6.2f} s, other processes "
                  f"{other:.2f} cores) loss {loss:.4f} ({tag})", file=sys.stderr, flush=True)
            if round_ >= args.warmup:
                times[mode].append(elapsed)
                cpu[mode].append(cpu_s)
                foreign[mode].append(other)
                losses[mode].append(loss)
    return {"times_s": times, "cpu_s": cpu, "other_cores": foreign, "losses": losses, **info}


def _worker_memory(args: argparse.Namespace) -> dict:
    step, batches, info = _setup(args)
    _trim()
    after_setup = _proc_status()
    for i in range(args.mem_warmup):
        step(args.mode, batches[i % len(batches)])
    deltas, peaks, before = [], [], []
    for i in range(args.mem_steps):
        batch = batches[(args.mem_warmup + i) % len(batches)]
        _trim()
        rss = _proc_status()["VmRSS"]
        if not _reset_peak():
            raise SystemExit("Cannot reset VmHWM (/proc/self/clear_refs not writable); memory not measured.")
        step(args.mode, batch)
        hwm = _proc_status()["VmHWM"]
        deltas.append(hwm - rss)
        peaks.append(hwm)
        before.append(rss)
        print(f"[mem] {args.mode} step {i}: rss_before {rss / 2**20:.0f} MiB, hwm {hwm / 2**20:.0f} MiB, "
              f"step peak {(hwm - rss) / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    return {
        "mode": args.mode,
        "rss_after_setup_bytes": after_setup["VmRSS"],
        "rss_before_step_bytes": before,
        "step_peak_bytes": deltas,
        "process_peak_bytes": peaks,
        **info,
    }


def _run_worker(kind: str, args: argparse.Namespace, mode: str | None = None) -> dict:
    command = [sys.executable, __file__, "--worker", kind] + _forwarded(args)
    if mode:
        command += ["--mode", mode]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _forwarded(args: argparse.Namespace) -> list[str]:
    out = []
    for name in ("model", "data", "batch_size", "seq_len", "prefix", "alpha", "lr", "threads", "warmup", "steps",
                 "mem_warmup", "mem_steps"):
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return out


# ----------------------------------------------------------------------------------------------- report
def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model name or folder (default: the embedded default model)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="SFT data file")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--prefix", type=int, default=20, help="soft prefix length (virtual tokens)")
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=9e-4)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--warmup", type=int, default=2, help="interleaved warm-up rounds (timing)")
    parser.add_argument("--steps", type=int, default=4, help="interleaved measured rounds (timing)")
    parser.add_argument("--mem-warmup", type=int, default=1, help="warm-up steps per memory subprocess")
    parser.add_argument("--mem-steps", type=int, default=3, help="measured steps per memory subprocess")
    parser.add_argument("--json-out", default=None, help="also write the JSON result to this file")
    parser.add_argument("--worker", choices=("time", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.rounds = max(args.warmup + args.steps, args.mem_warmup + args.mem_steps)

    if args.worker == "time":
        print(json.dumps(_worker_time(args)))
        return
    if args.worker == "memory":
        print(json.dumps(_worker_memory(args)))
        return

    import peft
    import torch
    import transformers

    command = "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:])
    started = time.time()
    timing = _run_worker("time", args)
    memory = {mode: _run_worker("memory", args, mode) for mode in MODES}
    wall = time.time() - started

    med = {mode: statistics.median(timing["times_s"][mode]) for mode in MODES}
    med_cpu = {mode: statistics.median(timing["cpu_s"][mode]) for mode in MODES}
    other = {mode: statistics.mean(timing["other_cores"][mode]) for mode in MODES}
    step_peak = {mode: max(memory[mode]["step_peak_bytes"]) for mode in MODES}
    proc_peak = {mode: max(memory[mode]["process_peak_bytes"]) for mode in MODES}
    resident = {mode: min(memory[mode]["rss_before_step_bytes"]) for mode in MODES}
    ratio_time = med["ctd"] / med["pt"]
    ratio_cpu = med_cpu["ctd"] / med_cpu["pt"]
    ratio_step = step_peak["ctd"] / step_peak["pt"]
    ratio_proc = proc_peak["ctd"] / proc_peak["pt"]

    def verdict(value: float, target: float) -> str:
        return f"{'meets' if value <= target else 'MISSES'} <= {target}x"

    def listed(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
        return ", ".join(f"{v / scale:.{digits}f}" for v in values)

    lines = [
        f"Command: `{command}` (git {git_state()})",
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
        f"Python {platform.python_version()}; torch.set_num_threads({args.threads}); {os.cpu_count()} CPUs "
        f"({cpu_name()}), no GPU; attention {timing['attn_implementation']}",
        f"Batch {args.batch_size} x {args.seq_len} tokens, no padding (label tokens per batch: "
        f"{timing['label_tokens_per_batch'][: args.warmup + args.steps]}), prefix {args.prefix} virtual tokens, "
        f"alpha {args.alpha}, {timing['optimizer']} ({timing['optim_arg']}) over the prefix only",
        f"Time: {args.warmup} warm-up + {args.steps} measured interleaved rounds, median (wall and process CPU "
        f"time). Memory: fresh subprocess per mode, {args.mem_warmup} warm-up + {args.mem_steps} measured steps; "
        "step peak = max(VmHWM - VmRSS before the step), after gc + malloc_trim; process peak = max VmHWM.",
        "",
        "| mode | time / step (s, median) | CPU time / step (s, median) | step peak memory (MiB) "
        "| process peak memory (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        lines.append(
            f"| {MODE_NAMES[mode]} | {med[mode]:.2f} | {med_cpu[mode]:.2f} | {_mib(step_peak[mode])} | "
            f"{_mib(proc_peak[mode])} |"
        )
    lines += [
        f"| **ratio a/b** (target) | **{ratio_time:.3f}x** ({verdict(ratio_time, TARGET_TIME)}) | {ratio_cpu:.3f}x | "
        f"**{ratio_step:.3f}x** ({verdict(ratio_step, TARGET_MEMORY)}) | "
        f"**{ratio_proc:.3f}x** ({verdict(ratio_proc, TARGET_MEMORY)}) |",
        "",
    ]
    for mode in MODES:
        lines.append(
            f"- {MODE_NAMES[mode]}: step times {listed(timing['times_s'][mode])} s; "
            f"CPU {listed(timing['cpu_s'][mode])} s; other processes used {other[mode]:.2f} CPU cores on average "
            "during its measured steps; step peaks "
            f"{listed(memory[mode]['step_peak_bytes'], 2**20, 0)} MiB over a resident "
            f"{_mib(resident[mode])} MiB (model, optimizer, data, runtime)"
        )
    print("\n".join(lines))
    result = {
        "command": command,
        "git": git_state(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "python": platform.python_version()},
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "prefix": args.prefix,
        "alpha": args.alpha,
        "time_median_s": med,
        "cpu_median_s": med_cpu,
        "times_s": timing["times_s"],
        "cpu_s": timing["cpu_s"],
        "other_processes_cores": timing["other_cores"],
        "losses": timing["losses"],
        "step_peak_bytes": step_peak,
        "step_peaks_bytes": {mode: memory[mode]["step_peak_bytes"] for mode in MODES},
        "process_peak_bytes": proc_peak,
        "resident_before_step_bytes": resident,
        "ratio_time": ratio_time,
        "ratio_cpu_time": ratio_cpu,
        "ratio_step_peak_memory": ratio_step,
        "ratio_process_peak_memory": ratio_proc,
        "targets": {"time": TARGET_TIME, "memory": TARGET_MEMORY},
        "label_tokens_per_batch": timing["label_tokens_per_batch"],
        "wall_s": round(wall, 1),
    }
    print(json.dumps(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
