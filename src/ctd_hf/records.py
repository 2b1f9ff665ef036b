"""Files that survive being killed, for resumable jobs (evaluation, synthesis, sweeps).

Append-only JSONL: each batch is flushed and fsynced, and a reader drops (and truncates away) a torn last line, so a
restarted job redoes at most the batch it was writing. Jobs sharded over processes write one file per process.
Whole files (settings, reports) are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


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


def write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
