"""SuperNI's official metrics: Rouge-L and exact match, max over references, as natural-instructions scores them.

Mirrors ``eval/automatic/evaluation.py`` of allenai/natural-instructions for the English (default) track:
rouge-score's Rouge-L F-measure with its own tokenizer and the Porter stemmer, and a SQuAD-style exact match
that keeps articles. Self-contained because ``evaluate`` copies this script into its module cache.
"""

import string

import datasets
import evaluate
from rouge_score import rouge_scorer

_CITATION = """\
@inproceedings{wang-etal-2022-super,
  title = {Super-NaturalInstructions: Generalization via Declarative Instructions on 1600+ NLP Tasks},
  author = {Wang, Yizhong and Mishra, Swaroop and Alipoormolabashi, Pegah and others},
  booktitle = {Proceedings of EMNLP},
  year = {2022}
}
"""

_DESCRIPTION = """\
SuperNI's Rouge-L (rouge-score, stemmed) and exact match (lowercased, punctuation removed, whitespace folded,
articles kept), each the max over an instance's references, x100 and averaged over instances, rounded to 4 places.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): one generated answer per instance.
    references (list of list of str): the acceptable answers of each instance (at least one).
    per_instance (bool, default False): return each instance's scores (lists, x100, unrounded) instead of the means,
        e.g. for bootstrap statistics.
Returns:
    rougeL (float): mean over instances of the best Rouge-L F-measure, x100.
    exact_match (float): share of instances matching some reference after normalisation, x100.
Example:
    >>> from ctd_hf import load_metric
    >>> load_metric("superni").compute(predictions=["Yes."], references=[["yes", "no"]])
    {'rougeL': 100.0, 'exact_match': 100.0}
"""

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop ``string.punctuation`` and fold whitespace; unlike SQuAD, articles stay."""
    return " ".join("".join(ch for ch in text.lower() if ch not in _PUNCTUATION).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both sides normalise to the same string (two blanks match), else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def rouge_l(prediction: str, reference: str) -> float:
    """Rouge-L F-measure on the raw strings; 0.0 when either side has no token."""
    return _SCORER.score(reference, prediction)["rougeL"].fmeasure


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SuperNI(evaluate.Metric):
    """SuperNI Rouge-L and exact match as an ``evaluate`` metric."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            reference_urls=["https://github.com/allenai/natural-instructions/blob/master/eval/automatic/evaluation.py"],
        )

    def _compute(
        self, predictions: list[str], references: list[list[str]], per_instance: bool = False
    ) -> dict[str, float] | dict[str, list[float]]:
        if any(not golds for golds in references):
            raise ValueError("every prediction needs at least one reference")
        em = [max(exact_match(pred, gold) for gold in golds) for pred, golds in zip(predictions, references)]
        rouge = [max(rouge_l(pred, gold) for gold in golds) for pred, golds in zip(predictions, references)]
        if per_instance:
            return {"rougeL": [100.0 * r for r in rouge], "exact_match": [100.0 * e for e in em]}
        return {
            "rougeL": round(100.0 * sum(rouge) / len(predictions), 4),
            "exact_match": round(100.0 * sum(em) / len(predictions), 4),
        }
