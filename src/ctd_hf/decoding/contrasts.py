"""What is contrasted: a second view of the sequence that ``generate()`` writes, and how it combines with the first.

A :class:`Contrast` says which model computes the second view's logits ``z~`` and on which prompt (the generated
tokens follow it), and how ``z~`` and the model's own scores ``z`` combine. It runs nothing: the executors do, the
stream (:class:`~ctd_hf.ContrastProcessor`, own KV cache) and the doubled batch (:func:`~ctd_hf.generate_doubled`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .._compat import adapter_layers_active, adapter_layers_enabled
from ..adapter import resolve_prefix
from ..formula import (DEFAULT_CD_STRENGTH, DEFAULT_PLAUSIBILITY, DEFAULT_STRENGTH, contrast_log_probs,
                       contrastive_decoding_scores)
from ..models import is_skeleton, load_model_and_tokenizer
from ..settings import check_value, contrast_strength, positive_number, renamed_arguments, unit_interval
from .layout import check_left_padded, insert_prefix


def decoding_model(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The model whose ``generate()`` an executor follows: a prompt-tuning ``PeftModel`` stands for its base model.

    peft's prompt tuning leaves the base model's modules untouched (the prefix lives in the wrapper), so the base model
    computes the original logits ``z``. Adapters that change weights (LoRA) leave no such model and are refused.
    """
    if not isinstance(model, PeftModel):
        return model
    if not model.active_peft_config.is_prompt_learning:
        raise ValueError(
            f"Contrastive decoding got a PeftModel with a {model.active_peft_config.peft_type} adapter, whose base "
            "model carries the adapter's weights, so it cannot give the original logits. Pass the model without "
            "the adapter, or decode CTD's LoRA variant with ctd_hf.LoRAContrast(peft_model)."
        )
    return model.get_base_model()


def check_loaded(model: PreTrainedModel) -> None:
    """Refuse to run transformers' forwards on a model whose weights live in another engine."""
    if is_skeleton(model):
        raise ValueError(f"This {type(model).__name__} holds only its input embeddings (ctd_hf.models.load_skeleton, "
                         "what --engine vllm loads): decode it on the engine that holds its weights, or load it with "
                         "load_model_and_tokenizer.")


