"""``ctd``: Contrastive Tuning and Decoding, the model contrasted with itself behind a tuned soft prefix."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ...formula import DEFAULT_STRENGTH
from ...settings import contrast_strength, setting
from ..contrasts import CTDContrast
from .base import BoundMethod, ContrastMethod, register_method


def prefix_source(value: Any) -> Any:
    """Check of ``prefix``: a folder or a tensor."""
    if not isinstance(value, (str, Path, torch.Tensor)):
        raise TypeError(f"must be a folder written by `ctd-hf tune` or a (num_virtual_tokens, hidden) tensor, got "
                        f"{type(value).__name__}.")
    return value


@register_method
@dataclass(frozen=True, kw_only=True)
class CTDMethod(ContrastMethod):
    """CTD: ``z~`` is the model's logits with the tuned prefix before the prompt (:class:`~ctd_hf.CTDContrast`).
    ``prefix`` is a folder written by ``ctd-hf tune`` or a ``(num_virtual_tokens, hidden)`` tensor; ``strength`` is the
    paper's beta (``--beta``)."""

    name = "ctd"
    help = "Contrastive Tuning and Decoding"

    strength: float = setting(DEFAULT_STRENGTH, check=contrast_strength, flag="--beta",
                              help="contrast strength beta.")
    prefix: str | Path | torch.Tensor | None = setting(None, check=prefix_source, flag_type=str,
                                                       needed="a folder written by `ctd-hf tune`",
                                                       help="prefix folder written by `ctd-hf tune`.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.prefix, torch.Tensor) and not Path(self.prefix, "adapter_model.safetensors").is_file():
            raise FileNotFoundError(f"The prefix folder {self.prefix} holds no adapter_model.safetensors: point "
                                    "`prefix` at a folder written by `ctd-hf tune`.")

    def _setting(self, name: str, value: Any) -> dict[str, Any]:
        return prefix_fingerprint(value) if name == "prefix" else {name: value}

    def bind(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, loaded: dict | None = None
    ) -> BoundMethod:
        # The prefix is read once, checked against the model; the contrast holds no per-batch state.
        return BoundMethod(self, model, tokenizer, CTDContrast(model, self.prefix, self.strength))


def prefix_fingerprint(prefix: str | Path | torch.Tensor) -> dict[str, str]:
    """``prefix`` (its folder, or a tensor's shape) and ``prefix_sha256`` (of the adapter weights file, or of the
    tensor's float32 bytes): a prefix counts by its weights, not by where it lies."""
    if isinstance(prefix, torch.Tensor):
        data = prefix.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        return {"prefix": f"tensor{tuple(prefix.shape)}", "prefix_sha256": hashlib.sha256(data).hexdigest()}
    weights = Path(prefix) / "adapter_model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None
    return {"prefix": str(prefix), "prefix_sha256": digest}
