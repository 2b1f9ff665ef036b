"""Append-only JSONL files that survive being killed: each batch is flushed and fsynced, and a reader drops (and
truncates away) a torn last line, so a restarted job redoes at most the batch it was writing. Jobs sharded over
processes (``accelerate launch``, ``torchrun``) write one file per process."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


def read_records(path: str | Path, repair: bool = False) -> list[dict]:
    """The complete records of a JSONL file, ignoring a partial last line (a kill mid-write).

    ``repair=True`` also cuts that partial line from the file: only for a file this process is about to append to,
    never for another process's file, which may be mid-write.
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if repair and len(complete) != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(len(complete))
            os.fsync(handle.fileno())
    return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]


def append_records(path: str | Path, records: list[dict]) -> None:
    """Append records as JSON lines and make them durable before returning."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
        handle.flush()
        os.fsync(handle.fileno())
