"""``cd``: Contrastive Decoding (Li et al. 2022), an expert contrasted with an amateur model; CoDIT synthesises
instruction data with it (the instruct model as expert, its base model as amateur)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ...formula import DEFAULT_CD_STRENGTH, DEFAULT_PLAUSIBILITY
from ...models import is_skeleton, load_model_and_tokenizer, load_skeleton, resolve_model_path
from ...settings import SettingError, contrast_strength, sampling_temperature, setting, unit_interval
from ..contrasts import ContrastiveDecodingContrast
from .base import BoundMethod, ContrastMethod, register_method


def amateur_source(value: Any) -> Any:
    """Check of ``amateur``: a model, or its folder or hub name."""
    if not isinstance(value, (str, Path, PreTrainedModel)):
        raise TypeError(f"must be a model folder, a hub name or a PreTrainedModel, got {type(value).__name__}.")
    return value


@register_method
@dataclass(frozen=True, kw_only=True)
class CDMethod(ContrastMethod):
    """Contrastive Decoding: ``log p_expert - strength * log p_amateur`` on the plausible set
    ``p_expert >= plausibility * max p_expert`` (:class:`~ctd_hf.ContrastiveDecodingContrast`; the paper's beta and
    alpha). Two models cannot share one batch, so it runs on the stream executor."""

    name = "cd"
    help = "Contrastive Decoding (CoDIT)"
    executors = ("stream",)

    strength: float = setting(DEFAULT_CD_STRENGTH, check=contrast_strength, flag="--cd-beta",
                              help="weight of the amateur.")
    amateur: str | Path | PreTrainedModel | None = setting(
        None, check=amateur_source, flag_type=str, needed="a smaller model with the same tokenizer",
        help="the amateur model (folder, hub name or 'default'; the expert itself when both name one model).")
    plausibility: float = setting(DEFAULT_PLAUSIBILITY, check=unit_interval, help="alpha of the plausible set.")
    amateur_temperature: float = setting(1.0, check=sampling_temperature, help="temperature of the amateur.")

    def _setting(self, name: str, value: Any) -> dict[str, Any]:
        return {name: str(getattr(value, "name_or_path", value))} if name == "amateur" else {name: value}

    def bind(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, loaded: dict | None = None
    ) -> BoundMethod:
        if isinstance(self.amateur, PreTrainedModel):
            amateur, amateur_tokenizer = self.amateur, None
        else:
            try:
                path = resolve_model_path(str(self.amateur))
            except OSError as error:
                raise SettingError("amateur", str(error)) from None
            loaded = {} if loaded is None else loaded
            key = ("amateur", path, model.dtype, str(model.device))
            if key not in loaded:
                loaded[key] = _load_amateur(path, model, tokenizer)
            amateur, amateur_tokenizer = loaded[key]
        # Built once per model (its constructor compares the two vocabularies); it holds no per-batch state.
        contrast = ContrastiveDecodingContrast(model, amateur, self.plausibility, self.strength,
                                               self.amateur_temperature, tokenizer=tokenizer,
                                               amateur_tokenizer=amateur_tokenizer)
        return BoundMethod(self, model, tokenizer, contrast, models={"amateur": amateur})


def _load_amateur(
    path: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The amateur at ``path`` on the expert's device and dtype; the expert itself when both are one model (one copy
    in memory). Beside an expert whose weights are with another engine (vLLM's), only its skeleton: the engine's
    logits processor loads the amateur where it runs."""
    if path == str(model.name_or_path):
        return model, tokenizer
    try:
        if is_skeleton(model):
            return load_skeleton(path, dtype=model.dtype)
        amateur, amateur_tokenizer = load_model_and_tokenizer(path, dtype=model.dtype, device=model.device)
    except OSError as error:
        raise SettingError("amateur", str(error)) from None
    return amateur.eval(), amateur_tokenizer