class Contrast(ABC):
    """Base of the contrasts: ``model`` is the model whose ``generate()`` runs, ``contrast_model`` computes ``z~``.

    Subclasses define :meth:`second_view` and, where it is not ``log_softmax(z - strength * z~)``, :meth:`combine`.
    """

    def __init__(
        self, model: PreTrainedModel, strength: float, contrast_model: PreTrainedModel | None = None
    ) -> None:
        self.model = decoding_model(model)
        self.strength = strength
        self.contrast_model = self.model if contrast_model is None else decoding_model(contrast_model)
        for role, checked in (("model", self.model), ("contrast model", self.contrast_model)):
            if getattr(checked.config, "is_encoder_decoder", False):
                raise ValueError(f"The {role} {type(checked).__name__} is an encoder-decoder; contrastive decoding "
                                 "supports decoder-only models with the default dynamic cache.")
            if not is_skeleton(checked) and any(parameter.is_meta for parameter in checked.parameters()):
                raise ValueError(f"The {role} {type(checked).__name__} has weights on the meta device (created "
                                 "without loading them): load its weights (from_pretrained, or to_empty() and "
                                 "load_state_dict) before decoding.")

    @property
    def shares_model(self) -> bool:
        """Whether both views are one model's forward (then the doubled executor can run them as one batch)."""
        return self.contrast_model is self.model

    @property
    def prefix_length(self) -> int:
        """Positions the second view adds before each prompt (CTD's prefix), which position limits must count."""
        return 0

    def first_view(self) -> AbstractContextManager:
        """Entered while an executor runs ``generate()``: the state in which ``model`` gives the original logits."""
        return nullcontext()

    def second_view_forward(self) -> AbstractContextManager:
        """Entered around each forward of the second view (the stream executor's)."""
        return nullcontext()

    @abstractmethod
    def second_view(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The left-padded prompt of the second view for ``generate()``'s prompt rows ``input_ids``.

        Returns ``attention_mask`` and ``input_ids`` or ``inputs_embeds``; one row per row of ``input_ids`` (copies
        made by ``num_beams`` / ``num_return_sequences`` included).
        """

    def combine(self, scores: torch.Tensor, second_logits: torch.Tensor) -> torch.Tensor:
        """The processed scores, ``log_softmax(z - strength * z~)`` (:func:`~ctd_hf.formula.contrast_log_probs`)."""
        return contrast_log_probs(scores, second_logits, self.strength)

    def contrasted_scores(self, scores: torch.Tensor, second_logits: torch.Tensor) -> torch.Tensor:
        """:meth:`combine`, refusing a row without any finite score: it would decode token 0 without a word."""
        return check_scores(self.combine(scores, second_logits), second_logits, type(self).__name__, self.strength)

    def portable(self) -> dict[str, Any] | None:
        """What another process needs to score with this contrast without the Python object (a vLLM engine core,
        whose requests carry JSON values): here the strength, for a contrast whose two views are one model's forward
        and which combines them as :meth:`combine` does; ``None`` for a contrast that cannot travel."""
        if self.shares_model and type(self).combine is Contrast.combine:
            return {"strength": self.strength}
        return None


def check_scores(combined: torch.Tensor, second_logits: torch.Tensor, who: str, strength: float) -> torch.Tensor:
    """``combined``, refusing a row without any finite score (it would decode token 0 without a word)."""
    if not torch.isfinite(combined.max(dim=-1).values).all():
        raise ValueError(
            f"{who} produced scores that are NaN or -inf for every token (strength {strength}; max |z~| "
            f"{second_logits.abs().max().item():.3g}). The strength overflows the scores, or the model or prefix "
            "produce non-finite logits: lower the strength or check the prefix and model."
        )
    return combined


class CTDContrast(Contrast):
    r"""Contrastive Tuning and Decoding: ``log_softmax(z - strength * z~)``, ``z~`` the logits of the same model with
    the tuned soft prefix placed right before each prompt's first token (where the trainer put it).

    Args:
        model: the model being decoded (the one the prefix was tuned for).
        prefix: an adapter folder written by ``ctd-hf tune``, a prompt-tuning ``PeftModel`` or a
            ``(num_virtual_tokens, hidden)`` tensor.
        strength: contrast strength, the paper's ``beta`` (0 gives plain decoding; ``beta=`` is its deprecated
            name here).

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from ctd_hf import generate_doubled
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                      num_hidden_layers=1, num_attention_heads=2)).eval()
        >>> contrast = CTDContrast(model, torch.randn(4, 16), strength=0.3)
        >>> generate_doubled(model, contrast, input_ids=torch.tensor([[1, 5, 7]]), max_new_tokens=3, min_new_tokens=3,
        ...                  do_sample=False, pad_token_id=0).shape
        torch.Size([1, 6])
    """

    @renamed_arguments(beta="strength")
    def __init__(
        self, model: PreTrainedModel, prefix: str | Path | PeftModel | torch.Tensor, strength: float = DEFAULT_STRENGTH
    ) -> None:
        super().__init__(model, check_value("strength", strength, contrast_strength))
        self.prefix = resolve_prefix(self.model, prefix)

    @property
    def prefix_length(self) -> int:
        return self.prefix.shape[0]

    def second_view(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        embeds, mask = insert_prefix(self.model.get_input_embeddings()(input_ids), attention_mask, self.prefix)
        return {"inputs_embeds": embeds, "attention_mask": mask}


class LoRAContrast(Contrast):
    r"""CTD's LoRA variant (the paper's section 7.3): ``log_softmax(z - strength * z~)``, ``z~`` the logits of the model
    with the contrastively tuned LoRA adapter enabled, ``z`` with it disabled (one set of base weights).

    Both views are the same modules in two adapter states, so they cannot share one batch: only the stream executor
    runs it. Inside the processor's ``with`` block the adapter is off except during the stream's own forwards, so
    ``generate()`` may be called on the ``PeftModel`` or on its base model.

    Args:
        model: a ``PeftModel`` holding a LoRA adapter (e.g. what ``CTDTrainer`` trained with a ``LoraConfig``).
        strength: contrast strength, the paper's ``beta`` (0 gives plain decoding).

    Example:
        >>> import torch
        >>> from peft import LoraConfig, TaskType, get_peft_model
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from ctd_hf import ContrastProcessor
        >>> base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                     num_hidden_layers=1, num_attention_heads=2)).eval()
        >>> lora = get_peft_model(base, LoraConfig(task_type=TaskType.CAUSAL_LM, r=2, init_lora_weights=False))
        >>> with ContrastProcessor(LoRAContrast(lora, strength=0.3)) as processor:
        ...     lora.generate(input_ids=torch.tensor([[1, 5, 7]]), logits_processor=[processor], max_new_tokens=3,
        ...                   min_new_tokens=3, do_sample=False, pad_token_id=0).shape
        torch.Size([1, 6])
    """

    @renamed_arguments(beta="strength")
    def __init__(self, model: PeftModel, strength: float = DEFAULT_STRENGTH) -> None:
        if not isinstance(model, PeftModel) or model.active_peft_config.is_prompt_learning:
            raise ValueError(f"LoRAContrast needs a PeftModel with a LoRA adapter, got {type(model).__name__}; a soft "
                             "prefix decodes with CTDContrast.")
        self.peft_model = model
        super().__init__(model.get_base_model(), check_value("strength", strength, contrast_strength))

    @property
    def shares_model(self) -> bool:
        return False  # one module, but in two adapter states: never in one batch

    def second_view(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def first_view(self) -> AbstractContextManager:
        # Off while generate() runs; a model whose layers are already off (a bound ctd-lora method keeps them off
        # between its own forwards) is left as it is, since disable_adapter() switches them on when it ends.
        if adapter_layers_active(self.peft_model):
            return self.peft_model.disable_adapter()
        return nullcontext()

    def second_view_forward(self) -> AbstractContextManager:
        return adapter_layers_enabled(self.peft_model)


class InstructiveContrast(Contrast):
    r"""Instructive Decoding (Kim et al. 2023): ``log_softmax(z - strength * z~)``, ``z~`` the same model's logits
    when it is given a noisy instruction instead of the real one.

    Noisy prompt ``i`` pairs with prompt ``i`` of the ``generate()`` batch. When ``num_beams`` or
    ``num_return_sequences`` make ``k`` consecutive copies of each prompt, ``k`` is the number of rows over the number
    of noisy prompts, and every group of ``k`` rows is checked to hold copies of one prompt.

    Args:
        model: the model being decoded.
        noisy_input_ids: one left-padded noisy prompt per prompt of the batch, in the same prompt format (build them
            with :func:`ctd_hf.noisy_instruction`).
        noisy_attention_mask: their attention mask; may be left out only for a single noisy prompt.
        strength: contrast strength (official default 0.3; 0 gives plain decoding).

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from ctd_hf import ContrastProcessor
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                      num_hidden_layers=1, num_attention_heads=2)).eval()
        >>> with ContrastProcessor(InstructiveContrast(model, torch.tensor([[1, 9]]), strength=0.3)) as processor:
        ...     model.generate(torch.tensor([[1, 5, 7]]), logits_processor=[processor], max_new_tokens=3,
        ...                    min_new_tokens=3, do_sample=False, pad_token_id=0).shape
        torch.Size([1, 6])
    """

    def __init__(
        self,
        model: PreTrainedModel,
        noisy_input_ids: torch.Tensor,
        noisy_attention_mask: torch.Tensor | None = None,
        strength: float = DEFAULT_STRENGTH,
    ) -> None:
        super().__init__(model, check_value("strength", strength, contrast_strength))
        if noisy_input_ids.ndim != 2 or noisy_input_ids.shape[1] == 0:
            raise ValueError(f"`noisy_input_ids` must be a (prompts, tokens) tensor, got shape "
                             f"{tuple(noisy_input_ids.shape)}.")
        if noisy_attention_mask is None:
            if noisy_input_ids.shape[0] > 1:
                raise ValueError("Several noisy prompts need their `noisy_attention_mask` (which tokens are padding).")
            noisy_attention_mask = torch.ones_like(noisy_input_ids)
        if noisy_attention_mask.shape != noisy_input_ids.shape:
            raise ValueError(f"`noisy_attention_mask` has shape {tuple(noisy_attention_mask.shape)}, the noisy ids "
                             f"{tuple(noisy_input_ids.shape)}.")
        check_left_padded(noisy_attention_mask)
        self.noisy_input_ids, self.noisy_attention_mask = noisy_input_ids, noisy_attention_mask

    def second_view(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        rows, prompts = input_ids.shape[0], self.noisy_input_ids.shape[0]
        copies = rows // prompts
        groups = input_ids.view(prompts, copies, -1) if rows == prompts * copies else None
        if groups is None or not (groups == groups[:, :1]).all():
            raise ValueError(
                f"generate() runs {rows} rows but {prompts} noisy prompts were given: pass one noisy prompt per "
                "prompt of the batch (copies made by num_beams / num_return_sequences are matched automatically)."
            )
        device = input_ids.device
        return {
            "input_ids": self.noisy_input_ids.to(device).repeat_interleave(copies, dim=0),
            "attention_mask": self.noisy_attention_mask.to(device).repeat_interleave(copies, dim=0),
        }


class ContrastiveDecodingContrast(Contrast):
    r"""Contrastive Decoding (Li et al. 2022): ``log p_expert - strength * log p_amateur`` on the plausible set
    ``p_expert >= plausibility * max p_expert`` (``-inf`` elsewhere; the paper's ``beta`` and ``alpha``).

    The expert is the model being decoded; the amateur (usually smaller, same tokenizer) reads the same tokens. Two
    models need two forwards, so only the stream executor runs it. Vocabulary sizes may differ only by padded rows of
    an embedding matrix, which needs ``tokenizer`` to tell them apart.

    Args:
        model: the expert.
        amateur: the amateur model.
        plausibility: the plausibility threshold, the paper's ``alpha`` (default 0.1).
        strength: weight of the amateur, the paper's ``beta`` (1.0 in Li et al.; 0 gives the expert restricted to
            the plausible set). ``alpha=`` and ``beta=`` are the deprecated names of these two.
        amateur_temperature: temperature of the amateur's distribution.
        tokenizer, amateur_tokenizer: when given, their vocabularies must be equal.
    """

    @renamed_arguments(alpha="plausibility", beta="strength")
    def __init__(
        self,
        model: PreTrainedModel,
        amateur: PreTrainedModel,
        plausibility: float = DEFAULT_PLAUSIBILITY,
        strength: float = DEFAULT_CD_STRENGTH,
        amateur_temperature: float = 1.0,
        tokenizer: PreTrainedTokenizerBase | None = None,
        amateur_tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        super().__init__(model, check_value("strength", strength, contrast_strength), contrast_model=amateur)
        self.plausibility = check_value("plausibility", plausibility, unit_interval)
        self.amateur_temperature = check_value("amateur_temperature", amateur_temperature, positive_number)
        self.vocab_size = _shared_vocab_size(self.model, self.contrast_model, tokenizer, amateur_tokenizer)

    def second_view(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def portable(self) -> dict[str, Any] | None:
        """The amateur's folder and dtype and the settings (see :meth:`from_portable`); ``None`` for an amateur that
        was not loaded from a folder."""
        folder = str(getattr(self.contrast_model, "name_or_path", "") or "")
        if not Path(folder, "config.json").is_file():
            return None
        return {"amateur": folder, "dtype": str(self.contrast_model.dtype).removeprefix("torch."),
                "plausibility": self.plausibility, "strength": self.strength,
                "amateur_temperature": self.amateur_temperature, "vocab_size": self.vocab_size}

    @classmethod
    def from_portable(cls, settings: dict[str, Any], device: torch.device | str) -> ContrastiveDecodingContrast:
        """The contrast of :meth:`portable`'s ``settings`` in a process that holds the expert elsewhere (a vLLM engine
        core): the amateur is loaded here, on ``device``, and the expert's logits come from the engine. The
        vocabularies were compared where the contrast was built; the amateur stands in for the expert here."""
        amateur, _ = load_model_and_tokenizer(settings["amateur"], dtype=settings["dtype"], device=device)
        contrast = cls(amateur.eval(), amateur, settings["plausibility"], settings["strength"],
                       settings["amateur_temperature"])
        contrast.vocab_size = settings["vocab_size"]
        return contrast

    def combine(self, scores: torch.Tensor, second_logits: torch.Tensor) -> torch.Tensor:
        vocab = self.vocab_size
        expert = F.log_softmax(scores[..., :vocab].float(), dim=-1)
        amateur = F.log_softmax(second_logits[..., :vocab].float() / self.amateur_temperature, dim=-1)
        combined = contrastive_decoding_scores(expert, amateur, self.plausibility, self.strength)
        return F.pad(combined, (0, scores.shape[-1] - vocab), value=float("-inf"))


def _shared_vocab_size(
    expert: PreTrainedModel,
    amateur: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    amateur_tokenizer: PreTrainedTokenizerBase | None,
) -> int:
    """The logit width both models share, refusing models whose vocabularies really differ."""
    both = tokenizer is not None and amateur_tokenizer is not None
    if both and tokenizer.get_vocab() != amateur_tokenizer.get_vocab():
        raise ValueError("The expert's and the amateur's tokenizers differ: Contrastive Decoding needs one vocabulary.")
    sizes = expert.get_output_embeddings().weight.shape[0], amateur.get_output_embeddings().weight.shape[0]
    if sizes[0] == sizes[1]:
        return sizes[0]
    if tokenizer is None or len(tokenizer) > min(sizes):
        raise ValueError(
            f"The expert has {sizes[0]} output rows and the amateur {sizes[1]}. That is fine only when the extra rows "
            "are padding beyond the tokenizer's vocabulary: pass `tokenizer=` so it can be checked "
            + ("" if tokenizer is None else f"(here the tokenizer has {len(tokenizer)} tokens, so it is not)")
            + "."
        )
    return min(sizes)
