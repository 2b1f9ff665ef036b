"""A saved prefix as a transformers ``custom_generate`` repository: ``model.generate(custom_generate=REPO_OR_DIR,
trust_remote_code=True)`` then decodes with CTD.

:func:`export_custom_generate` writes, into a prefix folder (``adapter_config.json`` + ``adapter_model.safetensors`` +
``ctd_hf.json``, as ``ctd-hf tune`` saves it), ``custom_generate/generate.py``, ``custom_generate/requirements.txt``
and the ``custom_generate`` tag and usage in the folder's ``README.md`` (the model card; peft's metadata is kept).
The folder is then both a peft adapter and a ``custom_generate`` repository: publish it as it is, on its own (with
model weights beside ``adapter_config.json``, ``from_pretrained`` would load the folder as a peft adapter of the model,
which transformers does not support for prompt tuning).

transformers runs a string ``custom_generate`` by copying the repository's ``custom_generate/*.py`` into its module
cache and calling their ``generate(model, **generate_arguments)``; files that are not Python stay behind, so
``generate.py`` carries the prefix files itself (base64, in comment lines at its end, with their SHA-256: a file cut
short still compiles and says so) and hands them to :class:`~ctd_hf.CTDContrast`, which checks that they fit the
model. Decoding goes through :func:`ctd_hf.custom_generate` (doubled executor by default).
"""

from __future__ import annotations

import base64
import hashlib
import re
import textwrap
from pathlib import Path

from huggingface_hub import ModelCard
from peft import PeftConfig

from .._version import __version__
from ..adapter import CARD_NAME, AdapterMismatchError, read_card
from ..records import write_text
from ..formula import DEFAULT_STRENGTH
from ..settings import check_value, contrast_strength, renamed_arguments

FOLDER = "custom_generate"
PREFIX_FILES = ("adapter_config.json", "adapter_model.safetensors", CARD_NAME)
_MARK = "# ctd-hf prefix file "  # generate.py's comment lines that carry the prefix files
_CARD_START, _CARD_END = "<!-- ctd-hf export-hub -->", "<!-- /ctd-hf export-hub -->"

_GENERATE = '''"""CTD decoding with this repository's soft prefix (written by `ctd-hf export-hub`, ctd_hf {version}).

    model.generate(**inputs, custom_generate="REPO_OR_FOLDER", trust_remote_code=True, strength={strength})

`strength` is the contrast strength, the paper's beta (0 gives plain decoding), `backend` "doubled" (default) or
"stream". The prefix files are carried in the comment lines at the end of this file (transformers copies only the
Python files of `custom_generate/` into its module cache), each checked against its SHA-256 before use.
"""

import base64
import binascii
import hashlib
import tempfile
from pathlib import Path

from ctd_hf import CTDContrast, custom_generate

STRENGTH = {strength}
PREFIX_SHA256 = {{
{digests}}}
MARK = "{mark}"


def prefix_files():
    """name -> bytes of each prefix file, read from the end of this file; refused when one is cut short or altered."""
    chunks = {{}}
    for line in Path(__file__).read_text().splitlines():
        if line.startswith(MARK):
            name, _, data = line[len(MARK):].partition(" ")
            chunks.setdefault(name, []).append(data)
    files = {{}}
    for name, digest in PREFIX_SHA256.items():
        try:
            files[name] = base64.b64decode("".join(chunks.get(name, [])), validate=True)
        except binascii.Error:
            files[name] = b""
    broken = [name for name, data in files.items() if hashlib.sha256(data).hexdigest() != PREFIX_SHA256[name]]
    if broken:
        raise RuntimeError(f"{{__file__}} is incomplete or altered: its copy of {{', '.join(broken)}} does not match the "
                           "SHA-256 it records. Export the prefix again (`ctd-hf export-hub PREFIX_FOLDER`), or download "
                           "the repository again.")
    return files


def generate(model, strength=STRENGTH, backend="doubled", **generate_arguments):
    """generate() with CTD: z - strength * z~, z~ the logits of `model` with the soft prefix before the prompt."""
    with tempfile.TemporaryDirectory() as folder:
        for name, data in prefix_files().items():
            Path(folder, name).write_bytes(data)
        contrast = CTDContrast(model, folder, strength)  # checks that the prefix was trained for this model
    # The class's generate(): a model loaded with trust_remote_code may have this function as its own generate.
    return type(model).generate(model, custom_generate=custom_generate, contrast=contrast, backend=backend,
                                **generate_arguments)

{files}'''

