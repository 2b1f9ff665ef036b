"""Recording the original model's prediction at every step of a contrastive ``generate()`` (token-change analysis,
CTD paper section 5.4): was the token the contrast chose the one the model alone would have picked?"""

from __future__ import annotations

import torch


class OriginalPredictions:
    """Per step, the original model's argmax and max probability for every row of ``generate()``.

    Pass one as ``record=`` to either executor; after ``generate()``, :meth:`rows` lines the steps up with the chosen
    tokens. Rows are ``generate()``'s rows, which beam search reorders, so recording supports greedy decoding and
    sampling; the executors refuse it under beam search.
    """

    def __init__(self) -> None:
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, scores: torch.Tensor) -> None:
        """Record one step from the original scores ``z`` (before the contrast)."""
        argmax, max_prob = original_prediction(scores)
        self.steps.append((argmax.cpu(), max_prob.cpu()))

    def add_rows(self, rows: list[list[tuple[int, float]]]) -> None:
        """Record the steps of an executor whose rows do not step together (vLLM's): per row, the (argmax, max
        probability) of each of its steps; a row that stopped early is filled with zeros, which :meth:`rows` never
        reads (it stops at the row's end-of-sequence token)."""
        for step in range(max(map(len, rows), default=0)):
            cells = [row[step] if step < len(row) else (0, 0.0) for row in rows]
            self.steps.append((torch.tensor([argmax for argmax, _ in cells]),
                               torch.tensor([max_prob for _, max_prob in cells])))

    def rows(self, chosen: torch.Tensor, eos_token_ids: set[int]) -> list[dict[str, list]]:
        """Per row of ``chosen`` (the generated tokens, ``(rows, steps)``): ``original`` (argmax), ``max_prob`` and
        ``chosen`` token of every step up to and including the row's first end-of-sequence token."""
        records = []
        for row in range(chosen.shape[0]):
            record: dict[str, list] = {"original": [], "max_prob": [], "chosen": []}
            for step, (argmax, max_prob) in enumerate(self.steps):
                token = int(chosen[row, step])
                record["original"].append(int(argmax[row]))
                record["max_prob"].append(round(float(max_prob[row]), 6))
                record["chosen"].append(token)
                if token in eos_token_ids:
                    break
            records.append(record)
        return records


def original_prediction(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The original model's prediction from its scores ``z`` (``(..., vocab)``): the argmax token and its
    probability, what the token-change analysis compares the contrasted choice with."""
    max_prob, argmax = scores.float().softmax(dim=-1).max(dim=-1)
    return argmax, max_prob
