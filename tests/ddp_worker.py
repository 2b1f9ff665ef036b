"""Tune a soft prefix on the tiny test model and save it: the worker of ``test_distributed.py``.

Run alone or under ``python -m torch.distributed.run``; pytest does not collect it (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import datasets
import transformers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import SFT_SAMPLE, build_model  # noqa: E402

from ctd_hf import CTDConfig, CTDTrainer, RightPaddingCollator, add_soft_prefix  # noqa: E402
from ctd_hf.training.data import load_sft_data, tokenize_sft  # noqa: E402
from ctd_hf.models import ensure_pad_token  # noqa: E402

MAX_LENGTH = 96
SEED = 0


def sft_examples(tokenizer: PreTrainedTokenizerBase, count: int) -> datasets.Dataset:
    """The first ``count`` SFT examples that fit ``MAX_LENGTH`` uncut: their lengths and label counts differ."""
    tokenized = tokenize_sft(load_sft_data(SFT_SAMPLE), tokenizer, max_length=MAX_LENGTH)
    return tokenized.filter(lambda example: len(example["input_ids"]) < MAX_LENGTH).select(range(count))


def build_trainer(
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | Path,
    num_examples: int,
    per_device_train_batch_size: int,
    gradient_accumulation_steps: int = 1,
    max_steps: int = 1,
) -> CTDTrainer:
    """A seeded CTDTrainer on the tiny model with plain SGD, so that a wrongly scaled gradient changes the prefix.

    Examples are taken in order, so step ``k`` trains on the same global batch whatever the batch is split into.
    """
    ensure_pad_token(tokenizer)
    transformers.set_seed(SEED)
    model = add_soft_prefix(build_model(len(tokenizer)), num_virtual_tokens=8)
    args = CTDConfig(
        str(output_dir),
        per_device_train_batch_size=per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        max_steps=max_steps,
        optim="sgd",
        learning_rate=1.0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,  # clipping would rescale the gradient and hide a wrong loss scale
        train_sampling_strategy="sequential",
        seed=SEED,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    return CTDTrainer(
        model=model,
        args=args,
        train_dataset=sft_examples(tokenizer, num_examples),
        data_collator=RightPaddingCollator(tokenizer.pad_token_id),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokenizer", required=True, help="Folder of the tiny tokenizer (conftest's build_tokenizer).")
    parser.add_argument("--output-dir", required=True, help="Where trainer.save_model writes the prefix.")
    parser.add_argument("--num-examples", type=int, required=True)
    parser.add_argument("--per-device-batch-size", type=int, required=True)
    parser.add_argument("--max-steps", type=int, required=True)
    cli = parser.parse_args()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(cli.tokenizer)
    trainer = build_trainer(
        tokenizer, cli.output_dir, cli.num_examples, cli.per_device_batch_size, max_steps=cli.max_steps
    )
    trainer.train()
    trainer.save_model(cli.output_dir)


if __name__ == "__main__":
    main()
