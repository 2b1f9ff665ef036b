"""JSON records on disk: files that survive being killed, for resumable jobs (evaluation, synthesis, sweeps), and
files written by people and other tools, read with errors that name the file and the line.

Append-only JSONL: each batch is flushed and fsynced, and a reader drops (and truncates away) a torn last line, so a
restarted job redoes at most the batch it was writing. Jobs sharded over processes write one file per process.
Whole files (settings, reports) are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from .settings import setting


def check_output_folder(path: str | Path) -> Path:
    """``path`` as a ``Path``, refused when it is a file: a run's output folder may exist (a resume), or not yet."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"The output folder {path} is a file: choose another output folder.")
    return path


def restart_setting() -> Any:
    """The ``restart`` field of a job's command (one declaration for every resumable job)."""
    return setting(False, help="Start over: delete what the output folder holds (a run of this command, as its "
                               "settings file shows) instead of resuming it or refusing other settings.")


def check_resumable(
    folder: Path,
    settings_file: str,
    current: dict,
    produced: bool = True,
    changes: Callable[[dict, dict], list[str]] | None = None,
    write: bool = True,
    merge: Callable[[dict, dict], dict] | None = None,
    restart: bool = False,
) -> None:
    """The resume guard every job shares: refuse to continue ``folder`` when it ``produced`` outputs under settings
    (recorded in ``settings_file``) other than ``current``, so one folder never mixes two runs; then record the
    settings (when ``write``: one process of a sharded job) before anything else is written.

    ``changes(previous, current)`` names what differs (default: each top-level key whose value differs).
    ``merge(previous, current)`` is what is recorded when the folder already holds outputs (default: ``current``): a
    job that may run a part of what the folder holds (fewer methods) keeps the settings of the rest, so that a later
    run of them is checked against what was written. ``restart`` deletes what the folder holds (its files and folders,
    once ``settings_file`` shows it is this job's folder) and starts over.
    """
    path = folder / settings_file
    if restart and path.is_file():
        if write:
            for entry in folder.iterdir():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        produced = False
    previous = json.loads(path.read_text()) if produced and path.is_file() else None
    changed = [] if previous is None else (changes or _changed_keys)(previous, current)
    if changed:
        raise ValueError(f"{folder} holds a run with another model or settings, and other settings "
                         f"({'; '.join(changed)}) cannot resume it: use a new output folder, or start over in this one "
                         "(--restart; in Python restart=True), which deletes what it holds.")
    if write:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(path, current if previous is None or merge is None else merge(previous, current))


def _changed_keys(previous: dict, current: dict) -> list[str]:
    return [f"{key}: {previous.get(key)!r} -> {value!r}" for key, value in current.items()
            if previous.get(key) != value]


def load_json_records(path: str | Path, check: Callable[[Any], None] | None = None) -> list[Any]:
    """The records of a JSON list or a JSON Lines file (``.jsonl`` in the name, or one document per line), gzip
    allowed, refusing a missing, empty or malformed file with its name and line.

    ``check(record)`` may raise ``ValueError`` for a bad record; the error is re-raised naming the file and the line
    (JSONL) or the record's position (a JSON list).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist." if not path.exists() else f"{path} is not a file.")
    raw = path.read_bytes()
    try:
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not UTF-8 JSON text ({error}).") from None
    if not text.strip():
        raise ValueError(f"{path} is empty.")
    located: list[tuple[str, Any]] = []
    document = None
    if ".jsonl" not in path.name:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            if error.msg != "Extra data":  # several documents: JSON Lines under another name
                raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg}).") from None
    if document is not None:
        if not isinstance(document, list):
            raise ValueError(f"{path} holds a JSON {type(document).__name__}; expected a list of records (or JSONL).")
        located = [(f"{path}, record {index + 1}", record) for index, record in enumerate(document)]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    located.append((f"{path}:{number}", json.loads(line)))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not valid JSON ({error.msg}).") from None
    if not located:
        raise ValueError(f"{path} holds no record.")
    for where, record in located:
        if check is not None:
            try:
                check(record)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
    return [record for _, record in located]


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


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as indented JSON, atomically."""
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")
