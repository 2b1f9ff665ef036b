"""A resumable contrastive-tuning run from declared settings: what ``ctd-hf tune``, the demo and the sweep run.

The run writes into one folder: ``tune_settings.json`` (the settings and the model's fingerprint), Trainer checkpoints,
the final adapter (``adapter_config.json``, ``adapter_model.safetensors``, ``ctd_hf.json``), ``train_results.json``
and ``loss_curves.png`` (the contrastive loss against the original model's loss on the same batches). Rerun with the
same settings, it resumes from the last complete checkpoint; with another model, other data (by content) or other
settings it refuses (or, with ``restart``, deletes what the folder holds and starts over), so one folder never mixes
two runs. Only the checkpoint interval may change between reruns: another length of training changes the learning-rate
schedule of every step, so a run of 4 steps resumed to 8 is not a run of 8.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers
from peft import LoraConfig, TaskType, get_peft_model, load_peft_weights, set_peft_model_state_dict
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerState
from transformers.trainer_utils import get_last_checkpoint

from ..adapter import check_adapter
from ..models import fingerprint, load_model_and_tokenizer, model_id
from ..plots import loss_curves
from ..prompts import prompt_format_setting
from ..records import check_output_folder, check_resumable, write_json
from ..resources import resource_path
from ..settings import (SettingError, check_settings, non_negative_int, positive_int, positive_number, setting,
                        unit_interval, contrast_strength)
from .config import CTDConfig
from .data import load_sft_data, sequence_length, tokenize_sft
from .prefix import add_soft_prefix, check_not_exported
from .trainer import CTDTrainer

logger = logging.getLogger(__name__)
SETTINGS_FILE = "tune_settings.json"
RESULTS_FILE = "train_results.json"
ADAPTERS = ("prefix", "lora")
INITS = ("vocab", "random", "text")


@dataclass(kw_only=True)
class TuneSettings:
    """Everything a contrastive-tuning run depends on (the model comes separately).

    Its defaults are the ones every measurement in docs/results.md used, on the embedded 135M model on 2 CPU cores:
    learning rate 1e-2 (the paper's 9e-4 barely moves its prefix) and 256 tokens per example.
    :class:`~ctd_hf.CTDConfig`, the ``Trainer`` arguments for any model, keeps the paper's 9e-4 and a 512-token
    default; :func:`tune` builds one from these settings.
    """

    data: str = setting(str(resource_path("sft", "alpaca_en_demo.json")),
                        help="SFT data: JSON/JSONL file, save_to_disk folder or dataset name (default: the shipped "
                             "999-example Alpaca sample).")
    prompt_format: str = prompt_format_setting()
    fraction: float = setting(1.0, check=unit_interval, help="Seeded random fraction of the data.")
    max_length: int = setting(256, check=sequence_length, help="Tokens per example; longer ones lose their end.")
    adapter: str = setting("prefix", choices=ADAPTERS, help="What the correction model adds.")
    num_virtual_tokens: int = setting(20, check=positive_int, help="Prefix length.")
    init: str = setting("vocab", choices=INITS, help="Prefix initialisation.")
    init_text: str | None = setting(None, help="Text whose token embeddings start the prefix (init text).")
    lora_r: int = setting(8, check=positive_int, help="LoRA rank (adapter lora).")
    alpha: float = setting(0.3, check=contrast_strength,
                           help="Contrast strength of the loss (0: the plain loss, no gradient).")
    learning_rate: float = setting(1e-2, check=positive_number, aliases=("--lr",),
                                   help="AdamW learning rate of the adapter (the paper's 9e-4 barely moves a 135M "
                                        "model).")
    epochs: float = setting(1.0, check=positive_number, length=True, help="Passes over the data.")
    max_steps: int | None = setting(None, check=positive_int, length=True,
                                    help="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = setting(8, check=positive_int, help="Examples per device and micro-batch.")
    grad_accum: int = setting(1, check=positive_int, help="Micro-batches per optimizer step.")
    save_steps: int = setting(50, check=positive_int, resumable=True,
                              help="Checkpoint every N steps; a rerun resumes from the last.")
    seed: int = setting(0, help="Seeds sampling, initialisation and shuffling.")

    def __post_init__(self) -> None:
        check_settings(self)
        if self.init == "text" and not self.init_text:
            raise SettingError("init", '"text" needs `init_text`, the text whose token embeddings start the prefix.')

    def key(self) -> dict[str, Any]:
        """The settings a resumed run must share, but for the length of training (checked against what the folder's
        run planned) and the checkpoint interval (which may change)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not (f.metadata.get("length") or f.metadata.get("resumable"))}


