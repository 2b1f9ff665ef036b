"""CTD, Instructive Decoding, Contrastive Decoding and plain decoding on vLLM (``pip install "ctd_hf[vllm]"``).

- ``engine``: :class:`VLLMEngine`, one ``vllm.LLM`` that decodes any :class:`~ctd_hf.Contrast` (an
  :class:`~ctd_hf.decoding.engine.Engine` for evaluation, synthesis and ``ctd-hf generate --engine vllm``);
- ``processor``: the logits processor that computes each step's contrasted scores and forces the chosen token;
- ``requests``: what the engine writes into a request for the processor (the tag, the sampling settings);
- ``compat``: vLLM's import, and every vLLM name outside its documented API.

One :class:`VLLMEngine` per process; docs/serving.md is the how-to.
"""

from .engine import VLLMEngine
from .processor import PairedContrastProcessor
from .requests import TAG

__all__ = ["TAG", "PairedContrastProcessor", "VLLMEngine"]
