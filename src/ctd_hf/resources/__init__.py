"""Data shipped with the package (sources and licenses in this folder's README.md): the defaults, the demo, the
examples and the tests read only these files, so a clone or an installed wheel needs nothing beside it."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def resource_path(*parts: str) -> Path:
    """The path of a shipped file or folder, e.g. ``resource_path("sft", "alpaca_en_demo.json")``."""
    path = Path(str(files(__name__).joinpath(*parts)))
    if not path.exists():
        raise FileNotFoundError(f"{path} is not among ctd_hf's shipped resources (see {Path(__file__).parent}).")
    return path