def tune(
    settings: TuneSettings,
    output_dir: str | Path,
    model_name: str = "default",
    dtype: str = "float32",
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    restart: bool = False,
    **training_args: Any,
) -> dict[str, Any]:
    """Run (or resume) contrastive tuning into ``output_dir``; returns the metrics also written to
    ``train_results.json``: the contrastive loss, the original model's loss on the same batches and their gap.

    ``model``/``tokenizer`` may be given already loaded (``model_name`` then only names them); ``restart`` deletes a
    run of other settings in ``output_dir`` instead of refusing it; ``training_args`` go to :class:`~ctd_hf.CTDConfig`
    (e.g. ``disable_tqdm=True``).
    """
    output_dir = check_output_folder(output_dir)
    if (model is None) != (tokenizer is None):
        raise ValueError("Pass both `model` and `tokenizer`, or neither (then `model_name` is loaded).")
    if model is None:
        model, tokenizer = load_model_and_tokenizer(model_name, dtype=dtype)
    data = load_sft_data(settings.data, fraction=settings.fraction, seed=settings.seed)
    identity = {"model": model_id(model) or model_name, "dtype": str(model.dtype), "fingerprint": fingerprint(model),
                "data_sha256": _data_fingerprint(data)}
    length = {"epochs": settings.epochs, "max_steps": settings.max_steps}
    _check_resumable(output_dir, model, {**identity, "settings": settings.key()}, length, restart)
    results = output_dir / RESULTS_FILE
    if results.is_file():
        logger.info("%s holds a finished run of these settings: nothing to train.", output_dir)
        return json.loads(results.read_text())
    checkpoint = last_complete_checkpoint(output_dir)
    state = TrainerState.load_from_json(str(Path(checkpoint, "trainer_state.json"))) if checkpoint else None
    check_not_exported(output_dir)
    train_dataset = tokenize_sft(data, tokenizer, settings.prompt_format, settings.max_length)
    # Seeded after loading: loading may draw from the generator (the default model's first-use conversion builds a
    # randomly initialised model before its weights replace it), which gave that run another starting prefix.
    transformers.set_seed(settings.seed)
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
    if state is not None and _trained_to_the_end(state, settings):
        # Killed after the run's last checkpoint: resuming from it would train a step past the end (Trainer does when
        # the steps are not a whole number of epochs), so the run is finished from that checkpoint instead.
        set_peft_model_state_dict(model, load_peft_weights(checkpoint))
        trainer.state = state
    else:
        if checkpoint:
            logger.info("Resuming from %s", checkpoint)
        trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(output_dir))
    loss_curves(trainer.state.log_history, output_dir / "loss_curves.png")
    metrics = {**run_metrics(trainer.state), "examples": len(train_dataset), "length": length,
               "output_dir": str(output_dir)}
    write_json(results, metrics)  # last: its presence marks the run finished
    return metrics


SEED_FOLDER = "seed-{}"


def seeds_setting(default: tuple[int, ...] | None = None) -> Any:
    """The ``seeds`` field of a job that tunes one prefix per seed (one declaration for tune, the sweep and the
    demo)."""
    return setting(default, check=non_negative_int, help=(
        "Tune one prefix per seed (instead of --seed), each in a seed-N folder of its own; `ctd-hf eval --prefix "
        "FOLDER` then decodes them all and reports their mean, with intervals over seeds and instances."))


def seed_folder(output_dir: str | Path, seed: int) -> Path:
    """Where seed ``seed``'s prefix of a multi-seed run in ``output_dir`` goes."""
    return Path(output_dir) / SEED_FOLDER.format(seed)


def tune_seeds(
    settings: TuneSettings, seeds: tuple[int, ...], output_dir: str | Path, model_name: str = "default",
    dtype: str = "float32", restart: bool = False, **training_args: Any,
) -> dict[int, dict[str, Any]]:
    """:func:`tune` once per seed (``settings.seed`` replaced), into ``output_dir/seed-N``, each resumable on its
    own; returns each seed's metrics. The prefix is a random draw (its initialisation, the data order): several
    seeds measure how much the answers depend on it."""
    if len(set(seeds)) != len(seeds) or not seeds:
        raise SettingError("seeds", f"must be distinct seeds, at least one, got {seeds}.")
    return {seed: tune(dataclasses.replace(settings, seed=seed), seed_folder(output_dir, seed), model_name, dtype,
                       restart=restart, **training_args) for seed in seeds}


