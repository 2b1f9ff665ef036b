"""``CTDTrainer``: a ``transformers.Trainer`` whose loss is the contrastive objective of CTD."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import datasets
import torch
from peft import PeftConfig, PeftModel, PeftType, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer
from transformers.trainer_pt_utils import nested_gather

from ..adapter import write_card
from ..formula import IGNORE_INDEX, contrastive_token_loss, label_positions, token_loss
from ..models import load_model_and_tokenizer, model_id
from .config import CTDConfig
from .data import RightPaddingCollator, load_sft_data, tokenize_sft
from .prefix import check_not_exported


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
        >>> data = datasets.Dataset.from_dict({"input_ids": [[1, 5, 7, 9], [1, 6, 8]],
        ...                                    "attention_mask": [[1] * 4, [1] * 3],
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

    def __init__(
        self,
        model: PeftModel | PreTrainedModel | str,
        args: CTDConfig | None = None,
        data_collator: Any = None,
        train_dataset: datasets.Dataset | None = None,
        eval_dataset: datasets.Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        peft_config: PeftConfig | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(model, str):
            model, tokenizer = load_model_and_tokenizer(model, dtype="auto")  # errors name the model
            processing_class = processing_class or tokenizer
        if args is None:
            args = CTDConfig(output_dir=f"{model_id(model) or 'model'}-CTD")
        if not isinstance(args, CTDConfig):
            raise TypeError("CTDTrainer needs a CTDConfig (TrainingArguments with `alpha`) as `args`.")
        if peft_config is not None:
            if isinstance(model, PeftModel):
                raise ValueError("The model already holds a peft adapter: pass either a PeftModel or `peft_config`.")
            model = get_peft_model(model, peft_config)
        if not isinstance(model, PeftModel):
            raise TypeError(
                "CTDTrainer trains a correction adapter: pass `peft_config=PromptTuningConfig(...)` (or LoraConfig), "
                "or a model wrapped by `add_soft_prefix(model)` or `get_peft_model`, not a bare "
                f"{type(model).__name__}."
            )
        if model.active_peft_config.peft_type not in (PeftType.PROMPT_TUNING, PeftType.LORA):
            raise ValueError(f"CTDTrainer trains a soft prefix (peft prompt tuning) or a LoRA adapter, the two that "
                             f"ctd_hf decodes; got a {model.active_peft_config.peft_type.value} adapter. Use "
                             "PromptTuningConfig (or add_soft_prefix) or LoraConfig.")
        if args.alpha == 0:
            warnings.warn("alpha=0 makes the loss the plain SFT loss, which gives the adapter no gradient: training "
                          "will not change it. Use alpha > 0 (the paper uses 0.3).", UserWarning, stacklevel=2)
        train_dataset = _prepared(train_dataset, "train_dataset", processing_class, args)
        eval_dataset = _prepared(eval_dataset, "eval_dataset", processing_class, args)
        if data_collator is None:
            data_collator = RightPaddingCollator(_pad_id(processing_class))
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)
        # transformers' causal LMs take `logits_to_keep` (an int, or a 1D tensor of positions) to skip the vocabulary
        # projection elsewhere; compute_loss uses it when the model has it.
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.get_base_model().forward).parameters
        # compute_loss normalises by the token count of the whole accumulated batch, as a causal LM's own loss does.
        self.model_accepts_loss_kwargs = True
        # The original model's loss on the same batches, logged beside the contrastive loss (see `log`).
        self._original_loss = torch.zeros(())
        self._original_total, self._logged_step, self._first_step = 0.0, None, None

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
        targets = labels[:, 1:][keep]
        if model.training:  # before the contrast below overwrites `logits` in place
            if self._first_step is None:  # the first step of this train() call (a resumed run starts later)
                self._first_step = self._logged_step = self.state.global_step
            with torch.no_grad():
                self._original_loss = self._original_loss.to(logits.device) + token_loss(logits, targets,
                                                                                          num_items_in_batch)
        loss = contrastive_token_loss(logits, correction, targets, self.args.alpha, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every process's tokens and DDP averages gradients: undo the average.
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Trainer's log, plus ``original_loss`` (the model without the adapter on the same batches) and ``loss_gap``
        (contrastive minus original: the adapter is learning when it falls below 0), per logging window and, at the
        end, over the run (``train_original_loss``, ``train_loss_gap``)."""
        if self._first_step is not None and ("loss" in logs or "train_loss" in logs):
            # The original loss since the last log, averaged over processes as Trainer averages the loss.
            window = nested_gather(self._original_loss.detach(), self.args.parallel_mode).mean().item()
            self._original_total += window
            self._original_loss = torch.zeros(())
            if "loss" in logs:
                logs["original_loss"] = round(window / max(self.state.global_step - self._logged_step, 1), 4)
                logs["loss_gap"] = round(logs["loss"] - logs["original_loss"], 4)
                self._logged_step = self.state.global_step
            else:
                steps = max(self.state.global_step - self._first_step, 1)
                logs["train_original_loss"] = self._original_total / steps
                logs["train_loss_gap"] = logs["train_loss"] - logs["train_original_loss"]
                self._original_total, self._first_step = 0.0, None
        super().log(logs, *args, **kwargs)

    def save_model(self, output_dir: str | None = None, *args: Any, **kwargs: Any) -> None:
        """Save the adapter in peft's layout (Trainer's own code, checkpoints included), plus the ``ctd_hf.json`` card
        the loader checks."""
        check_not_exported(output_dir or self.args.output_dir)
        super().save_model(output_dir, *args, **kwargs)
        if self.args.should_save:
            write_card(output_dir or self.args.output_dir, self.accelerator.unwrap_model(self.model),
                       alpha=self.args.alpha)


