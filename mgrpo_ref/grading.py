"""Grading answers: exact match after normalisation, and a lenient score beside it.

docs/paper.md section 2: correctness is exact match after normalising case, whitespace and
punctuation. A lenient score (the gold answer contained in the output) may be logged
beside it, never instead of it.
"""

from __future__ import annotations

import re
import string

_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Lower case, punctuation to spaces, whitespace collapsed: " Velunor-Labs. " -> "velunor labs"."""
    return " ".join(text.lower().translate(_PUNCT).split())


def exact_match(prediction: str | None, gold: str) -> bool:
    """The correctness used for rewards and accuracy."""
    return prediction is not None and normalize_answer(prediction) == normalize_answer(gold)


def lenient_match(prediction: str | None, gold: str) -> bool:
    """Gold contained in the prediction, word-aligned (logged only, never rewarded)."""
    if prediction is None:
        return False
    return re.search(rf"(^| ){re.escape(normalize_answer(gold))}( |$)", normalize_answer(prediction)) is not None
