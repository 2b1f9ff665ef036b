"""This process's place in a data-parallel launch (``accelerate launch``, ``torchrun``), for jobs that share work."""

from __future__ import annotations

import os

import torch
from accelerate import PartialState


def process_state() -> PartialState:
    """This process's place in a data-parallel launch (a single process when not launched).

    Without an accelerator, accelerate joins a multi-process launch only when asked for CPU processes, and would
    otherwise take a ``torchrun`` job for independent single processes that all write the same shard.
    """
    accelerator = getattr(torch, "accelerator", None)
    has_accelerator = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    state = PartialState(cpu=not has_accelerator)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes != launched:
        raise RuntimeError(f"Launched as {launched} processes, but accelerate's PartialState sees "
                           f"{state.num_processes}: its ranks would write the same shard.")
    return state
