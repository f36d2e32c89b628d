"""Failure taxonomy of a multiple-choice answer (the paper's analysis of what a merge gets wrong).

``classify(generated, choices, answer)`` returns one of ``CATEGORIES``, by these rules, applied in order
to the generated text after normalisation (lower case, whitespace collapsed, surrounding punctuation and
quotes stripped):

1. **not_known**: the answer declines instead of choosing: it contains a refusal phrase from
   ``REFUSAL_PHRASES`` ("cannot see the image", "i don't know", "not sure", "no image", ...). A refusal wins
   even if a choice is also mentioned ("I cannot see the image, maybe red" is a refusal).
2. A choice is **named**, by letter or by text:
   - letter: the whole answer is a letter ("B", "(B)", "B."), or starts with one followed by ")" / "." /
     ":" ("B) blue", "B. blue"), or contains "(B)" or "answer is B";
   - text: a choice's text occurs as a whole word/phrase; when several occur, the earliest wins (ties go to
     the longer choice, so "light blue" beats "blue").
   Letters are checked before texts. The named choice equals ``answer`` -> **correct**, else **wrong_choice**.
   A letter beyond the number of choices is not a choice (falls through to rule 3).
3. **context_hallucination**: anything else: content that neither answers from the choices nor admits not
   knowing (including empty output).

Example:
    >>> classify("blue", ["red", "blue"], "blue")
    'correct'
    >>> classify("(A) red", ["red", "blue"], "blue")
    'wrong_choice'
    >>> classify("I cannot see the image.", ["red", "blue"], "blue")
    'not_known'
    >>> classify("the sea is big", ["red", "blue"], "blue")
    'context_hallucination'
"""

from __future__ import annotations

import re

CATEGORIES = ("correct", "wrong_choice", "not_known", "context_hallucination")
LETTERS = "ABCDEFGHIJ"
REFUSAL_PHRASES = (
    "cannot see", "can't see", "can not see", "unable to see", "no image", "not see the image",
    "don't know", "do not know", "not sure", "cannot answer", "can't answer", "cannot determine",
    "can't determine", "unable to answer", "unable to determine", "cannot tell", "can't tell", "not possible to",
)


def _norm(text: str) -> str:
    text = text.replace("\u2019", "'").lower()
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" \t.,;:!?\"'`")


def named_choice(generated: str, choices: list[str]) -> int | None:
    """Index of the choice ``generated`` names (rule 2 of the module docstring), or None."""
    raw = re.sub(r"\s+", " ", generated).strip().strip("\"'`")
    n = len(choices)
    m = (re.fullmatch(r"\(?([A-J])\)?[.:]?", raw) or re.match(r"\(?([A-J])[).:](\s|$)", raw)
         or re.search(r"\(([A-J])\)", raw) or re.search(r"answer is:? \(?([A-J])\b", raw, re.IGNORECASE))
    if m and LETTERS.index(m.group(1).upper()) < n:
        return LETTERS.index(m.group(1).upper())
    text = _norm(generated)
    best: tuple[int, int, int] | None = None  # (position, -length, index)
    for i, c in enumerate(choices):
        c_norm = _norm(c)
        if not c_norm:
            continue
        hit = re.search(r"(?<!\w)" + re.escape(c_norm) + r"(?!\w)", text)
        if hit:
            key = (hit.start(), -len(c_norm), i)
            best = key if best is None or key < best else best
    return None if best is None else best[2]


def classify(generated: str, choices: list[str], answer: str) -> str:
    """One of ``CATEGORIES`` for a generated answer to a multiple-choice question (rules in the module docstring).

    Args:
        generated: the model's decoded answer text.
        choices: the option texts, in letter order (A, B, ...).
        answer: the correct option's text (must be one of ``choices``).
    """
    if answer not in choices:
        raise ValueError(f"answer {answer!r} is not one of the choices {choices!r}")
    text = _norm(generated)
    if any(p in text for p in REFUSAL_PHRASES):
        return "not_known"
    idx = named_choice(generated, list(choices))
    if idx is not None:
        return "correct" if choices[idx] == answer else "wrong_choice"
    return "context_hallucination"


def abilities(language: list[float], visual: list[float]) -> tuple[float | None, float | None, float | None]:
    """The paper's scores from per-task accuracies: LA = mean of the language tasks, VA = mean of the visual
    tasks, OA = (LA + VA) / 2 (None where a side has no task).

    >>> abilities([0.5, 1.0], [0.25])
    (0.75, 0.25, 0.5)
    >>> abilities([0.5], [])
    (0.5, None, None)
    """
    LA = sum(language) / len(language) if language else None
    VA = sum(visual) / len(visual) if visual else None
    return LA, VA, (LA + VA) / 2 if LA is not None and VA is not None else None
