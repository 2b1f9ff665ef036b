"""ctd_hf: contrastive tuning and decoding for Hugging Face causal language models.

The public names below are imported on first use (PEP 562 ``__getattr__``, as transformers' ``_LazyModule`` does), so
``import ctd_hf`` stays fast and loads torch, transformers, peft, datasets and evaluate only when a name that needs
them is touched. The package map is ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from ._version import __version__

# Public name -> module (relative to this package) that defines it.
_EXPORTS = {
    # the one formula
    "contrast_logits": "formula",
    "contrastive_loss": "formula",
    # models and prompts
    "DEFAULT_MODEL": "models",
    "default_model_dir": "models",
    "load_model_and_tokenizer": "models",
    "PROMPT_FORMATS": "prompts",
    "format_prompt": "prompts",
    "format_completion": "prompts",
    "resource_path": "resources",
    # decoding: what is contrasted, and the two executors
    "Contrast": "decoding.contrasts",
    "CTDContrast": "decoding.contrasts",
    "InstructiveContrast": "decoding.contrasts",
    "LoRAContrast": "decoding.contrasts",
    "ContrastiveDecodingContrast": "decoding.contrasts",
    "ContrastProcessor": "decoding.stream",
    "CTDProcessor": "decoding.processors",
    "InstructiveDecodingProcessor": "decoding.processors",
    "ContrastiveDecodingProcessor": "decoding.processors",
    "DoubledCache": "decoding.doubled",
    "generate_doubled": "decoding.doubled",
    "OriginalPredictions": "decoding.recording",
    "NOISE_TYPES": "decoding.noise",
    "noisy_instruction": "decoding.noise",
    # decoding methods as declared specs (the registry), and the engines that run their contrasts
    "DEFAULT_STRENGTH": "formula",
    "METHODS": "decoding.methods",
    "DecodingMethod": "decoding.methods",
    "BoundMethod": "decoding.methods",
    "register_method": "decoding.methods",
    "ODMethod": "decoding.methods",
    "IDMethod": "decoding.methods",
    "CDMethod": "decoding.methods",
    "CTDMethod": "decoding.methods",
    "CTDLoRAMethod": "decoding.methods",
    "Engine": "decoding.engine",
    "TransformersEngine": "decoding.engine",
    "generate_answers": "decoding.answers",
    "GenerationSettings": "decoding.answers",
    "custom_generate": "integrations.custom_generate",
    # the saved adapter format, which training writes and decoding reads
    "AdapterMismatchError": "adapter",
    "check_adapter": "adapter",
    "load_adapter": "adapter",
    # training
    "add_soft_prefix": "training.prefix",
    "RightPaddingCollator": "training.data",
    "load_sft_data": "training.data",
    "tokenize_sft": "training.data",
    "CTDConfig": "training.config",
    "CTDTrainer": "training.trainer",
    "TuneSettings": "training.tuning",
    "tune": "training.tuning",
    # evaluation and synthesis
    "EvalSettings": "evaluation.runner",
    "run_evaluation": "evaluation.runner",
    "Task": "evaluation.tasks",
    "get_task": "evaluation.tasks",
    "register_task": "evaluation.tasks",
    "load_metric": "evaluation.scoring",
    "SynthSettings": "synthesis",
    "synthesize": "synthesis",
}

# Old name -> (new public name, what to write instead). Kept for one release.
_DEPRECATED = {
    "generate": ("generate_doubled", "ctd_hf.generate_doubled(model, contrast_or_processor, **generate_kwargs)"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        new, usage = _DEPRECATED[name]
        warnings.warn(f"ctd_hf.{name} is deprecated and will be removed in the next release; use {usage}.",
                      DeprecationWarning, stacklevel=2)
        return __getattr__(new)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ctd_hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
