"""A resumable contrastive-tuning run from declared settings: what ``ctd-hf tune``, the demo and the sweep run.

The run writes into one folder: ``tune_settings.json`` (the settings and the model's fingerprint), Trainer checkpoints,
the final adapter (``adapter_config.json``, ``adapter_model.safetensors``, ``ctd_hf.json``), ``train_results.json``
and ``loss_curves.png`` (the contrastive loss against the original model's loss on the same batches). Rerun with the
same settings, it resumes from the last complete checkpoint; with another model or other settings it refuses, so one
folder never mixes two runs. Only the length of training (``epochs``, ``max_steps``) and the checkpoint interval may
change between reruns.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import transformers
from peft import LoraConfig, TaskType, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.trainer_utils import get_last_checkpoint

from ..models import fingerprint, load_model_and_tokenizer, model_id
from ..plots import loss_curves
from ..records import check_output_folder, write_json
from ..resources import resource_path
from .config import CTDConfig
from .data import load_sft_data, tokenize_sft
from .prefix import add_soft_prefix, check_adapter
from .trainer import CTDTrainer

SETTINGS_FILE = "tune_settings.json"
ADAPTERS = ("prefix", "lora")
INITS = ("vocab", "random", "text")


@dataclass(kw_only=True)
class TuneSettings:
    """Everything a contrastive-tuning run depends on (the model comes separately)."""

    data: str = field(default=str(resource_path("sft", "alpaca_en_demo.json")),
                      metadata={"help": "SFT data: JSON/JSONL file, save_to_disk folder or dataset name."})
    prompt_format: str = field(default="chatml", metadata={"help": "Prompt format of training (and decoding)."})
    fraction: float = field(default=1.0, metadata={"help": "Seeded random fraction of the data to tune on."})
    max_length: int = field(default=256, metadata={"help": "Tokens per example; longer ones lose their end."})
    adapter: str = field(default="prefix", metadata={"help": f"What the correction model adds: {ADAPTERS}."})
    num_virtual_tokens: int = field(default=20, metadata={"help": "Prefix length."})
    init: str = field(default="vocab", metadata={"help": f"Prefix initialisation: {INITS}."})
    init_text: str | None = field(default=None, metadata={"help": "Text whose embeddings start the prefix."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (adapter lora)."})
    alpha: float = field(default=0.3, metadata={"help": "Contrast strength of the loss."})
    learning_rate: float = field(default=1e-2, metadata={"help": "AdamW learning rate of the adapter."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the data.", "length": True})
    max_steps: int | None = field(default=None, metadata={"help": "Optimizer steps (overrides epochs).",
                                                           "length": True})
    batch_size: int = field(default=8, metadata={"help": "Examples per device and micro-batch."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N steps.", "length": True})
    seed: int = field(default=0, metadata={"help": "Seeds sampling, initialisation and shuffling."})

    def __post_init__(self) -> None:
        if self.adapter not in ADAPTERS:
            raise ValueError(f"Unknown adapter {self.adapter!r}; choose one of {ADAPTERS}.")
        if self.init not in INITS:
            raise ValueError(f"Unknown prefix init {self.init!r}; choose one of {INITS}.")
        if self.init == "text" and not self.init_text:
            raise ValueError('init="text" needs `init_text`, the text whose token embeddings start the prefix.')
        for name in ("max_length", "num_virtual_tokens", "lora_r", "batch_size", "grad_accum", "save_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"`max_steps` must be >= 1 (or None to use epochs), got {self.max_steps!r}.")
        if not self.epochs > 0:
            raise ValueError(f"`epochs` must be > 0, got {self.epochs!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate!r}.")

    def key(self) -> dict[str, Any]:
        """The settings a resumed run must share (all but the length of training and the checkpoint interval)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.metadata.get("length")}


