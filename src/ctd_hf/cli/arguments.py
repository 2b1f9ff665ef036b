"""Argument groups shared by the subcommands, and what they build: the model, the decoding method, generate()
options. One place, so a flag means the same in every subcommand."""

from __future__ import annotations

import argparse
from typing import Any

from ..decoding.methods import BACKENDS
from ..decoding.noise import NOISE_TYPES
from ..prompts import PROMPT_FORMATS

DTYPES = ("float32", "bfloat16", "float16")


def add_model_arguments(parser: argparse.ArgumentParser, flag: str = "--model") -> None:
    """``--model`` (or another flag name), ``--dtype``."""
    parser.add_argument(flag, default="default", dest=flag.lstrip("-").replace("-", "_"),
                        help="Local folder or hub name; 'default' is the embedded SmolLM2-135M-Instruct.")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)


def add_prompt_format_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt-format", default="chatml", choices=PROMPT_FORMATS,
                        help="How prompts are rendered; chat_template is the tokenizer's own.")


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings of the four methods; each strength has its own flag."""
    group = parser.add_argument_group("decoding methods")
    group.add_argument("--prefix", default=None, help="ctd: prefix folder written by `ctd-hf tune`.")
    group.add_argument("--beta", type=float, default=None, help="ctd: contrast strength beta (default 0.3).")
    group.add_argument("--id-strength", type=float, default=None, help="id: contrast strength (default 0.3).")
    group.add_argument("--noise", default="opposite", choices=NOISE_TYPES, help="id: the noisy instruction.")
    group.add_argument("--noise-rate", type=float, default=0.6, help="id: share of words trunc_shuf keeps.")
    group.add_argument("--amateur", default=None, help="cd: the amateur model (folder, hub name or 'default').")
    group.add_argument("--cd-beta", type=float, default=None, help="cd: weight of the amateur (default 1.0).")
    group.add_argument("--plausibility", type=float, default=0.1, help="cd: alpha of the plausible set.")
    group.add_argument("--amateur-temperature", type=float, default=1.0, help="cd: temperature of the amateur.")
    group.add_argument("--backend", "--path", dest="backend", default="auto", choices=BACKENDS,
                       help="doubled: one 2B-row forward per step (ctd, id); stream: a processor with its own cache; "
                            "auto: doubled where possible. (--path is the deprecated name.)")


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """generate() options, batch size and seed."""
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=int, default=128)
    group.add_argument("--do-sample", action="store_true")
    group.add_argument("--temperature", type=float, default=1.0)
    group.add_argument("--top-k", type=int, default=50)
    group.add_argument("--top-p", type=float, default=1.0)
    group.add_argument("--num-beams", type=int, default=1)
    group.add_argument("--batch-size", type=int, default=8)
    group.add_argument("--seed", type=int, default=0)


def method_kwargs(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """``DecodingMethod`` keyword arguments for method ``name`` from the method arguments (not the amateur)."""
    strength = {"od": None, "ctd": args.beta, "id": args.id_strength, "cd": args.cd_beta}[name]
    return dict(strength=strength, prefix=args.prefix, noise=args.noise, noise_rate=args.noise_rate,
                plausibility=args.plausibility, amateur_temperature=args.amateur_temperature, backend=args.backend)


def decoding_options(args: argparse.Namespace) -> dict[str, Any]:
    """generate() keyword arguments from the decoding arguments."""
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, num_beams=args.num_beams)
    if args.do_sample:
        options.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    return options
