"""``ctd-hf sweep``: search tuning settings and decoding strengths on training tasks, with a leaderboard."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ..study.sweep import SEARCHES, SweepSettings, SweepSpace, run_sweep, run_worker
from .arguments import add_prompt_format_argument, comma_list, output_folder, positive_float, positive_int, strength


def _values(kind: Callable[[str], object]) -> Callable[[str], tuple]:
    """argparse type: a comma-separated list of ``kind`` values, as a tuple."""

    def parse(text: str) -> tuple:
        return tuple(kind(value) for value in comma_list(text))

    return parse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser(
        "sweep", help="Search tuning settings and decoding strengths on SuperNI training tasks (resumable; successive "
                      "halving; leaderboard.md/json/png).")
    add = sweep.add_argument
    add("--output-dir", type=output_folder, required=True, help="The sweep folder (a rerun resumes it).")
    add("--model", default="default", help="Local folder or hub name; 'default' is the embedded SmolLM2-135M-Instruct.")
    space = sweep.add_argument_group("the search space (comma-separated values per knob)")
    defaults = SweepSpace()
    space.add_argument("--data", type=_values(str), default=defaults.data,
                       help="Tuning data: alpaca, superni, self, or JSON/JSONL paths.")
    space.add_argument("--lr", type=_values(float), default=defaults.learning_rate, dest="learning_rate")
    space.add_argument("--steps", type=_values(int), default=defaults.steps)
    space.add_argument("--alpha", type=_values(float), default=defaults.alpha)
    space.add_argument("--num-virtual-tokens", type=_values(int), default=defaults.num_virtual_tokens)
    space.add_argument("--init", type=_values(str), default=defaults.init)
    space.add_argument("--fraction", type=_values(float), default=defaults.fraction)
    space.add_argument("--betas", type=_values(strength), default=defaults.betas,
                       help="Decoding strengths, each evaluated on every prefix without retuning.")
    settings = SweepSettings()
    add("--search", choices=SEARCHES, default=settings.search)
    add("--samples", type=positive_int, default=None, help="Trials drawn by --search random.")
    add("--rungs", type=_values(int), default=settings.rungs,
        help="Successive halving: development instances per task at each rung.")
    add("--keep", type=positive_float, default=settings.keep, help="Share of trials promoted at each rung.")
    add("--dev-tasks", default=settings.dev_tasks, help="Development task list (SuperNI TRAIN tasks only).")
    add("--max-new-tokens", type=positive_int, default=settings.max_new_tokens)
    add("--max-source-tokens", type=positive_int, default=settings.max_source_tokens,
        help="Instruction + input tokens of a development prompt (the protocol's is 1024).")
    add("--id-strengths", type=_values(strength), default=settings.id_strengths,
        help="Instructive Decoding strengths measured as baselines.")
    add("--batch-size", type=positive_int, default=settings.batch_size, help="Tuning batch size.")
    add("--eval-batch-size", type=positive_int, default=settings.eval_batch_size)
    add("--max-length", type=positive_int, default=settings.max_length)
    add_prompt_format_argument(sweep)
    add("--seed", type=int, default=settings.seed)
    add("--time-budget", type=positive_float, default=None, help="Minutes; no trial starts after (rerun to go on).")
    add("--workers", type=positive_int, default=1, help="Processes running trials side by side.")
    add("--worker", default=None, help=argparse.SUPPRESS)  # "index/count": one worker process of a rung
    add("--rung", type=int, default=None, help=argparse.SUPPRESS)
    sweep.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict | None:
    """Run the sweep (or, with --worker, one worker's share of a rung)."""
    if args.worker is not None:
        index, count = (int(part) for part in args.worker.split("/"))
        run_worker(args.output_dir, index, count, args.rung)
        return None
    space = SweepSpace(data=args.data, learning_rate=args.learning_rate, steps=args.steps, alpha=args.alpha,
                       num_virtual_tokens=args.num_virtual_tokens, init=args.init, fraction=args.fraction,
                       betas=args.betas)
    settings = SweepSettings(space=space, search=args.search, samples=args.samples, seed=args.seed, model=args.model,
                             prompt_format=args.prompt_format, batch_size=args.batch_size, max_length=args.max_length,
                             dev_tasks=args.dev_tasks, rungs=args.rungs, keep=args.keep,
                             max_new_tokens=args.max_new_tokens, max_source_tokens=args.max_source_tokens,
                             id_strengths=args.id_strengths,
                             eval_batch_size=args.eval_batch_size)
    board = run_sweep(settings, args.output_dir, args.time_budget, args.workers)
    print(Path(args.output_dir, "leaderboard.md").read_text())
    return board