def tune(
    settings: TuneSettings,
    output_dir: str | Path,
    model_name: str = "default",
    dtype: str = "float32",
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    **training_args: Any,
) -> dict[str, Any]:
    """Run (or resume) contrastive tuning into ``output_dir``; returns the metrics also written to
    ``train_results.json``: the contrastive loss, the original model's loss on the same batches and their gap.

    ``model``/``tokenizer`` may be given already loaded (``model_name`` then only names them); ``training_args`` go
    to :class:`~ctd_hf.CTDConfig` (e.g. ``disable_tqdm=True``).
    """
    output_dir = check_output_folder(output_dir)
    transformers.set_seed(settings.seed)
    if (model is None) != (tokenizer is None):
        raise ValueError("Pass both `model` and `tokenizer`, or neither (then `model_name` is loaded).")
    if model is None:
        model, tokenizer = load_model_and_tokenizer(model_name, dtype=dtype)
    identity = {"model": model_id(model) or model_name, "dtype": str(model.dtype), "fingerprint": fingerprint(model)}
    checkpoint = last_complete_checkpoint(output_dir)
    _check_resumable(output_dir, checkpoint, model, {**identity, "settings": settings.key()})
    data = load_sft_data(settings.data, fraction=settings.fraction, seed=settings.seed)
    train_dataset = tokenize_sft(data, tokenizer, settings.prompt_format, settings.max_length)
    if settings.adapter == "prefix":
        model = add_soft_prefix(model, settings.num_virtual_tokens, init=settings.init, init_text=settings.init_text)
    else:
        model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=settings.lora_r,
                                                 lora_alpha=2 * settings.lora_r))
    config = CTDConfig(
        output_dir=str(output_dir), alpha=settings.alpha, learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs, max_steps=settings.max_steps or -1,
        per_device_train_batch_size=settings.batch_size, gradient_accumulation_steps=settings.grad_accum,
        save_steps=settings.save_steps, save_total_limit=2, logging_steps=1, seed=settings.seed, report_to="none",
        prompt_format=settings.prompt_format, max_length=settings.max_length,
        **{"dataloader_pin_memory": model.device.type == "cuda", **training_args},  # pinning warns off a GPU
    )
    trainer = CTDTrainer(model=model, args=config, train_dataset=train_dataset, processing_class=tokenizer)
    if checkpoint:
        print(f"Resuming from {checkpoint}", file=sys.stderr)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(output_dir))
    metrics = {**result.metrics, "examples": len(train_dataset), "output_dir": str(output_dir)}
    write_json(output_dir / "train_results.json", metrics)
    loss_curves(trainer.state.log_history, output_dir / "loss_curves.png")
    return metrics


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest checkpoint that was written to the end (its ``trainer_state.json`` is saved last), removing newer
    ones a kill cut short: Trainer writes checkpoint folders in place, and would otherwise resume from a torn one."""
    if not output_dir.is_dir():
        return None
    while (checkpoint := get_last_checkpoint(str(output_dir))) is not None:
        if Path(checkpoint, "trainer_state.json").is_file():
            return checkpoint
        print(f"Removing {checkpoint}: a checkpoint cut short (no trainer_state.json)", file=sys.stderr)
        shutil.rmtree(checkpoint)
    return None


def _check_resumable(output_dir: Path, checkpoint: str | None, model: PreTrainedModel, current: dict) -> None:
    """Refuse to continue a folder trained for another model or with other settings; record the settings of a new
    one before anything else is written."""
    path = output_dir / SETTINGS_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = [key for key in ("model", "dtype", "fingerprint") if previous.get(key) != current[key]]
        changed += [f"{key} ({previous['settings'].get(key)!r} -> {value!r})"
                    for key, value in current["settings"].items() if previous["settings"].get(key) != value]
        if changed:
            raise ValueError(f"{output_dir} holds a tuning run with another model or settings ({', '.join(changed)}):"
                             " use a new output folder, or delete this one to start over.")
        return
    if checkpoint is not None:  # a folder from a run that kept no settings file: at least the model must fit
        check_adapter(model, checkpoint)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, current)
