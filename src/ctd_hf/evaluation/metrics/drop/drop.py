"""DROP's official exact match and F1, as allennlp-reading-comprehension's ``drop_eval.py`` computes them.

Answers are normalised token by token (split on spaces and hyphens: lowercase, punctuation removed unless the
token parses as a float, numbers rewritten as ``str(float(x))``, articles dropped), each span becomes a bag of
tokens, and a multi-span answer is scored by the best one-to-one span alignment (``linear_sum_assignment``); a
span pair whose gold side has numbers but shares none with the prediction scores 0. A question takes the max over
its acceptable answers; answers whose first span is blank are skipped, as in the official script.
Self-contained because ``evaluate`` copies this script into its module cache.
"""

import re
import string

import datasets
import evaluate
import numpy as np
from scipy.optimize import linear_sum_assignment

_CITATION = """\
@inproceedings{dua-etal-2019-drop,
  title = {{DROP}: A Reading Comprehension Benchmark Requiring Discrete Reasoning Over Paragraphs},
  author = {Dua, Dheeru and Wang, Yizhong and Dasigi, Pradeep and Stanovsky, Gabriel and Singh, Sameer and
            Gardner, Matt},
  booktitle = {Proceedings of NAACL},
  year = {2019}
}
"""

_DESCRIPTION = """\
DROP exact match and token F1 (per question rounded to 2 places, as the official script does), each the max over
the acceptable answers, x100 and averaged over questions.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str, or list of list of str): one answer per question, a string or a list of spans.
    references (list of list of str, or list of list of list of str): each question's acceptable answers, every
        answer a string or a list of spans (a multi-span answer). Use one form per call.
    per_instance (bool, default False): return each question's scores (lists, x100) instead of the means, e.g. for
        bootstrap statistics.
Returns:
    exact_match (float): mean over questions of the best exact match, x100.
    f1 (float): mean over questions of the best DROP F1, x100.
Example:
    >>> from ctd_hf import load_metric
    >>> load_metric("drop").compute(predictions=["The 2 touchdowns"], references=[["2 touchdowns", "two"]])
    {'exact_match': 100.0, 'f1': 100.0}
"""

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_SPANS = datasets.Sequence(datasets.Value("string"))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _normalize_token(token: str) -> str:
    """Normalise one space/hyphen-delimited token; may come back empty (an article) or as several words."""
    token = token.lower()
    if not _is_number(token):
        token = "".join(ch for ch in token if ch not in _PUNCTUATION)
    if _is_number(token):
        token = str(float(token))
    return " ".join(_ARTICLES.sub(" ", token).split())


def normalize_answer(text: str) -> str:
    """The official span normalisation: "The 1,000-yard run." -> "1000.0 yard run"."""
    return " ".join(part for part in map(_normalize_token, re.split(" |-", text)) if part)


def _f1(predicted: set[str], gold: set[str]) -> float:
    overlap = len(predicted & gold)
    precision = overlap / len(predicted) if predicted else 1.0
    recall = overlap / len(gold) if gold else 1.0
    return 0.0 if precision == 0.0 and recall == 0.0 else 2 * precision * recall / (precision + recall)


def _numbers_agree(predicted: set[str], gold: set[str]) -> bool:
    """True unless the gold bag holds numbers and the predicted bag shares none of them."""
    gold_numbers = {token for token in gold if _is_number(token)}
    return not gold_numbers or any(token in gold_numbers for token in predicted)


def get_metrics(predicted: list[str], gold: list[str]) -> tuple[float, float]:
    """Exact match and F1 of predicted spans against one gold answer's spans."""
    predicted_spans = [normalize_answer(span) for span in predicted]
    gold_spans = [normalize_answer(span) for span in gold]
    em = float(set(predicted_spans) == set(gold_spans) and len(predicted_spans) == len(gold_spans))
    predicted_bags = [set(span.split()) for span in predicted_spans]
    gold_bags = [set(span.split()) for span in gold_spans]
    scores = np.array([[_f1(p, g) if _numbers_agree(p, g) else 0.0 for p in predicted_bags] for g in gold_bags])
    rows, cols = linear_sum_assignment(scores, maximize=True)
    # One slot per span of the longer side, so unmatched spans (missing or extra) count as 0.
    slots = np.zeros(max(len(gold_bags), len(predicted_bags)))
    slots[rows] = scores[rows, cols]
    return em, float(np.round(np.mean(slots), 2))


def _as_spans(answer: str | list[str]) -> list[str]:
    return [answer] if isinstance(answer, str) else list(answer)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Drop(evaluate.Metric):
    """DROP exact match and F1 as an ``evaluate`` metric."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # evaluate keeps the first option the first example fits; nested references are tried first so
            # that a list of span lists is never read as a list of strings.
            features=[
                datasets.Features({"predictions": prediction, "references": datasets.Sequence(answer)})
                for prediction in (datasets.Value("string"), _SPANS)
                for answer in (_SPANS, datasets.Value("string"))
            ],
            reference_urls=[
                "https://github.com/allenai/allennlp-reading-comprehension/blob/master/allennlp_rc/eval/drop_eval.py"
            ],
        )

    def _compute(
        self, predictions: list[str | list[str]], references: list[list[str | list[str]]], per_instance: bool = False
    ) -> dict[str, float] | dict[str, list[float]]:
        ems, f1s = [], []
        for prediction, answers in zip(predictions, references):
            best_em = best_f1 = 0.0
            for answer in map(_as_spans, answers):
                if answer and answer[0].strip():
                    em, f1 = get_metrics(_as_spans(prediction), answer)
                    best_em, best_f1 = max(best_em, em), max(best_f1, f1)
            ems.append(best_em)
            f1s.append(best_f1)
        if per_instance:
            return {"exact_match": [100.0 * em for em in ems], "f1": [100.0 * f1 for f1 in f1s]}
        return {"exact_match": 100.0 * sum(ems) / len(predictions), "f1": 100.0 * sum(f1s) / len(predictions)}
