"""SuperNI's official metrics: Rouge-L and exact match, max over references, as natural-instructions scores them.

Mirrors ``eval/automatic/evaluation.py`` of allenai/natural-instructions for the English (default) track:
rouge-score's Rouge-L F-measure with its own tokenizer and the Porter stemmer, and a SQuAD-style exact match
that keeps articles. The English tokenizer keeps only ``[a-z0-9]``, so a reference in another script has no token and
scores Rouge-L 0 whatever the answer; ``tokenizer="xlingual"`` is for such tasks: Unicode words, and each Chinese,
Japanese, Korean or Thai character a token, no stemming (the official cross-lingual track tokenizes with GPT-2's BPE,
which needs the Hub: its numbers are close in spirit, not equal). Self-contained because ``evaluate`` copies this
script into its module cache.
"""

import re
import string

import datasets
import evaluate
from rouge_score import rouge_scorer, tokenizers

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
    tokenizer (str, default "english"): Rouge-L's tokenizer: "english" (the official track's) or "xlingual".
Returns:
    rougeL (float): mean over instances of the best Rouge-L F-measure, x100.
    exact_match (float): share of instances matching some reference after normalisation, x100.
Example:
    >>> from ctd_hf import load_metric
    >>> load_metric("superni").compute(predictions=["Yes."], references=[["yes", "no"]])
    {'rougeL': 100.0, 'exact_match': 100.0}
"""

class UnicodeTokenizer:
    """Lowercased Unicode words (letters and digits of any script); each character of a script written without
    spaces (Han, Hiragana, Katakana, Hangul, Thai) is a token of its own."""

    _TOKENS = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf\u3040-\u30ff\uac00-\ud7af\u0e00-\u0e7f]|[^\W_]+")

    def tokenize(self, text: str) -> list[str]:
        return self._TOKENS.findall(text.lower())


_TOKENIZERS = {"english": tokenizers.DefaultTokenizer(use_stemmer=True), "xlingual": UnicodeTokenizer()}
TOKENIZERS = tuple(_TOKENIZERS)
_SCORERS = {name: rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizer) for name, tokenizer in _TOKENIZERS.items()}
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop ``string.punctuation`` and fold whitespace; unlike SQuAD, articles stay."""
    return " ".join("".join(ch for ch in text.lower() if ch not in _PUNCTUATION).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when both sides normalise to the same string (two blanks match), else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def rouge_l(prediction: str, reference: str, tokenizer: str = "english") -> float:
    """Rouge-L F-measure on the raw strings; 0.0 when either side has no token."""
    return _SCORERS[tokenizer].score(reference, prediction)["rougeL"].fmeasure


def scorable(reference: str, tokenizer: str = "english") -> bool:
    """Whether ``tokenizer`` finds a token in ``reference`` (else its Rouge-L is 0 whatever the answer)."""
    return bool(_TOKENIZERS[tokenizer].tokenize(reference))


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
        self, predictions: list[str], references: list[list[str]], per_instance: bool = False,
        tokenizer: str = "english",
    ) -> dict[str, float] | dict[str, list[float]]:
        if any(not golds for golds in references):
            raise ValueError("every prediction needs at least one reference")
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer is one of {TOKENIZERS}, got {tokenizer!r}")
        em = [max(exact_match(pred, gold) for gold in golds) for pred, golds in zip(predictions, references)]
        rouge = [max(rouge_l(pred, gold, tokenizer) for gold in golds) for pred, golds in zip(predictions, references)]
        if per_instance:
            return {"rougeL": [100.0 * r for r in rouge], "exact_match": [100.0 * e for e in em]}
        return {
            "rougeL": round(100.0 * sum(rouge) / len(predictions), 4),
            "exact_match": round(100.0 * sum(em) / len(predictions), 4),
        }
