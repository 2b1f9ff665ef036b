"""What several subcommands share: the model flags, the decoding-method flags and the methods they build. One place,
so a flag means the same in every subcommand."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from ..decoding.methods import METHODS, DecodingMethod
from ..distributed import process_state
from ..settings import SettingError, check_settings, positive_int, setting, unit_interval
from .flags import Flags, add_flags, values

DTYPES = ("float32", "bfloat16", "float16")
ENGINES = ("hf", "vllm")
CPU_MEMORY = 0.3  # vLLM's gpu_memory_utilization on CPU, the share of host memory its KV cache reserves (measured)


@dataclass(kw_only=True)
class ModelArguments:
    """The model a subcommand loads."""

    model: str = setting("default", help="Local folder or hub name; 'default' is the embedded SmolLM2-135M-Instruct.")
    dtype: str = setting("float32", choices=DTYPES, help="Weights' dtype.")


def pair_slots(value: Any) -> int:
    """Check of ``vllm_max_num_seqs``: a positive even number (the two requests of a pair run in one step)."""
    if positive_int(value) % 2:
        raise ValueError(f"must be even (a pair's two requests run together), got {value}")
    return value


@dataclass(kw_only=True)
class EngineArguments:
    """Which engine decodes: transformers' ``generate()``, or one vLLM engine (``pip install "ctd_hf[vllm]"``)."""

    engine: str = setting("hf", choices=ENGINES, help=(
        "hf: transformers' generate(); vllm: one vLLM engine (ctd_hf[vllm]): od, id, ctd and cd, greedy or sampled, "
        "no beam search."))
    vllm_max_num_seqs: int = setting(8, check=pair_slots, help="vllm: requests per step (even: a pair's two rows).")
    vllm_max_model_len: int | None = setting(None, check=positive_int, help=(
        "vllm: positions per request, prompt + CTD prefix + answer (default: the model's max_position_embeddings)."))
    vllm_memory: float | None = setting(None, check=unit_interval, help=(
        f"vllm: gpu_memory_utilization, the share of GPU memory (on CPU: of host memory) vLLM reserves (default: "
        f"vLLM's on GPU, {CPU_MEMORY} on CPU)."))

    def __post_init__(self) -> None:
        check_settings(self)
        if self.engine == "hf":
            for field in dataclasses.fields(self):
                if field.name.startswith("vllm_") and getattr(self, field.name) != field.default:
                    raise SettingError(field.name, "applies to the vllm engine only: add --engine vllm or drop it.")

    def build(self, model: PreTrainedModel) -> Any:
        """The engine for ``model`` (its folder and dtype): ``None`` for hf, else a ``VLLMEngine`` (eager mode and
        :data:`CPU_MEMORY` on CPU, the set-up measured there)."""
        if self.engine == "hf":
            return None
        if process_state().num_processes > 1:
            raise ValueError("--engine vllm runs one engine in one process (vLLM parallelises on its own): run it "
                             "without accelerate launch, or shard with separate jobs.")
        from ..integrations.vllm import VLLMEngine  # imports vLLM: only when asked for

        on_cpu = not torch.cuda.is_available()
        memory = self.vllm_memory or (CPU_MEMORY if on_cpu else None)
        options = {"enforce_eager": True} if on_cpu else {}
        if memory is not None:
            options["gpu_memory_utilization"] = memory
        length = self.vllm_max_model_len or model.config.max_position_embeddings
        return VLLMEngine(model.name_or_path, max_model_len=length, max_num_seqs=self.vllm_max_num_seqs,
                          dtype=str(model.dtype).removeprefix("torch."), **options)


def add_method_flags(parser: argparse.ArgumentParser, flags: Flags) -> None:
    """The decoding methods' settings (``DecodingMethod``'s fields); each method's strength has its own flag."""
    add_flags(parser.add_argument_group("decoding methods"), DecodingMethod, flags)


def strength_flag(flags: Flags, name: str) -> str | None:
    """The flag setting method ``name``'s strength (none for od)."""
    return flags.get(f"strength:{name}")


def check_method_arguments(args: argparse.Namespace, names: list[str]) -> None:
    """Refuse method flags that do not fit the chosen methods, before any model is loaded."""
    flags = args.flags
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}.")
    if "ctd" in names and not args.prefix:
        raise ValueError(f"Method ctd needs {flags['prefix']} (a folder written by `ctd-hf tune`).")
    if "cd" in names and not args.amateur:
        raise ValueError(f"Method cd needs {flags['amateur']} (a smaller model with the same tokenizer).")
    for method in ("ctd", "id", "cd"):
        if getattr(args, f"strength:{method}") is not None and method not in names:
            raise ValueError(f"{strength_flag(flags, method)} sets the strength of method {method}, which is not run "
                             f"here (methods: {', '.join(names)}).")


def decoding_method(args: argparse.Namespace, name: str, strength: float | None = None) -> DecodingMethod:
    """Method ``name`` from the method flags (``strength`` replaces its strength flag)."""
    chosen = values(args, DecodingMethod)
    chosen["strength"] = getattr(args, f"strength:{name}", None) if strength is None else strength
    return DecodingMethod(name, **chosen)