def _prepared(
    dataset: datasets.Dataset | None, name: str, tokenizer: PreTrainedTokenizerBase | None, args: CTDConfig
) -> datasets.Dataset | None:
    """``dataset`` tokenised for the loss (raw SFT rows are tokenised with ``args.prompt_format`` and
    ``args.max_length``), refusing data that would train nothing."""
    if dataset is None:
        return None
    if isinstance(dataset, list):  # raw rows as a Python list, as TRL's trainers take them
        dataset = datasets.Dataset.from_list(dataset)
    if not isinstance(dataset, datasets.Dataset):
        return dataset  # an iterable or torch dataset: the user's own pipeline, taken as tokenised
    if "input_ids" not in dataset.column_names:
        if tokenizer is None:
            raise ValueError(f"`{name}` holds raw SFT examples (no `input_ids`): pass `processing_class=tokenizer` "
                             "to tokenise them, or tokenise with ctd_hf.tokenize_sft first.")
        dataset = tokenize_sft(load_sft_data(dataset), tokenizer, args.prompt_format, args.max_length)
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty: there is nothing to train on.")
    missing = sorted({"input_ids", "attention_mask", "labels"} - set(dataset.column_names))
    if missing:
        raise ValueError(f"`{name}` lacks the columns {missing}: tokenise SFT data with ctd_hf.tokenize_sft, which "
                         "puts labels on the answers.")
    if not any(label != IGNORE_INDEX for labels in dataset["labels"] for label in labels[1:]):
        raise ValueError(f"Every label of `{name}` is -100: the loss has no token to predict and nothing would "
                         "train. Labels must mark the answer tokens (ctd_hf.tokenize_sft does).")
    return dataset


def _pad_id(tokenizer: PreTrainedTokenizerBase | None) -> int:
    """The id right padding uses (its value is masked out, so the EOS id serves when there is no pad token)."""
    if tokenizer is None:
        raise ValueError("CTDTrainer needs `data_collator=ctd_hf.RightPaddingCollator(pad_token_id)` or "
                         "`processing_class=tokenizer` to pad batches.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("The tokenizer has neither a pad nor an EOS token: set tokenizer.pad_token first.")
    return pad


def _at_labels(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The ``(tokens, vocab)`` rows of ``logits`` at the label positions ``keep`` (``label_positions(labels)``).

    ``logits`` cover either the whole sequence (the input tokens are its last ``keep.shape[1] + 1`` positions; prompt
    tuning puts its virtual tokens first) or only the positions any row needs, ``keep.any(dim=0)``, in order.
    """
    needed = keep.any(dim=0)
    if logits.shape[1] == int(needed.sum()):
        return logits[keep[:, needed]]
    return logits[:, -(keep.shape[1] + 1) : -1][keep]
