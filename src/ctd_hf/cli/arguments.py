"""What several subcommands share: the model flags, the engine flags, and the decoding methods' flags (generated from
the registered methods' fields) with the methods they build. One place, so a flag means the same in every
subcommand."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..decoding.engine import Engine, TransformersEngine
from ..decoding.methods import METHODS, DecodingMethod, method_class
from ..distributed import process_state
from ..models import load_model_and_tokenizer, load_skeleton
from ..settings import SettingError, check_settings, positive_int, setting, unit_interval
from .flags import Flags, add_field_flag, has_flag, spelling

DTYPES = ("float32", "bfloat16", "float16")
ENGINES = ("hf", "vllm")


@dataclass(kw_only=True)
class ModelArguments:
    """The model a subcommand loads."""

    model: str = setting("default", help="Local folder or hub name; 'default' is the embedded SmolLM2-135M-Instruct.")
    dtype: str = setting("float32", choices=DTYPES, help="Weights' dtype.")


@dataclass(kw_only=True)
class EngineArguments:
    """Which engine decodes: transformers' ``generate()``, or one vLLM engine (``pip install "ctd_hf[vllm]"``). The
    vllm flags are passed to ``VLLMEngine``, which picks what is left out."""

    engine: str = setting("hf", choices=ENGINES, help=(
        "hf: transformers' generate(); vllm: one vLLM engine (ctd_hf[vllm]): od, id, ctd and cd, greedy or sampled, "
        "no beam search."))
    vllm_max_num_seqs: int | None = setting(None, check=positive_int, help=(
        "vllm: requests per step (a pair takes two; default: the engine's, 8)."))
    vllm_max_model_len: int | None = setting(None, check=positive_int, help=(
        "vllm: positions per request, prompt + CTD prefix + answer (default: the model's max_position_embeddings)."))
    vllm_memory: float | None = setting(None, check=unit_interval, help=(
        "vllm: gpu_memory_utilization, the share of GPU memory (on CPU: of host memory) vLLM reserves (default: "
        "the engine's: vLLM's on GPU, 0.3 on CPU)."))
    vllm_tensor_parallel_size: int = setting(1, check=positive_int, help=(
        "vllm: GPUs the model is split over (tensor parallelism)."))

    def __post_init__(self) -> None:
        check_settings(self)
        if self.engine == "hf":
            for field in dataclasses.fields(self):
                if field.name.startswith("vllm_") and getattr(self, field.name) != field.default:
                    raise SettingError(field.name, "applies to the vllm engine only: add --engine vllm or drop it.")

    def load(self, name: str, dtype: str, device: Any = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The model and tokenizer this engine decodes: loaded for hf; for vllm only what the jobs need beside the
        engine, which holds the weights (its config, tokenizer and input embeddings: one copy of the weights)."""
        if self.engine == "hf":
            return load_model_and_tokenizer(name, dtype=dtype, device=device)
        return load_skeleton(name, dtype=dtype)

    def build(self, model: PreTrainedModel, seed: int = 0) -> Engine:
        """The engine for ``model`` (its folder and dtype); ``seed`` is the job's (vLLM seeds its samples with it)."""
        if self.engine == "hf":
            return TransformersEngine()
        if process_state().num_processes > 1:
            raise ValueError("--engine vllm runs one engine in one process (vLLM parallelises on its own): run it "
                             "without accelerate launch, or shard with separate jobs.")
        from ..integrations.vllm import VLLMEngine  # imports vLLM: only when asked for

        return VLLMEngine(model, seed=seed, **self.vllm_options())

    def vllm_options(self) -> dict[str, Any]:
        """The vLLM engine's options these flags give (what VLLMEngine and ctd-hf serve take)."""
        return dict(max_model_len=self.vllm_max_model_len, max_num_seqs=self.vllm_max_num_seqs,
                    memory=self.vllm_memory, tensor_parallel_size=self.vllm_tensor_parallel_size)


