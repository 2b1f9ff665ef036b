"""Where data comes from: one reader for every job that takes a data source (SFT data, benchmark tasks).

A source is a JSON/JSONL file (gzip allowed; read here, with errors naming the file and line), a Python list of
records, a folder written by ``datasets``' ``save_to_disk``, a ``datasets.Dataset``/``DatasetDict``, or a dataset name
on the Hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import datasets

from .models import looks_like_path
from .records import load_json_records


def read_source(
    source: str | Path | list | datasets.Dataset | datasets.DatasetDict,
    split: str,
    check: Callable[[Any], None] | None = None,
) -> list[Any] | datasets.Dataset:
    """The records of ``source``: a list from a file or a Python list (each record passed to ``check``, which may
    raise ``ValueError``), else a ``datasets.Dataset`` (``split`` picks the split of a folder, a ``DatasetDict`` or a
    Hub dataset; checking its rows is the caller's, which knows what they should hold)."""
    if isinstance(source, list):
        for number, record in enumerate(source, start=1):
            try:
                (check or (lambda _: None))(record)
            except ValueError as error:
                raise ValueError(f"Record {number} of the list: {error}") from None
        return source
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise ValueError(f"The data has splits {sorted(source)}, not {split!r}: choose one with `split`.")
        return source[split]
    if isinstance(source, datasets.Dataset):
        return source
    path = Path(source).expanduser()
    if path.is_file():
        # Read here rather than by datasets' json builder, whose errors do not say which line is wrong.
        return load_json_records(path, check)
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return read_source(datasets.load_from_disk(str(path)), split)
    if path.exists() or looks_like_path(str(source)):
        raise FileNotFoundError(f"{path} is neither a JSON/JSONL file nor a folder written by `save_to_disk`."
                                if path.exists() else f"{path} does not exist.")
    try:
        return datasets.load_dataset(str(source), split=split)
    except Exception as error:  # the Hub's errors vary; say what was tried
        raise ValueError(f"{source!r} is not a local file or folder, and loading it as a dataset name (split "
                         f"{split!r}) failed ({type(error).__name__}: {error}).") from None
