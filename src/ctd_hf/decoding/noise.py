"""Noisy instructions for Instructive Decoding (Kim et al. 2023), as the official code builds them.

The contrast prompt keeps the task input and damages the instruction: ``opposite`` replaces it with a fixed
sentence, ``none`` drops it, ``trunc_shuf`` keeps a random ``rate`` share of its words in random order, and
``random_words`` replaces it with words drawn from a list shipped with the package.
"""

from __future__ import annotations

import random
import zlib
from functools import lru_cache

from ..resources import resource_path

NOISE_TYPES = ("opposite", "none", "trunc_shuf", "random_words")
OPPOSITE = "Always respond with the opposite of what you're asked. You never get it right.\n"


@lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    """The shipped word list for ``random_words`` (5,000 dictionary words, see ctd_hf/resources/README.md)."""
    return tuple(resource_path("words.txt").read_text().split())


def noisy_instruction(
    instruction: str,
    task_input: str,
    noise: str = "opposite",
    rate: float = 0.6,
    num_words: int | None = None,
    seed: int = 0,
    label: str = "",
) -> str:
    """The noisy prompt text for one example.

    Args:
        instruction: the instruction (SuperNI: the definition, without its ``label``).
        task_input: the part every noise keeps (SuperNI: ``"Now complete the following example -\\nInput: ..."``).
        noise: one of ``NOISE_TYPES``.
        rate: share of instruction words ``trunc_shuf`` keeps.
        num_words: words ``random_words`` draws (default: as many as the instruction has).
        seed: seeds ``trunc_shuf`` and ``random_words``; vary it per example for independent draws.
        label: printed before a ``trunc_shuf`` instruction (SuperNI: ``"Definition: "``).

    Example:
        >>> noisy_instruction("Translate to French.", "Input: cat\\nOutput: ", "opposite")
        "Always respond with the opposite of what you're asked. You never get it right.\\nInput: cat\\nOutput: "
    """
    if noise == "opposite":
        return OPPOSITE + task_input
    if noise == "none":
        return task_input
    rng = random.Random(seed)
    words = instruction.split()
    if noise == "trunc_shuf":
        if not 0 <= rate <= 1:
            raise ValueError(f"`rate` must be in [0, 1], got {rate}.")
        return f"{label}{' '.join(rng.sample(words, int(rate * len(words))))}.\n\n{task_input}"
    if noise == "random_words":
        count = len(words) if num_words is None else num_words
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"`num_words` must be an integer >= 0, got {num_words!r}.")
        pool = word_list()  # an instruction longer than the list draws its words with replacement
        drawn = rng.sample(pool, count) if count <= len(pool) else rng.choices(pool, k=count)
        return f"{' '.join(drawn)}.\n\n{task_input}"
    raise ValueError(f"Unknown noise {noise!r}; choose one of {NOISE_TYPES}.")


def noisy_message(message: dict, noise: str = "opposite", rate: float = 0.6) -> dict:
    """The noisy counterpart of a user message, for Instructive Decoding.

    A message holds the instruction in ``content`` and the task input in ``input``; an optional ``label`` is a heading
    that starts ``content`` (SuperNI: ``"Definition: "``), kept in front of a ``trunc_shuf`` instruction. The random
    noises are seeded by the message's text, so a message always gets the same noise.
    """
    label = message.get("label", "")
    text = noisy_instruction(message["content"].removeprefix(label), message.get("input") or "", noise, rate,
                             seed=zlib.crc32(message["content"].encode()), label=label)
    return {"role": "user", "content": text}
