"""``ctd-hf synth``: CoDIT, answer instructions by contrastive decoding between an instruct model and its base model,
writing an instruction-tuning dataset (resumable; shards under ``accelerate launch``)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..decoding.answers import GenerationSettings
from ..decoding.methods import method_class
from ..distributed import process_state
from ..records import restart_setting
from ..settings import output_folder, setting
from ..synthesis import SynthSettings, load_instructions, synthesize
from .arguments import (EngineArguments, ModelArguments, add_method_flags, check_method_arguments, given_method_flag,
                        method_from_flags)
from .flags import add_flags, values

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class SynthCommand:
    instructions: str = setting(help="JSON/JSONL file (gzip allowed) of records with `instruction`, optional "
                                     "`input`/`id`.")
    output_dir: str = setting(check=output_folder, help="Shards, data.jsonl, dataset/ and synthesis_config.json.")
    method: str | None = setting(None, check=lambda name: method_class(name).name, help=(
        "A registered method (default: cd, CoDIT's, with --amateur the expert's pre-trained base model; ctd with "
        "--prefix)."))
    restart: bool = restart_setting()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth", help="CoDIT: answer instructions with contrastive decoding (an instruct model vs its base model), "
                      "writing an instruction-tuning dataset (resumable; shards under `accelerate launch`).")
    flags: dict[str, str] = {}
    add_flags(parser, ModelArguments, flags, rename={"model": "--expert"})
    add_flags(parser, SynthCommand, flags)
    add_flags(parser, SynthSettings, flags)
    add_method_flags(parser, flags)
    add_flags(parser.add_argument_group("generation"), GenerationSettings, flags)
    add_flags(parser.add_argument_group("engine"), EngineArguments, flags)
    parser.set_defaults(func=run, flags=flags)


def run(args: argparse.Namespace) -> datasets.Dataset | None:
    """Run ``ctd-hf synth`` from parsed arguments (method cd unless --method, or --prefix for ctd, says otherwise)."""
    generation = GenerationSettings(**values(args, GenerationSettings))
    settings = SynthSettings(generation=generation, **values(args, SynthSettings))
    engine_arguments = EngineArguments(**values(args, EngineArguments))
    name = args.method or ("ctd" if given_method_flag(args, "--prefix") else "cd")
    check_method_arguments(args, [name])
    method = method_from_flags(args, name)
    load_instructions(args.instructions, settings.limit)  # a bad file is refused before the model loads
    expert, tokenizer = engine_arguments.load(args.model, args.dtype, process_state().device)
    engine = engine_arguments.build(expert, settings.seed)
    dataset = synthesize(expert, tokenizer, args.instructions, args.output_dir, method, settings, engine=engine,
                         restart=args.restart)
    if dataset is not None:
        logger.info("Wrote %d examples to %s and %s", len(dataset), Path(args.output_dir, "data.jsonl"),
                    Path(args.output_dir, "dataset"))
    return dataset
