"""Running a sweep: rung by rung, baselines first, trials in this process or in a pool of worker processes."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from ...settings import SettingError
from .folder import Sweep
from .leaderboard import write_leaderboard
from .settings import SweepSettings

logger = logging.getLogger(__name__)


def run_sweep(
    settings: SweepSettings, output_dir: str | Path, time_budget: float | None = None, workers: int = 1
) -> dict:
    """Run (or resume) the sweep into ``output_dir`` and write the leaderboard; returns it.

    ``time_budget`` (minutes) stops starting trials once spent (a rerun continues); ``workers`` > 1 runs the trials
    of a rung in that many processes, each with an equal share of the CPU threads.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SettingError("workers", f"must be an integer >= 1, got {workers!r}.")
    sweep = Sweep(settings, output_dir)
    sweep.prepare()
    deadline = None if time_budget is None else time.time() + 60 * time_budget
    for name in {knobs["data"] for knobs in sweep.trials.values()}:
        sweep.data_path(name)
    alive = list(sweep.trials)
    for rung in range(len(settings.rungs)):
        sweep.run_baselines(rung)
        pending = [name for name in alive if sweep.result(name, rung) is None]
        # Longest tuning first, so that the last trials to finish are short ones.
        pending.sort(key=lambda name: -sweep.trials[name]["steps"])
        if workers == 1:
            for name in pending:
                _run_trial(sweep, name, rung, deadline)
        elif pending:
            _run_in_pool(sweep, pending, rung, deadline, workers)
        results = [sweep.result(name, rung) for name in alive]
        if any(result is None for result in results):
            break  # the budget ran out inside this rung: the next run finishes it
        results.sort(key=lambda result: -result["score"])
        alive = [result["trial"] for result in results[: max(1, math.ceil(len(results) * settings.keep))]]
    return write_leaderboard(sweep)


def _run_trial(sweep: Sweep, name: str, rung: int, deadline: float | None) -> None:
    """Run one trial at ``rung`` unless ``deadline`` (epoch seconds) has passed."""
    if deadline is not None and time.time() > deadline:
        logger.info("Time budget spent: %s not started at rung %d (rerun to go on).", name, rung)
        return
    logger.info("Trial %s, rung %d", name, rung)
    sweep.run_trial(name, rung)


def _run_in_pool(sweep: Sweep, names: list[str], rung: int, deadline: float | None, workers: int) -> None:
    """The trials ``names`` in ``workers`` spawned processes; an idle worker takes the next trial."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pool state
    with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(_run_trial, sweep, name, rung, deadline): name for name in names}
        failed = {futures[future]: future.exception() for future in as_completed(futures) if future.exception()}
    if failed:
        name, error = next(iter(failed.items()))
        raise RuntimeError(f"{len(failed)} sweep trial(s) failed, {name} with {type(error).__name__}: {error}. Rerun "
                           "the same command to resume (finished trials are kept).")