METHOD_DEST = "method:"  # the method flags' destinations, apart from the other settings in the namespace


def _method_flags() -> dict[str, list[tuple[type[DecodingMethod], dataclasses.Field]]]:
    """Each method flag (``--beta``) and the registered methods' fields it sets (ctd's and ctd-lora's strength)."""
    owners: dict[str, list[tuple[type[DecodingMethod], dataclasses.Field]]] = {}
    for cls in METHODS.values():
        for field in dataclasses.fields(cls):
            if has_flag(field):
                owners.setdefault(spelling(field), []).append((cls, field))
    return owners


def _dest(flag: str) -> str:
    return METHOD_DEST + flag.lstrip("-").replace("-", "_")


def add_method_flags(parser: argparse.ArgumentParser, flags: Flags) -> None:
    """The registered methods' settings as flags, one flag per spelling: a flag several methods declare (``--prefix``,
    ``--backend``) sets each of them. Absent unless given, so a flag for a method that is not run is refused."""
    group = parser.add_argument_group("decoding methods")
    for flag, owners in _method_flags().items():
        cls, field = owners[0]
        helps: dict[str, list[str]] = {}  # one help text, and the methods it describes
        for owner, owner_field in owners:
            helps.setdefault(owner_field.metadata["help"], []).append(owner.name)
        text = "; ".join(f"{', '.join(names)}: {help_text.rstrip('.')}" for help_text, names in helps.items())
        add_field_flag(group, field, typing.get_type_hints(cls)[field.name], (flag, *field.metadata.get("aliases", ())),
                       _dest(flag), flags, absent=True, help_text=text)
        if len({owner_field.name for _, owner_field in owners}) == 1:
            flags.setdefault(field.name, flag)  # a method's error names the parameter; the CLI prints its flag


def check_method_arguments(args: argparse.Namespace, names: list[str]) -> None:
    """Refuse, before any model is loaded, an unknown method, a method without a setting it needs, and a method flag
    that no chosen method uses (it would decode as if it had not been given)."""
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}.")
    given = {flag for flag in _method_flags() if _dest(flag) in vars(args)}
    for flag, owners in _method_flags().items():
        users = [cls.name for cls, _ in owners]
        if flag in given and not set(users) & set(names):
            raise ValueError(f"{flag} is a setting of method {'/'.join(users)}, which is not run here (methods: "
                             f"{', '.join(names)}): choose that method (--method/--methods), or leave {flag} out.")
        for cls, field in owners:
            if cls.name in names and field.metadata.get("needed") and flag not in given:
                raise ValueError(f"Method {cls.name} needs {flag} ({field.metadata['needed']}).")


def given_method_flag(args: argparse.Namespace, flag: str) -> bool:
    """Whether the method flag ``flag`` (e.g. ``--prefix``) was given."""
    return _dest(flag) in vars(args)


def method_field(name: str, flag: str) -> str | None:
    """The field of method ``name`` that the method flag ``flag`` sets (``--prefix``: ctd's prefix, ctd-lora's
    adapter), or None."""
    return next((field.name for cls, field in _method_flags().get(flag, []) if cls.name == name), None)


def method_flag_value(args: argparse.Namespace, flag: str) -> Any:
    """The value given to the method flag ``flag`` (given: see :func:`given_method_flag`)."""
    return vars(args)[_dest(flag)]


def method_from_flags(args: argparse.Namespace, name: str, **overrides: Any) -> DecodingMethod:
    """Method ``name`` with its settings from the method flags; ``overrides`` replace some (``strength`` from
    ``--methods ctd@0.5``)."""
    cls, parsed = method_class(name), vars(args)
    chosen = {field.name: parsed[_dest(spelling(field))] for field in dataclasses.fields(cls)
              if has_flag(field) and _dest(spelling(field)) in parsed}
    unknown = set(overrides) - {field.name for field in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"Method {name} has no {', '.join(sorted(unknown))}.")
    return cls(**{**chosen, **overrides})
