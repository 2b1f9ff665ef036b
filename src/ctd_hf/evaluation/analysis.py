"""Token-change analysis (CTD paper, section 5.4): which tokens did the contrast change, and how confident was the
original model about the ones it changed?"""

from __future__ import annotations

import numpy as np

BINS = np.linspace(0.0, 1.0, 11)


def token_changes(records: list[dict]) -> dict:
    """Counts over the generated tokens of prediction records holding ``original``, ``max_prob`` and ``chosen``.

    A token is changed when the chosen token is not the original model's argmax in the same context. Returns the
    number of tokens and of changed ones, how many distinct tokens were changed from and to, and the distribution
    (mean, median, 10-bin histogram over [0, 1]) of the original max probability for changed and unchanged tokens.
    """
    original = np.array([t for r in records for t in r.get("original", [])], dtype=np.int64)
    chosen = np.array([t for r in records for t in r.get("chosen", [])], dtype=np.int64)
    max_prob = np.array([p for r in records for p in r.get("max_prob", [])], dtype=np.float64)
    changed = original != chosen

    def distribution(values: np.ndarray) -> dict:
        if values.size == 0:
            return {"count": 0, "mean": None, "median": None, "histogram": [0] * (len(BINS) - 1)}
        return {"count": int(values.size), "mean": float(values.mean()), "median": float(np.median(values)),
                "histogram": np.histogram(values, bins=BINS)[0].tolist()}

    return {
        "tokens": int(original.size),
        "changed": int(changed.sum()),
        "changed_fraction": float(changed.mean()) if original.size else 0.0,
        "distinct_changed_from": int(np.unique(original[changed]).size),
        "distinct_changed_to": int(np.unique(chosen[changed]).size),
        "max_prob_changed": distribution(max_prob[changed]),
        "max_prob_unchanged": distribution(max_prob[~changed]),
    }
