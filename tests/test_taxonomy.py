"""The failure classifier on hand-written answers, one case per rule of lfm.taxonomy's docstring."""

import pytest

from lfm.taxonomy import CATEGORIES, classify, named_choice

CHOICES = ["red", "light blue", "blue", "green"]


@pytest.mark.parametrize("generated, expected", [
    # rule 1: refusals, whatever else they say
    ("I cannot see the image.", "not_known"),
    ("i can't see the image", "not_known"),
    ("I don't know.", "not_known"),
    ("I do not know the answer", "not_known"),
    ("Sorry, there is no image.", "not_known"),
    ("I cannot see the image, maybe red", "not_known"),
    ("I\u2019m not sure", "not_known"),
    # rule 2: a choice named by its text
    ("blue", "correct"),
    ("Blue.", "correct"),
    ("  the shape is blue ", "correct"),
    ("red", "wrong_choice"),
    ("light blue", "wrong_choice"),        # longer choice wins over its substring "blue"
    ("green or blue", "wrong_choice"),     # earliest mention wins
    # rule 2: a choice named by its letter
    ("C", "correct"),
    ("(C)", "correct"),
    ("C.", "correct"),
    ("C) blue", "correct"),
    ("The answer is C", "correct"),
    ("(A) red", "wrong_choice"),
    ("A", "wrong_choice"),
    ("(B)", "wrong_choice"),
    # rule 3: anything else
    ("the sea is big", "context_hallucination"),
    ("", "context_hallucination"),
    ("E", "context_hallucination"),         # a letter with no choice behind it
    ("reddish", "context_hallucination"),   # not a whole-word match
    ("7", "context_hallucination"),
])
def test_classify(generated, expected):
    assert classify(generated, CHOICES, "blue") == expected


def test_categories_cover_every_output():
    for g in ["", "x", "B", "I do not know", "blue"]:
        assert classify(g, CHOICES, "blue") in CATEGORIES


def test_named_choice_letter_before_text():
    # "(A) blue": the letter names red even though the text says blue; letters are checked first
    assert named_choice("(A) blue", CHOICES) == 0
    assert named_choice("nothing here", CHOICES) is None


def test_answer_must_be_a_choice():
    with pytest.raises(ValueError, match="not one of the choices"):
        classify("red", CHOICES, "purple")
