"""Benchmark: cost of CTD decoding against plain greedy decoding on CPU (a benchmark script, not a test).

Methods, all greedy (fp32, forced length with ``min_new_tokens == max_new_tokens``), timed in one process with the
methods interleaved inside every repetition (one short warm-up round of ``--warmup-tokens`` new tokens, then ``--reps``
rounds at full length; the median is reported):

* ``greedy``   plain ``model.generate()``
* ``stream``   ``with CTDProcessor(model, prefix, beta) as p: model.generate(logits_processor=[p])`` (contrast stream,
  own cache)
* ``doubled``  ``ctd_hf.generate_doubled(model, CTDContrast(model, prefix, beta))`` (one forward of 2B rows per step)
* ``id-stream`` / ``id-doubled``  Instructive Decoding (``opposite`` noise, strength 0.3) through the stream and
  through ``ctd_hf.generate_doubled`` (the noisy prompt differs in length from the real one)
* ``cd-stream``  Contrastive Decoding with the model as its own amateur (the cost of a same-size amateur; a smaller
  amateur costs less)
* ``peer``     transformers' own unbatched classifier-free guidance: ``model.generate(guidance_scale=...,
  negative_prompt_ids=..., negative_prompt_attention_mask=...)``; the negative prompt is the same 20 random
  vocabulary tokens followed by the prompt, so its contrast stream is exactly as long as CTD's.

plus ``greedy`` at batch 2 (two copies of the batch-1 prompt: the floor for a doubled batch of one prompt) and
``greedy``/``stream``/``doubled`` at ``--long-tokens`` new tokens at batch 1 (cost per step must not grow).

The prefix is the embeddings of 20 random vocabulary tokens (timing does not need a trained prefix).

    python bench/decode.py                  # default: warm-up + 3 repetitions, about 15-20 minutes on 2 CPU cores
    python bench/decode.py --only-b1        # batch 1 only, about 5 minutes
    python bench/decode.py --reps 1 --quick # smoke run

Prints a Markdown table and one JSON line (``BENCH_JSON {...}``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

import ctd_hf
from ctd_hf import (
    ContrastiveDecodingProcessor,
    ContrastProcessor,
    CTDContrast,
    CTDProcessor,
    InstructiveContrast,
    format_prompt,
    load_model_and_tokenizer,
    noisy_instruction,
)

from machine import cpu_name  # bench/, this script's folder

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "ctd_hf" / "resources" / "sft" / "alpaca_en_demo.json"

TARGETS = {
    "doubled_b1": 1.65,  # doubled / greedy at batch 1
    "long_over_short": 2.2,  # time(long) / time(short) for stream and doubled at batch 1
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions after one warm-up round (default 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--long-tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8, help="the large batch size (default 8)")
    parser.add_argument("--prefix-len", type=int, default=20)
    parser.add_argument("--beta", type=float, default=0.3)
    parser.add_argument("--guidance-scale", type=float, default=1.3)
    parser.add_argument("--warmup-tokens", type=int, default=8, help="new tokens of the warm-up round (default 8)")
    parser.add_argument("--only-b1", action="store_true",
                        help="only the batch-1 cases at --new-tokens (and greedy at batch 2): a longer paired run")
    parser.add_argument("--quick", action="store_true", help="skip the long runs (smoke test)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON record to this file")
    return parser.parse_args()


def load_prompts(tokenizer, count: int) -> list[str]:
    records = json.loads(DATA.read_text())[:count]
    return [
        format_prompt([{"role": "user", "content": r["instruction"], "input": r.get("input", "")}], "chatml")
        for r in records
    ]


def left_pad(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return {"input_ids": ids, "attention_mask": mask}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model, tokenizer = load_model_and_tokenizer()  # default model, fp32, CPU
    model.eval()
    tokenizer.padding_side = "left"  # every batch below is left-padded
    pad_id = tokenizer.pad_token_id

    prompts = load_prompts(tokenizer, args.batch)
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    vocab = model.get_input_embeddings().weight.shape[0]
    prefix_tokens = torch.randint(0, vocab, (args.prefix_len,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        prefix = model.get_input_embeddings()(prefix_tokens).detach().clone()

    batches = {
        1: tokenizer(prompts[:1], return_tensors="pt", padding=True),
        2: tokenizer([prompts[0]] * 2, return_tensors="pt", padding=True),  # the doubled-batch floor
        args.batch: tokenizer(prompts, return_tensors="pt", padding=True),
    }
    negatives = {
        b: left_pad([prefix_tokens.tolist() + ids for ids in (prompt_ids[:1] if b == 1 else prompt_ids)], pad_id)
        for b in (1, args.batch)
    }

    noisy_texts = [format_prompt([{"role": "user", "content": noisy_instruction("", "", "opposite")}], "chatml")
                   for _ in prompts]
    noisy_prompts = {b: tokenizer(noisy_texts[: 1 if b == 1 else b], return_tensors="pt", padding=True)
                     for b in (1, args.batch)}

    def common(new_tokens: int) -> dict:
        return dict(do_sample=False, min_new_tokens=new_tokens, max_new_tokens=new_tokens, pad_token_id=pad_id)

    def run_greedy(b, n):
        return model.generate(**batches[b], **common(n))

    def stream(b, n, processor):
        with processor:
            return model.generate(**batches[b], logits_processor=[processor], **common(n))

    def run_stream(b, n):
        return stream(b, n, CTDProcessor(model, prefix, strength=args.beta))

    def run_doubled(b, n):
        return ctd_hf.generate_doubled(model, CTDContrast(model, prefix, strength=args.beta), **batches[b], **common(n))

    def instructive(b):
        noisy = noisy_prompts[b]
        return InstructiveContrast(model, noisy["input_ids"], noisy["attention_mask"], strength=0.3)

    def run_id_stream(b, n):
        return stream(b, n, ContrastProcessor(instructive(b)))

    def run_id_doubled(b, n):
        return ctd_hf.generate_doubled(model, instructive(b), **batches[b], **common(n))

    def run_cd_stream(b, n):
        return stream(b, n, ContrastiveDecodingProcessor(model, model, plausibility=0.1, strength=1.0,
                                                         tokenizer=tokenizer))

    def run_peer(b, n):
        neg = negatives[b]
        return model.generate(
            **batches[b], guidance_scale=args.guidance_scale, negative_prompt_ids=neg["input_ids"],
            negative_prompt_attention_mask=neg["attention_mask"], **common(n),
        )

    runners = {"greedy": run_greedy, "stream": run_stream, "doubled": run_doubled, "peer": run_peer,
               "id-stream": run_id_stream, "id-doubled": run_id_doubled, "cd-stream": run_cd_stream}
    n, L, B = args.new_tokens, args.long_tokens, args.batch
    baselines = ("id-stream", "id-doubled", "cd-stream")
    cases = [("greedy", 1, n), ("stream", 1, n), ("doubled", 1, n), ("peer", 1, n), ("greedy", 2, n)]
    cases += [(method, 1, n) for method in baselines]
    if not args.only_b1:
        cases += [("greedy", B, n), ("stream", B, n), ("doubled", B, n), ("peer", B, n)]
        cases += [(method, B, n) for method in baselines]
    if not args.quick and not args.only_b1:
        cases += [("greedy", 1, L), ("stream", 1, L), ("doubled", 1, L)]

    load_before = os.getloadavg()
    times: dict[tuple, list[float]] = {case: [] for case in cases}
    errors: dict[tuple, str] = {}
    outputs: dict[tuple, torch.Tensor] = {}
    t_start = time.perf_counter()
    for rep in range(args.reps + 1):  # round 0 is the warm-up
        for case in cases:
            if case in errors:
                continue
            method, b, tokens = case
            run_tokens = args.warmup_tokens if rep == 0 else tokens
            try:
                t0 = time.perf_counter()
                with torch.inference_mode():
                    out = runners[method](b, run_tokens)
                elapsed = time.perf_counter() - t0
            except Exception as error:  # noqa: BLE001 - a refused peer is a result, not a crash
                errors[case] = f"{type(error).__name__}: {error}"
                print(f"[{method} b={b} n={tokens}] refused: {errors[case]}", file=sys.stderr)
                continue
            generated = out.shape[1] - batches[b]["input_ids"].shape[1]
            if generated != run_tokens:
                raise RuntimeError(f"{case} generated {generated} tokens, not {run_tokens}")
            if rep == 1:
                outputs[case] = out
            if rep > 0:
                times[case].append(elapsed)
            print(f"rep {rep}{' (warm-up)' if rep == 0 else ''}: {method:8s} b={b} n={run_tokens}: {elapsed:.2f} s",
                  file=sys.stderr, flush=True)
    total = time.perf_counter() - t_start
    load_after = os.getloadavg()

    med = {case: statistics.median(ts) for case, ts in times.items() if ts}

    def ratio(case, base):
        return med[case] / med[base] if case in med and base in med else None

    def paired(case, base):
        """Median over repetitions of the ratio within one repetition (the two runs are minutes apart at most)."""
        if case not in med or base not in med:
            return None
        return statistics.median(a / b for a, b in zip(times[case], times[base]))

    rows = []
    for case in cases:
        method, b, tokens = case
        base = ("greedy", 1, tokens) if method == "greedy" and b == 2 else ("greedy", b, tokens)
        rows.append({
            "method": method, "batch": b, "new_tokens": tokens,
            "median_s": med.get(case), "all_s": times[case],
            "ms_per_step": med[case] / tokens * 1e3 if case in med else None,
            "vs_greedy": ratio(case, base), "error": errors.get(case),
        })
    pairs = [  # (name, case, base)
        ("doubled_over_greedy_b1", ("doubled", 1, n), ("greedy", 1, n)),
        ("stream_over_greedy_b1", ("stream", 1, n), ("greedy", 1, n)),
        ("peer_over_greedy_b1", ("peer", 1, n), ("greedy", 1, n)),
        ("stream_over_peer_b1", ("stream", 1, n), ("peer", 1, n)),
        (f"doubled_over_greedy_b{B}", ("doubled", B, n), ("greedy", B, n)),
        (f"stream_over_greedy_b{B}", ("stream", B, n), ("greedy", B, n)),
        (f"peer_over_greedy_b{B}", ("peer", B, n), ("greedy", B, n)),
        (f"stream_over_peer_b{B}", ("stream", B, n), ("peer", B, n)),
        ("greedy_b2_over_b1", ("greedy", 2, n), ("greedy", 1, n)),
        (f"greedy_{L}_over_{n}", ("greedy", 1, L), ("greedy", 1, n)),
        (f"stream_{L}_over_{n}", ("stream", 1, L), ("stream", 1, n)),
        (f"doubled_{L}_over_{n}", ("doubled", 1, L), ("doubled", 1, n)),
    ]
    derived = {name: (ratio(case, base), paired(case, base)) for name, case, base in pairs}
    same = {}
    for b in sorted({1, B} if not args.only_b1 else {1}):
        if ("stream", b, n) in outputs and ("doubled", b, n) in outputs:
            equal = torch.equal(outputs[("stream", b, n)], outputs[("doubled", b, n)])
            same[f"stream_equals_doubled_b{b}"] = bool(equal)
    targets = {
        "doubled_b1 <= 1.65x greedy": _check(derived["doubled_over_greedy_b1"][0], TARGETS["doubled_b1"]),
        "stream <= peer (b1)": _check(derived["stream_over_peer_b1"][0], 1.0),
        f"stream <= peer (b{B})": _check(derived[f"stream_over_peer_b{B}"][0], 1.0),
        f"stream {L}/{n} <= 2.2": _check(derived[f"stream_{L}_over_{n}"][0], TARGETS["long_over_short"]),
        f"doubled {L}/{n} <= 2.2": _check(derived[f"doubled_{L}_over_{n}"][0], TARGETS["long_over_short"]),
    }

    print(f"\n## CTD decoding (CPU): {cpu_name()}, {args.threads} threads, fp32, greedy\n")
    print("| method | batch | new tokens | median s | ms/step | vs greedy (same batch, same length) | runs (s) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if row["error"]:
            print(f"| {row['method']} | {row['batch']} | {row['new_tokens']} | refused | | | {row['error'][:80]} |")
            continue
        label = row["method"] + (" (vs greedy b1)" if row["method"] == "greedy" and row["batch"] == 2 else "")
        vs = f"{row['vs_greedy']:.2f}x" if row["vs_greedy"] is not None else ""
        runs = ", ".join(f"{t:.2f}" for t in row["all_s"])
        print(f"| {label} | {row['batch']} | {row['new_tokens']} | {row['median_s']:.2f} | {row['ms_per_step']:.1f} "
              f"| {vs} | {runs} |")
    print("\n| derived ratio | ratio of medians | median of per-repetition ratios |\n|---|---|---|")
    for key, (value, pair) in derived.items():
        if value is not None:
            print(f"| {key} | {value:.2f} | {pair:.2f} |")
    print("\n| target (on the ratio of medians) | measured | met |\n|---|---|---|")
    for key, (value, met) in targets.items():
        print(f"| {key} | {'' if value is None else f'{value:.2f}'} | {met} |")
    print(f"\nsanity: {same}; total timed loop {total:.0f} s; load average before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f} (1 min)")

    record = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "ctd_hf": ctd_hf.__version__},
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "threads": torch.get_num_threads(), "dtype": "float32",
        "attn_implementation": model.config._attn_implementation, "model": ctd_hf.DEFAULT_MODEL,
        "reps": args.reps, "warmup_tokens": args.warmup_tokens, "new_tokens": n, "long_tokens": L, "batch": B,
        "prefix_len": args.prefix_len, "beta": args.beta, "guidance_scale": args.guidance_scale, "rows": rows,
        "derived": {k: {"ratio_of_medians": v, "median_paired_ratio": p} for k, (v, p) in derived.items()},
        "targets": {k: {"value": v, "met": m} for k, (v, m) in targets.items()},
        "sanity": same, "total_s": total, "loadavg_before": load_before, "loadavg_after": load_after,
    }
    line = json.dumps(record)
    print("BENCH_JSON " + line)
    if args.json_out:
        args.json_out.write_text(line + "\n")


def _check(value: float | None, limit: float) -> tuple[float | None, str]:
    if value is None:
        return None, "not measured"
    return value, "yes" if value <= limit else "NO"


if __name__ == "__main__":
    main()