_USAGE = """{start}
# CTD soft prefix

A soft prefix tuned by contrastive tuning (ctd_hf {version}) for the model `{base_model}`. It is a peft
prompt-tuning adapter, and a transformers `custom_generate` repository that decodes with CTD,
`log_softmax(z - strength * z~)` (`z~`: the model's logits with the prefix before the prompt; `strength` is the
paper's beta, default {strength}):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("BASE_MODEL")  # the model the prefix was tuned for: {base_model}
tokenizer = AutoTokenizer.from_pretrained("BASE_MODEL")
inputs = tokenizer(["Name three primary colours."], return_tensors="pt", padding=True, padding_side="left")
output = model.generate(**inputs, custom_generate="THIS_REPO", trust_remote_code=True, strength={strength},
                        max_new_tokens=64, do_sample=False)
```

`custom_generate/generate.py` needs `pip install ctd_hf` (see `custom_generate/requirements.txt`) and carries a copy
of the prefix files. Greedy decoding, sampling and beam search work; `backend="stream"` runs the prefixed view with
its own KV cache instead of the doubled batch.
{end}"""


@renamed_arguments(beta="strength")
def export_custom_generate(prefix_dir: str | Path, strength: float = DEFAULT_STRENGTH) -> Path:
    """Write the ``custom_generate`` folder and model card into ``prefix_dir``; return the ``custom_generate`` folder.
    ``strength`` is the exported ``generate``'s default contrast strength (the paper's beta; ``beta=`` is its
    deprecated name here).

    Running it again rewrites what it wrote (the prefix may have been retrained) and keeps the rest of the card.
    """
    prefix_dir = Path(prefix_dir)
    strength = check_value("strength", strength, contrast_strength)
    for name in PREFIX_FILES[:2]:
        if not (prefix_dir / name).is_file():
            raise AdapterMismatchError(f"{prefix_dir / name} does not exist: point export-hub at a prefix folder "
                                       "written by `ctd-hf tune` (or CTDTrainer.save_model).")
    config = PeftConfig.from_pretrained(str(prefix_dir))
    if not config.is_prompt_learning:
        raise AdapterMismatchError(f"{prefix_dir} holds a {config.peft_type} adapter; export-hub publishes a soft "
                                   "prefix (a prompt-tuning adapter).")
    carried = [prefix_dir / name for name in PREFIX_FILES if (prefix_dir / name).is_file()]
    digests = "".join(f'    "{path.name}": "{hashlib.sha256(path.read_bytes()).hexdigest()}",\n' for path in carried)
    files = "\n".join(_embedded(path) for path in carried)
    folder = prefix_dir / FOLDER
    folder.mkdir(exist_ok=True)
    write_text(folder / "generate.py", _GENERATE.format(version=__version__, strength=strength, digests=digests, mark=_MARK,
                                                                files=files))
    # Unversioned: transformers compares it with the installed metadata, which an editable checkout may leave stale;
    # an older ctd_hf fails at `from ctd_hf import custom_generate`, naming the missing function.
    write_text(folder / "requirements.txt", "ctd_hf\n")
    _write_card(prefix_dir, strength, read_card(prefix_dir).get("base_model") or "unknown")
    return folder


def _embedded(path: Path) -> str:
    """The comment lines of generate.py that carry one prefix file: its base64, 100 characters a line. Comments, so
    that a file cut short still compiles and its own check names what is missing."""
    return "".join(f"{_MARK}{path.name} {line}\n"
                   for line in textwrap.wrap(base64.b64encode(path.read_bytes()).decode(), 100))


def _write_card(prefix_dir: Path, strength: float, base_model: str) -> None:
    """The model card: the ``custom_generate`` tag and the usage section, kept apart from the rest of the card."""
    path = prefix_dir / "README.md"
    card = ModelCard.load(path) if path.is_file() else ModelCard("---\n---\n")
    tags = card.data.tags or []
    card.data.tags = tags if FOLDER in tags else [*tags, FOLDER]
    usage = _USAGE.format(start=_CARD_START, end=_CARD_END, version=__version__, strength=strength,
                          base_model=base_model)
    previous = re.compile(f"{re.escape(_CARD_START)}.*?{re.escape(_CARD_END)}\n*", re.DOTALL)
    card.text = f"\n{usage}\n\n{previous.sub('', card.text).lstrip()}"
    write_text(path, str(card))
