"""Creating the soft prefix (the correction model's trainable part) for training, as a peft prompt-tuning adapter.

Saving, checking and loading it are the adapter format's, in :mod:`ctd_hf.adapter`, which decoding reads too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft import PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from transformers import PreTrainedModel

EXPORTED = Path("custom_generate", "generate.py")  # what `ctd-hf export-hub` adds; it embeds a copy of the adapter
_INITS = {"random": PromptTuningInit.RANDOM, "vocab": PromptTuningInit.SAMPLE_VOCAB, "text": PromptTuningInit.TEXT}


def add_soft_prefix(
    model: PreTrainedModel,
    num_virtual_tokens: int = 20,
    init: str = "vocab",
    init_text: str | None = None,
    tokenizer_name_or_path: str | None = None,
) -> PeftModel:
    """Wrap ``model`` with a trainable soft prefix of ``num_virtual_tokens`` embeddings (the model is not copied).

    ``init`` is ``"vocab"`` (embeddings of randomly sampled vocabulary tokens; seed with ``transformers.set_seed``),
    ``"random"`` (peft's unit-normal soft tokens) or ``"text"`` (the embeddings of ``init_text``, tokenised with
    ``tokenizer_name_or_path``, by default the model's own folder).

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                      num_hidden_layers=1, num_attention_heads=2))
        >>> prefixed = add_soft_prefix(model, num_virtual_tokens=4)
        >>> from ctd_hf.adapter import prefix_embeddings
        >>> prefix_embeddings(prefixed).shape, prefixed.get_nb_trainable_parameters()[0]
        (torch.Size([4, 16]), 64)
    """
    if init not in _INITS:
        raise ValueError(f"Unknown prefix init {init!r}; choose one of {sorted(_INITS)}.")
    if isinstance(num_virtual_tokens, bool) or not isinstance(num_virtual_tokens, int) or num_virtual_tokens < 1:
        raise ValueError(f"`num_virtual_tokens` must be an integer >= 1, got {num_virtual_tokens!r}.")
    text_kwargs: dict[str, Any] = {}
    if init == "text":
        if not init_text:
            raise ValueError('init="text" needs `init_text`, the text whose token embeddings start the prefix.')
        tokenizer_name_or_path = tokenizer_name_or_path or model.name_or_path
        if not tokenizer_name_or_path:
            raise ValueError('init="text" tokenises `init_text` with the model\'s tokenizer, but this model has no '
                             "name_or_path (it was built from a config): pass `tokenizer_name_or_path`.")
        text_kwargs = {"prompt_tuning_init_text": init_text, "tokenizer_name_or_path": tokenizer_name_or_path}
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=num_virtual_tokens,
        prompt_tuning_init=_INITS[init],
        **text_kwargs,
    )
    return get_peft_model(model, config)


def check_not_exported(path: str | Path) -> None:
    """Refuse to save an adapter into a folder exported by ``ctd-hf export-hub``: its ``custom_generate/generate.py``
    embeds the adapter it was exported with and would go on decoding that one."""
    if Path(path, EXPORTED).is_file():
        raise ValueError(f"{path} was exported with `ctd-hf export-hub`: {Path(path, EXPORTED)} decodes with a copy "
                         "of the prefix it was exported with, so a prefix saved here would disagree with it. Train "
                         "into another folder (then export that one), or delete the custom_generate folder first.")
