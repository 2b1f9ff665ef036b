"""``ctd-hf serve``: an OpenAI-compatible server that answers each request with the method its body names (od, id,
ctd, cd...), on vLLM (``ctd_hf[vllm]``)."""

from __future__ import annotations

import argparse
import dataclasses

from ..integrations.vllm.settings import ServeSettings
from .arguments import EngineArguments, ModelArguments
from .flags import add_flags, values


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="An OpenAI-compatible server (/v1/completions, /v1/chat/completions, streaming) on vLLM; each "
                      "request names its method and settings (e.g. \"method\": \"ctd\", \"prefix\": DIR).")
    flags: dict[str, str] = {}
    add_flags(parser, ModelArguments, flags)
    add_flags(parser, ServeSettings, flags)
    add_flags(parser.add_argument_group("engine"), EngineArguments, flags,
              names=[field.name for field in dataclasses.fields(EngineArguments) if field.name.startswith("vllm_")])
    parser.set_defaults(func=run, flags=flags)


def run(args: argparse.Namespace) -> None:
    """Serve until interrupted."""
    from ..integrations.vllm.server import serve  # imports vLLM: only when asked for

    engine = EngineArguments(engine="vllm", **values(args, EngineArguments))
    serve(args.model, args.dtype, ServeSettings(**values(args, ServeSettings)), **engine.vllm_options())
