"""The saved adapter format: what a prefix (or LoRA correction adapter) folder holds, checking that it fits a model,
loading it, and turning a prefix argument into a tensor.

A folder is peft's layout (``adapter_config.json`` + ``adapter_model.safetensors``, loadable with
``PeftModel.from_pretrained(base, dir)`` as well as with :func:`load_adapter`, which first checks that the adapter
fits the model) plus ``ctd_hf.json``, the card with what peft's config does not hold (vocabulary size, alpha).
Training writes this format and decoding reads it, so it sits below both, which import it as siblings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedModel

from ._version import __version__
from .models import model_id
from .records import write_json

CARD_NAME = "ctd_hf.json"


class AdapterMismatchError(ValueError):
    """An adapter (prefix or LoRA) does not fit the model it is being loaded onto, or its files are unreadable."""


def write_card(path: str | Path, model: PeftModel, **extra: Any) -> None:
    """Write ``ctd_hf.json`` beside a saved adapter: what the adapter was trained for, for :func:`load_adapter`."""
    base = model.get_base_model()
    card = {
        "base_model": model_id(base),
        "vocab_size": base.get_input_embeddings().weight.shape[0],
        "hidden_size": base.get_input_embeddings().weight.shape[1],
        "ctd_hf_version": __version__,
        **extra,
    }
    write_json(Path(path, CARD_NAME), card)


def read_card(path: str | Path) -> dict[str, Any]:
    """The ``ctd_hf.json`` beside an adapter, or an empty dict for an adapter saved by plain peft."""
    card = Path(path, CARD_NAME)
    if not card.is_file():
        return {}
    try:
        return json.loads(card.read_text())
    except json.JSONDecodeError as error:
        raise AdapterMismatchError(f"{card} is corrupt ({error}); restore it or delete it to skip its "
                                   "checks.") from None


def check_adapter(model: PreTrainedModel, path: str | Path) -> PeftConfig:
    """Check that the adapter saved in ``path`` can be loaded onto ``model``; return its peft config.

    Refuses, naming the problem and the fix: missing or corrupt files, another hidden size, another vocabulary size
    or another base model name than the adapter was trained for.
    """
    path = Path(path)
    config_file, weights_file = path / "adapter_config.json", path / "adapter_model.safetensors"
    for file in (config_file, weights_file):
        if not file.is_file():
            raise AdapterMismatchError(
                f"{file} does not exist. Point to a folder written by `ctd-hf tune` or `PeftModel.save_pretrained`."
            )
    try:
        config = PeftConfig.from_pretrained(str(path))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise AdapterMismatchError(f"{config_file} is corrupt ({error}). Re-run `ctd-hf tune` to rewrite it.") from None
    if config.peft_type is None:
        raise AdapterMismatchError(f"{config_file} names no adapter type (no `peft_type`): it is not a saved peft "
                                   "adapter's config. Re-run `ctd-hf tune` to rewrite it, or restore the file.")
    try:
        with safe_open(weights_file, framework="pt") as weights:
            shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterMismatchError(
            f"{weights_file} is corrupt ({error}). Re-run `ctd-hf tune` or restore the file from a checkpoint."
        ) from None

    embeddings = model.get_input_embeddings().weight
    vocab_size, hidden_size = embeddings.shape
    card = read_card(path)
    fix = "Load the adapter onto the model it was trained for, or train a new one for this model with `ctd-hf tune`."
    if config.is_prompt_learning:
        prompt = shapes.get("prompt_embeddings")
        if prompt is None or len(prompt) != 2:
            raise AdapterMismatchError(f"{weights_file} holds no `prompt_embeddings` matrix. {fix}")
        if prompt[1] != hidden_size or config.token_dim not in (None, hidden_size):
            raise AdapterMismatchError(
                f"The prefix in {path} has hidden size {prompt[1]}, the model {hidden_size}. {fix}"
            )
    if card.get("hidden_size", hidden_size) != hidden_size:
        raise AdapterMismatchError(
            f"The adapter in {path} was trained for hidden size {card['hidden_size']}, the model has "
            f"{hidden_size}. {fix}"
        )
    if card.get("vocab_size", vocab_size) != vocab_size:
        raise AdapterMismatchError(
            f"The adapter in {path} was trained for a vocabulary of {card['vocab_size']} tokens, the model has "
            f"{vocab_size}. {fix}"
        )
    trained_for = Path(str(config.base_model_name_or_path or "")).name
    if trained_for and model_id(model) and trained_for != model_id(model):
        raise AdapterMismatchError(
            f"The adapter in {path} was trained for base model {trained_for!r}, not {model_id(model)!r}. {fix}"
        )
    return config


def load_adapter(model: PreTrainedModel, path: str | Path, is_trainable: bool = False) -> PeftModel:
    """Load a prefix (or LoRA correction adapter) saved in ``path`` onto ``model`` after :func:`check_adapter`.

    The model's weights are shared, not copied; ``is_trainable=True`` continues training it.
    """
    check_adapter(model, path)
    return PeftModel.from_pretrained(model, str(path), is_trainable=is_trainable)


def prefix_embeddings(model: PeftModel) -> torch.Tensor:
    """The soft prefix of a prompt-tuning ``PeftModel`` as a ``(num_virtual_tokens, hidden)`` tensor."""
    if not model.active_peft_config.is_prompt_learning:
        raise ValueError("This PeftModel holds no soft prefix (it is not a prompt-tuning adapter).")
    return model.get_prompt_embedding_to_save(model.active_adapter)


def resolve_prefix(model: PreTrainedModel, prefix: str | Path | PeftModel | torch.Tensor) -> torch.Tensor:
    """The prefix as a ``(num_virtual_tokens, hidden)`` tensor on the device and dtype of the model's input embeddings.

    ``prefix`` is an adapter folder (checked with :func:`check_adapter`), a prompt-tuning ``PeftModel`` or a tensor.
    """
    if isinstance(prefix, PeftModel):
        embeddings = prefix_embeddings(prefix)
    elif isinstance(prefix, torch.Tensor):
        embeddings = prefix
    elif not isinstance(prefix, (str, Path)):
        raise TypeError(f"`prefix` is an adapter folder, a prompt-tuning PeftModel or a (num_virtual_tokens, hidden) "
                        f"tensor, got {type(prefix).__name__}.")
    else:
        config = check_adapter(model, prefix)
        if not config.is_prompt_learning:
            raise AdapterMismatchError(f"{prefix} holds a {config.peft_type} adapter, not a soft prefix.")
        with safe_open(Path(prefix, "adapter_model.safetensors"), framework="pt") as weights:
            embeddings = weights.get_tensor("prompt_embeddings")
    hidden_size = model.get_input_embeddings().weight.shape[1]
    if embeddings.ndim != 2 or embeddings.shape[1] != hidden_size:
        raise AdapterMismatchError(
            f"A prefix of shape {tuple(embeddings.shape)} does not fit a model of hidden size {hidden_size}; "
            "it needs shape (num_virtual_tokens, hidden_size). Use a prefix trained for this model."
        )
    if embeddings.shape[0] == 0:
        raise AdapterMismatchError("The prefix has no virtual tokens (shape (0, hidden)); use a tuned prefix.")
    if embeddings.is_meta:
        raise AdapterMismatchError("The prefix is on the meta device: it has a shape but no values (a model built "
                                   "with init_empty_weights or device_map='meta'?). Load the prefix's weights first.")
    table = model.get_input_embeddings().weight  # where the prompts' embeddings are: the prefix goes beside them
    embeddings = embeddings.detach().to(device=table.device, dtype=table.dtype)
    if not torch.isfinite(embeddings).all():
        raise AdapterMismatchError(
            f"The prefix holds NaN or infinite values (in {model.dtype} on this model), so every contrasted score "
            "would be NaN. Retrain it (a diverged run? lower the learning rate) or restore it from a checkpoint."
        )
    return embeddings
