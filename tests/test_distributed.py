"""CTDTrainer splits a batch without changing the step: gradient accumulation and 2-process DDP (gloo, CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from ctd_hf.adapter import prefix_embeddings
from ddp_worker import build_trainer

WORKER = Path(__file__).with_name("ddp_worker.py")


def saved_prefix(path: Path) -> torch.Tensor:
    """The ``prompt_embeddings`` that ``trainer.save_model`` wrote to ``path``."""
    return load_file(path / "adapter_model.safetensors")["prompt_embeddings"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, for the rendezvous of ``torch.distributed.run``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_gradient_accumulation_matches_full_batch(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    """One step on 4 examples of different label counts: batch 4 and 2 x 2 accumulated give the same prefix."""
    full = build_trainer(tokenizer, tmp_path / "full", num_examples=4, per_device_train_batch_size=4)
    start = prefix_embeddings(full.model).clone()
    full.train()
    accumulated = build_trainer(
        tokenizer, tmp_path / "accum", num_examples=4, per_device_train_batch_size=2, gradient_accumulation_steps=2
    )
    accumulated.train()
    assert full.state.global_step == accumulated.state.global_step == 1
    expected, actual = prefix_embeddings(full.model), prefix_embeddings(accumulated.model)
    assert not torch.allclose(expected, start, atol=1e-4)
    assert torch.allclose(actual, expected, atol=1e-6)


def test_ddp_matches_single_process(tokenizer_dir: Path, tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    """2 processes x batch 2 (gloo) train the same prefix as 1 process x batch 4, over 2 steps on 8 examples."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")
    steps, examples = 2, 8
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(WORKER),
        "--tokenizer", str(tokenizer_dir), "--output-dir", str(tmp_path / "ddp"), "--num-examples", str(examples),
        "--per-device-batch-size", "2", "--max-steps", str(steps),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    single = build_trainer(tokenizer, tmp_path / "single", examples, per_device_train_batch_size=4, max_steps=steps)
    start = prefix_embeddings(single.model).clone()
    single.train()
    single.save_model()
    expected, actual = saved_prefix(tmp_path / "single"), saved_prefix(tmp_path / "ddp")
    assert not torch.allclose(expected, start, atol=1e-4)
    assert torch.allclose(actual, expected, atol=1e-6)
