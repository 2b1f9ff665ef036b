"""``CTDTrainer``: a ``transformers.Trainer`` whose loss is the contrastive objective of CTD."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from peft import PeftModel
from transformers import Trainer

from ..contrast import contrastive_token_loss, label_positions
from .config import CTDConfig
from .prefix import write_card


class CTDTrainer(Trainer):
    """Trains a correction adapter (soft prefix, or LoRA) so that ``softmax(z - alpha * z~)`` predicts the labels.

    ``z`` are the logits of the frozen model with the adapter disabled, computed without gradient; ``z~`` those of
    the same model with the adapter on, through the (possibly data-parallel wrapped) model, so only the adapter
    learns and the weights exist once. Batches must be right-padded (``RightPaddingCollator``): the prefix then sits
    right before each row's first token at positions ``0..P-1``, exactly where decoding puts it.

    Example:
        >>> import tempfile
        >>> import datasets
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from ctd_hf import CTDConfig, RightPaddingCollator, add_soft_prefix
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                      num_hidden_layers=1, num_attention_heads=2))
        >>> data = datasets.Dataset.from_dict({"input_ids": [[1, 5, 7, 9], [1, 6, 8]], "attention_mask": [[1] * 4, [1] * 3],
        ...                                    "labels": [[-100, -100, 7, 9], [-100, 6, 8]]})
        >>> args = CTDConfig(output_dir=tempfile.mkdtemp(), alpha=0.3, max_steps=1, per_device_train_batch_size=2,
        ...                  report_to="none", save_strategy="no", disable_tqdm=True)
        >>> trainer = CTDTrainer(model=add_soft_prefix(model, num_virtual_tokens=4), args=args, train_dataset=data,
        ...                      data_collator=RightPaddingCollator(pad_token_id=0))
        >>> result = trainer.train()  # doctest: +ELLIPSIS
        {'train_runtime': ...}
        >>> result.global_step
        1
    """

    def __init__(self, model: PeftModel, args: CTDConfig, **kwargs: Any) -> None:
        if not isinstance(model, PeftModel):
            raise TypeError(
                "CTDTrainer trains a correction adapter: pass `add_soft_prefix(model)` or a peft LoRA model "
                f"(`get_peft_model(model, LoraConfig(...))`), not a {type(model).__name__}."
            )
        if not isinstance(args, CTDConfig):
            raise TypeError("CTDTrainer needs a CTDConfig (TrainingArguments with `alpha`) as `args`.")
        super().__init__(model=model, args=args, **kwargs)
        # transformers' causal LMs take `logits_to_keep` (an int, or a 1D tensor of positions) to skip the vocabulary
        # projection elsewhere; compute_loss uses it when the model has it.
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.get_base_model().forward).parameters
        # compute_loss normalises by the token count of the whole accumulated batch, as a causal LM's own loss does.
        self.model_accepts_loss_kwargs = True

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        input_ids, attention_mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        if (attention_mask[:, 0] == 0).any():
            raise ValueError(
                "CTDTrainer got a left-padded batch; it needs right padding so the prefix sits before each row's "
                "first token. Use ctd_hf.RightPaddingCollator or tokenizer.padding_side = 'right'."
            )
        # Only the label positions are contrasted (see contrastive_loss), so the logits are computed there only
        # (`logits_to_keep`: the positions any row needs, counted from the end, where the input tokens sit behind any
        # virtual tokens) and cut down to the label tokens at once: the full z never coexists with the activations
        # of the forward with gradient, and the loss works in place on the two gathered (tokens, vocab) copies.
        keep = label_positions(labels)
        needed = {}
        if self._logits_to_keep:
            needed["logits_to_keep"] = keep.any(dim=0).nonzero().squeeze(1) - input_ids.shape[1]
        adapter_model = self.accelerator.unwrap_model(model)
        with torch.no_grad(), adapter_model.disable_adapter():
            logits = adapter_model(input_ids=input_ids, attention_mask=attention_mask, **needed).logits
            logits = _at_labels(logits, keep)
        # Through `model`, so a DistributedDataParallel wrapper sees the forward and syncs the adapter's gradients.
        # Returned outputs (evaluation) keep the logits of every position.
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, **({} if return_outputs else needed))
        correction = _at_labels(outputs.logits, keep)
        if not return_outputs:
            outputs = None
        loss = contrastive_token_loss(logits, correction, labels[:, 1:][keep], self.args.alpha, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every process's tokens and DDP averages gradients: undo the average.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the adapter in peft's layout (Trainer's own code), plus the ``ctd_hf.json`` card the loader checks."""
        super()._save(output_dir, state_dict)
        write_card(output_dir or self.args.output_dir, self.accelerator.unwrap_model(self.model), alpha=self.args.alpha)


def _at_labels(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The ``(tokens, vocab)`` rows of ``logits`` at the label positions ``keep`` (``label_positions(labels)``).

    ``logits`` cover either the whole sequence (the input tokens are its last ``keep.shape[1] + 1`` positions; prompt
    tuning puts its virtual tokens first) or only the positions any row needs, ``keep.any(dim=0)``, in order.
    """
    needed = keep.any(dim=0)
    if logits.shape[1] == int(needed.sum()):
        return logits[keep[:, needed]]
    return logits[:, -(keep.shape[1] + 1) : -1][keep]
