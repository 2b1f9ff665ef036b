"""ctd_hf: contrastive tuning and decoding for Hugging Face causal language models."""

__version__ = "0.1.0"

from .contrast import contrast_logits, contrastive_loss  # noqa: E402
from .doubled import DoubledCache, generate  # noqa: E402
from .data import RightPaddingCollator, load_sft_data, tokenize_sft  # noqa: E402
from .models import DEFAULT_MODEL, default_model_dir, load_model_and_tokenizer  # noqa: E402
from .prefix import AdapterMismatchError, add_soft_prefix, check_adapter, load_adapter  # noqa: E402
from .evaluation import EvalSettings, run_evaluation  # noqa: E402
from .methods import METHODS, DecodingMethod  # noqa: E402
from .noise import NOISE_TYPES, noisy_instruction  # noqa: E402
from .processors import CTDProcessor, ContrastiveDecodingProcessor, InstructiveDecodingProcessor  # noqa: E402
from .prompts import PROMPT_FORMATS, format_completion, format_prompt  # noqa: E402
from .synth import synthesize  # noqa: E402
from .trainer import CTDConfig, CTDTrainer  # noqa: E402

__all__ = [
    "DEFAULT_MODEL",
    "PROMPT_FORMATS",
    "AdapterMismatchError",
    "CTDConfig",
    "CTDProcessor",
    "ContrastiveDecodingProcessor",
    "CTDTrainer",
    "DecodingMethod",
    "DoubledCache",
    "EvalSettings",
    "InstructiveDecodingProcessor",
    "METHODS",
    "NOISE_TYPES",
    "RightPaddingCollator",
    "add_soft_prefix",
    "check_adapter",
    "contrast_logits",
    "contrastive_loss",
    "default_model_dir",
    "format_completion",
    "format_prompt",
    "generate",
    "load_adapter",
    "load_model_and_tokenizer",
    "load_sft_data",
    "noisy_instruction",
    "run_evaluation",
    "synthesize",
    "tokenize_sft",
]