def seed_prefixes(value: str | Path) -> list[str]:
    """The prefix folders ``value`` names: comma-separated folders, each a prefix folder or a folder of ``seed-N``
    prefix folders (as :func:`tune_seeds` writes them, taken in seed order)."""
    folders = []
    for part in str(value).split(","):
        path = Path(part.strip())
        if (path / "adapter_model.safetensors").is_file():
            folders.append(str(path))
            continue
        mark = SEED_FOLDER.format("")
        seeded = sorted((child for child in path.glob(f"{mark}*") if child.name[len(mark):].isdigit()
                         and (child / "adapter_model.safetensors").is_file()),
                        key=lambda child: int(child.name[len(mark):]))
        if not seeded:
            raise FileNotFoundError(f"{path} holds no adapter_model.safetensors and no seed-N prefix folder: point "
                                    "--prefix at folders written by `ctd-hf tune` (or `ctd-hf tune --seeds`).")
        folders += [str(child) for child in seeded]
    return folders


def run_metrics(state: TrainerState) -> dict[str, Any]:
    """The whole run's losses from its log (every step, resumed ones included): the contrastive loss, the original
    model's loss on the same batches, and their gap."""
    steps = [entry for entry in state.log_history if "loss" in entry and "original_loss" in entry]
    if not steps:
        raise ValueError("The run logged no training step: nothing was trained.")
    loss = sum(entry["loss"] for entry in steps) / len(steps)
    original = sum(entry["original_loss"] for entry in steps) / len(steps)
    return {"train_loss": loss, "train_original_loss": original, "train_loss_gap": loss - original,
            "global_step": state.global_step, "epoch": state.epoch}


def _trained_to_the_end(state: TrainerState, settings: TuneSettings) -> bool:
    """Whether a checkpoint's ``state`` is the last step of a run of ``settings``' length."""
    if settings.max_steps is not None:
        return state.global_step >= settings.max_steps
    return state.num_train_epochs == settings.epochs and state.global_step >= state.max_steps


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest checkpoint that was written to the end (its ``trainer_state.json`` is saved last), removing newer
    ones a kill cut short: Trainer writes checkpoint folders in place, and would otherwise resume from a torn one."""
    if not output_dir.is_dir():
        return None
    while (checkpoint := get_last_checkpoint(str(output_dir))) is not None:
        try:
            json.loads(Path(checkpoint, "trainer_state.json").read_text())
            return checkpoint
        except (OSError, ValueError):  # missing, or cut short while being written
            logger.warning("Removing %s: a checkpoint cut short (no complete trainer_state.json)", checkpoint)
            shutil.rmtree(checkpoint)
    return None


def _check_resumable(output_dir: Path, model: PreTrainedModel, current: dict, length: dict, restart: bool) -> None:
    """Refuse to continue a folder trained for another model, on other data or with other settings or another length
    (or delete it, with ``restart``); record the settings of a new one (or of one whose earlier run stopped before
    producing anything) before anything else is written."""
    checkpoint = last_complete_checkpoint(output_dir)
    produced = checkpoint is not None or any((output_dir / name).exists()
                                             for name in (RESULTS_FILE, "adapter_model.safetensors"))
    if checkpoint is not None and not (output_dir / SETTINGS_FILE).is_file():
        check_adapter(model, checkpoint)  # a folder from a run that kept no settings file: at least the model fits
    other_length = _other_length(output_dir, checkpoint, length)
    check_resumable(output_dir, SETTINGS_FILE, current, produced,
                    lambda previous, new: _tuning_changes(previous, new) + other_length, restart=restart)


def _other_length(output_dir: Path, checkpoint: str | None, length: dict) -> list[str]:
    """The length of training the folder's run was planned with, when it is not ``length`` (read from the finished
    run's results, or from the last checkpoint: what Trainer planned its schedule for)."""
    results = output_dir / RESULTS_FILE
    if results.is_file():
        planned = json.loads(results.read_text()).get("length")
        return [] if planned == length else [f"the length of training ({planned} -> {length})"]
    if checkpoint is None:
        return []
    state = TrainerState.load_from_json(str(Path(checkpoint, "trainer_state.json")))
    same = state.max_steps == length["max_steps"] if length["max_steps"] is not None else \
        state.num_train_epochs == length["epochs"]
    return [] if same else [f"the length of training (a run planned for {state.max_steps} steps, "
                            f"{state.global_step} done; now {length}; the learning-rate schedule of every step "
                            "depends on it)"]


def _tuning_changes(previous: dict, current: dict) -> list[str]:
    changed = [key for key in ("model", "dtype", "fingerprint") if previous.get(key) != current[key]]
    if previous.get("data_sha256", current["data_sha256"]) != current["data_sha256"]:  # older folders lack it
        changed.append("the data's content (its SHA-256)")
    return changed + [f"{key} ({previous['settings'].get(key)!r} -> {value!r})"
                      for key, value in current["settings"].items() if previous["settings"].get(key) != value]


def _data_fingerprint(data: Any) -> str:
    """SHA-256 of the training rows (after sampling): the run's data by content, whatever its source."""
    digest = hashlib.sha256()
    for row in data:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode() + b"\n")
    return digest.hexdigest()
