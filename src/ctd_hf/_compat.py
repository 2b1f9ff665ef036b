"""The one place that knows names and internals of transformers and peft that differ between the supported versions
or are not public API. Everything else in ctd_hf finds objects by type and calls public API.

``tests/test_compat.py`` checks each assumption below on the installed versions and names them when one moves.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from transformers import Cache, GenerationConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

# transformers 5.24 renamed the KV-cache argument of generate() and of the models' forward from `past_key_values` to
# `cache` (the old name still works there, with a FutureWarning). The output classes' field follows the argument.
CACHE_ARGUMENT = "cache" if "cache" in {field.name for field in dataclasses.fields(CausalLMOutputWithPast)} \
    else "past_key_values"
CACHE_ARGUMENTS = ("cache", "past_key_values")  # every name a caller may pass a cache under, in any supported version


def find_cache(args: tuple, kwargs: dict[str, Any]) -> Cache | None:
    """The KV cache among a forward's or decoding loop's arguments, found by type rather than by keyword."""
    return next((value for value in (*kwargs.values(), *args) if isinstance(value, Cache)), None)


def cache_keyword(kwargs: dict[str, Any]) -> str:
    """The keyword under which ``kwargs`` holds a cache, or :data:`CACHE_ARGUMENT` when it holds none."""
    return next((name for name, value in kwargs.items() if isinstance(value, Cache)), CACHE_ARGUMENT)


def decoding_loop(model: PreTrainedModel, generation_config: GenerationConfig) -> Callable[..., Any] | None:
    """The decoding loop ``generate()`` would run for ``generation_config``, bound to ``model``, when it is greedy
    decoding, sampling or beam search (else None).

    transformers has no public API for this: ``generate()`` looks the loop up by name in
    ``transformers.generation.utils.GENERATION_MODES_MAPPING`` (``_sample`` for greedy and sampling,
    ``_beam_search`` for beam search), and a ``custom_generate`` callable that only adds to the loop must run it.
    """
    from transformers.generation.utils import GENERATION_MODES_MAPPING

    name = GENERATION_MODES_MAPPING.get(generation_config.get_generation_mode())
    if name not in ("_sample", "_beam_search"):
        return None
    return getattr(model, name)


def calling_generate_streamer() -> Any | None:
    """The ``streamer`` given to the ``generate()`` call that called the caller (a callable ``custom_generate``), or
    None (none given, or not called by ``generate()``).

    transformers (5.12 to 5.25) puts the prompt into ``generate()``'s streamer, then calls a callable
    ``custom_generate`` with only its own keywords, so the streamer gets nothing more; there is no public way to hand
    it over. This reads ``generate()``'s own local variable, from the frame that called the caller.
    """
    from transformers.generation.utils import GenerationMixin

    frame = sys._getframe(2)
    if frame.f_code is not inspect.unwrap(GenerationMixin.generate).__code__:
        return None
    return frame.f_locals.get("streamer")


def adapter_layers_active(peft_model: Any) -> bool:
    """Whether a peft model's adapter layers are switched on (peft has no public query for it: each of its
    ``BaseTunerLayer`` modules keeps a ``disable_adapters`` flag, which ``enable_adapter_layers`` and
    ``disable_adapter_layers`` set)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(not module.disable_adapters for module in peft_model.modules() if isinstance(module, BaseTunerLayer))


def switch_adapter_layers(peft_model: Any, enabled: bool) -> None:
    """Switch a peft model's adapter layers on or off until switched again (the tuner's methods that peft's
    ``disable_adapter()`` context manager calls)."""
    tuner = peft_model.base_model
    tuner.enable_adapter_layers() if enabled else tuner.disable_adapter_layers()


@contextmanager
def adapter_layers_enabled(peft_model: Any) -> Iterator[None]:
    """Switch a peft model's adapter layers on inside a block that runs with them off (``disable_adapter()``).

    peft offers ``disable_adapter()`` as a context manager but no public way to switch the layers back on inside it;
    the tuner's ``enable_adapter_layers`` / ``disable_adapter_layers`` are what that context manager calls.
    """
    switch_adapter_layers(peft_model, True)
    try:
        yield
    finally:
        switch_adapter_layers(peft_model, False)
