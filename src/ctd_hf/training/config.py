"""``CTDConfig``: the training arguments of contrastive tuning (``TrainingArguments`` plus the contrast strength)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..prompts import PROMPT_FORMATS
from ..settings import check_value, contrast_strength
from .data import sequence_length


@dataclass(kw_only=True)
class CTDConfig(TrainingArguments):
    r"""Configuration of :class:`~ctd_hf.CTDTrainer`: every ``transformers.TrainingArguments`` field, plus:

    Parameters:
        > Contrastive objective

        alpha (`float`, *optional*, defaults to `0.3`):
            Contrast strength of the loss, the cross-entropy of ``softmax(z - alpha * z~)`` against the labels. 0 is
            the plain loss, which gives the prefix no gradient.

        > Data preparation (when ``CTDTrainer`` gets raw SFT rows rather than tokenised ones)

        prompt_format (`str`, *optional*, defaults to `"chatml"`):
            How prompts are rendered (``ctd_hf.PROMPT_FORMATS``); decoding must use the same.
        max_length (`int`, *optional*, defaults to `512`):
            Tokens per example; longer examples lose their end.

        > Parameters that control the training (defaults follow the CTD paper)

        learning_rate (`float`, *optional*, defaults to `9e-4`):
            AdamW learning rate of the adapter. The small default model needs about 1e-2 to move a 20-token prefix
            in a few hundred steps (``ctd-hf tune`` defaults to that).
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Kept off: the collator builds exactly the columns the loss reads, which the ``PeftModel``'s forward
            signature does not list.
    """

    alpha: float = field(default=0.3, metadata={"help": "Contrast strength in softmax(z - alpha * z~)."})
    prompt_format: str = field(default="chatml", metadata={"help": "Prompt format of raw SFT rows."})
    max_length: int = field(default=512, metadata={"help": "Tokens per example of raw SFT rows."})
    learning_rate: float = field(default=9e-4, metadata={"help": "AdamW learning rate of the adapter."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep the collator's columns (the PeftModel's forward does not list them)."}
    )

    def __post_init__(self) -> None:
        # Plain metadata and explicit checks: HfArgumentParser (TRL's CLI) passes every metadata key to argparse.
        self.alpha = check_value("alpha", self.alpha, contrast_strength)
        check_value("prompt_format", self.prompt_format, choices=PROMPT_FORMATS)
        check_value("max_length", self.max_length, sequence_length)
        super().__post_init__()
