"""``ctd-lora``: CTD's LoRA variant (the CTD paper's section 7.3), the model contrasted with itself with a
contrastively tuned LoRA adapter switched on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..._compat import adapter_layers_active, switch_adapter_layers
from ...adapter import AdapterMismatchError, load_adapter
from ...formula import DEFAULT_STRENGTH
from ...settings import contrast_strength, setting
from ..contrasts import LoRAContrast
from .base import BoundMethod, ContrastMethod, register_method


@register_method
@dataclass(frozen=True, kw_only=True)
class CTDLoRAMethod(ContrastMethod):
    """CTD's LoRA variant: ``z~`` is the model's logits with the LoRA adapter on, ``z`` with it off
    (:class:`~ctd_hf.LoRAContrast`). ``adapter`` is a folder written by ``ctd-hf tune --adapter lora`` (``--prefix``
    on the command line, the flag of the folder ``ctd-hf tune`` writes). One module in two adapter states cannot
    share a batch, so it runs on the stream executor."""

    name = "ctd-lora"
    help = "CTD with a LoRA correction adapter"
    executors = ("stream",)

    strength: float = setting(DEFAULT_STRENGTH, check=contrast_strength, flag="--beta",
                              help="contrast strength beta.")
    adapter: str | None = setting(None, flag="--prefix", needed="a folder written by `ctd-hf tune --adapter lora`",
                                  help="LoRA adapter folder written by `ctd-hf tune --adapter lora`.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not Path(self.adapter, "adapter_model.safetensors").is_file():
            raise FileNotFoundError(f"The adapter folder {self.adapter} holds no adapter_model.safetensors: point "
                                    "`adapter` at a folder written by `ctd-hf tune --adapter lora`.")

    def _setting(self, name: str, value: Any) -> dict[str, Any]:
        if name != "adapter":
            return {name: value}
        digest = hashlib.sha256(Path(value, "adapter_model.safetensors").read_bytes()).hexdigest()
        return {"adapter": str(value), "adapter_sha256": digest}

    def bind(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, loaded: dict | None = None
    ) -> BoundMethod:
        loaded = {} if loaded is None else loaded
        key = ("lora", str(Path(self.adapter).resolve()), id(model))
        if key not in loaded:
            loaded[key] = _load_lora(model, self.adapter)
        return BoundMethod(self, model, tokenizer, LoRAContrast(loaded[key], self.strength))


def _load_lora(model: PreTrainedModel, folder: str) -> PeftModel:
    """The adapter in ``folder`` injected into ``model`` (one set of weights), its layers off between the contrast's
    own forwards, so that the model decodes as itself for every other method."""
    if isinstance(model, PeftModel) or any(name.endswith("lora_A") for name, _ in model.named_modules()):
        raise ValueError("The model already carries a peft adapter; method ctd-lora loads its own into the plain "
                         "model: pass the model without adapters (one ctd-lora adapter per model).")
    peft_model = load_adapter(model, folder)
    if peft_model.active_peft_config.is_prompt_learning:
        raise AdapterMismatchError(f"{folder} holds a soft prefix, not a LoRA adapter: decode it with method ctd.")
    if adapter_layers_active(peft_model):
        switch_adapter_layers(peft_model, False)
    return peft_model
