"""``ctd-hf export-hub``: make a saved prefix a transformers ``custom_generate`` repository."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ..decoding.methods import CTDMethod
from ..integrations.hub import export_custom_generate
from ..settings import like, setting
from .flags import add_flags


@dataclass(kw_only=True)
class ExportCommand:
    prefix_dir: str = setting(positional=True, help="Prefix folder written by `ctd-hf tune` (published as it is).")
    strength: float = like(CTDMethod, "strength", help="Default contrast strength (beta) of the exported generate.")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export-hub", help="Write custom_generate/ and the model card into a prefix folder, for "
                           "model.generate(custom_generate=REPO_OR_DIR, trust_remote_code=True).")
    flags: dict[str, str] = {}
    add_flags(parser, ExportCommand, flags)
    parser.set_defaults(func=run, flags=flags)


def run(args: argparse.Namespace) -> Path:
    """Export the prefix folder; print and return the ``custom_generate`` folder."""
    folder = export_custom_generate(args.prefix_dir, strength=args.strength)
    print(f"Wrote {folder}/generate.py, requirements.txt and the card {folder.parent / 'README.md'}. Publish "
          f"{folder.parent} as a Hub repository (or use the folder as it is): "
          "model.generate(**inputs, custom_generate=REPO_OR_DIR, trust_remote_code=True).")
    return folder
