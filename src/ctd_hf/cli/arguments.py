"""Argument groups shared by the subcommands, and what they build: the model, the decoding method, generate()
options. One place, so a flag means the same in every subcommand."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from ..decoding.methods import BACKENDS, METHODS
from ..decoding.noise import NOISE_TYPES
from ..models import load_model_and_tokenizer, resolve_model_path
from ..prompts import PROMPT_FORMATS

DTYPES = ("float32", "bfloat16", "float16")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def strength(text: str) -> float:
    """argparse type: a contrast strength, a finite number >= 0."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def unit_interval(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def output_folder(text: str) -> str:
    """argparse type: a folder that may exist (a resume) but is not a file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return text


def comma_list(text: str) -> list[str]:
    """argparse type: a non-empty comma-separated list."""
    values = [value.strip() for value in text.split(",") if value.strip()]
    if not values:
        raise argparse.ArgumentTypeError("must name at least one item")
    return values


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
    group.add_argument("--beta", type=strength, default=None, help="ctd: contrast strength beta (default 0.3).")
    group.add_argument("--id-strength", type=strength, default=None, help="id: contrast strength (default 0.3).")
    group.add_argument("--noise", default="opposite", choices=NOISE_TYPES, help="id: the noisy instruction.")
    group.add_argument("--noise-rate", type=unit_interval, default=0.6, help="id: share of words trunc_shuf keeps.")
    group.add_argument("--amateur", default=None, help="cd: the amateur model (folder, hub name or 'default').")
    group.add_argument("--cd-beta", type=strength, default=None, help="cd: weight of the amateur (default 1.0).")
    group.add_argument("--plausibility", type=unit_interval, default=0.1, help="cd: alpha of the plausible set.")
    group.add_argument("--amateur-temperature", type=positive_float, default=1.0,
                       help="cd: temperature of the amateur.")
    group.add_argument("--backend", "--path", dest="backend", default="auto", choices=BACKENDS,
                       help="doubled: one 2B-row forward per step (ctd, id); stream: a processor with its own cache; "
                            "auto: doubled where possible. (--path is the deprecated name.)")


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """generate() options, batch size and seed."""
    group = parser.add_argument_group("generation")
    group.add_argument("--max-new-tokens", type=positive_int, default=128)
    group.add_argument("--do-sample", action="store_true")
    group.add_argument("--temperature", type=positive_float, default=1.0)
    group.add_argument("--top-k", type=positive_int, default=50)
    group.add_argument("--top-p", type=unit_interval, default=1.0)
    group.add_argument("--num-beams", type=positive_int, default=1)
    group.add_argument("--batch-size", type=positive_int, default=8)
    group.add_argument("--seed", type=int, default=0)


def method_kwargs(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """``DecodingMethod`` keyword arguments for method ``name`` from the method arguments (not the amateur)."""
    value = {"od": None, "ctd": args.beta, "id": args.id_strength, "cd": args.cd_beta}[name]
    return dict(strength=value, prefix=args.prefix, noise=args.noise, noise_rate=args.noise_rate,
                plausibility=args.plausibility, amateur_temperature=args.amateur_temperature, backend=args.backend)


def check_method_arguments(args: argparse.Namespace, names: list[str]) -> None:
    """Refuse method flags that do not fit the chosen methods, before any model is loaded."""
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}.")
    if "ctd" in names and not args.prefix:
        raise ValueError("Method ctd needs --prefix (a folder written by `ctd-hf tune`).")
    if "cd" in names and not args.amateur:
        raise ValueError("Method cd needs --amateur (a smaller model with the same tokenizer).")
    for flag, value, method in (("--beta", args.beta, "ctd"), ("--id-strength", args.id_strength, "id"),
                                ("--cd-beta", args.cd_beta, "cd")):
        if value is not None and method not in names:
            raise ValueError(f"{flag} sets the strength of method {method}, which is not run here (methods: "
                             f"{', '.join(names)}).")


def load_amateur(args: argparse.Namespace, expert_name: str, expert: PreTrainedModel, device: Any = None) -> Any:
    """cd's amateur model from ``--amateur``: the expert itself when both name the same model (one copy in memory)."""
    try:
        if resolve_model_path(args.amateur) == resolve_model_path(expert_name):
            return expert
        return load_model_and_tokenizer(args.amateur, dtype=args.dtype, device=device)[0]
    except OSError as error:
        raise type(error)(f"--amateur {args.amateur}: {error}") from None


def decoding_options(args: argparse.Namespace) -> dict[str, Any]:
    """generate() keyword arguments from the decoding arguments."""
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, num_beams=args.num_beams)
    if args.do_sample:
        options.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    return options
