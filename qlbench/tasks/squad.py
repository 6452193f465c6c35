"""SQuAD v1.1's answer normalization and scores, as in the official evaluate-v1.1.py: exact match and token F1,
each taken as the best over a question's reference answers."""

from __future__ import annotations

import collections
import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def best_over_answers(metric, prediction: str, answers) -> float | None:
    """SQuAD scores a prediction against each reference answer and keeps the best; None without answers."""
    answers = [a for a in answers if a is not None]
    if not answers:
        return None
    return max(metric(prediction, a) for a in answers)
