"""Answer checking on tricky cases (the one definition of correctness the reward and the metrics share)."""

from __future__ import annotations

import pytest

from perception_rl.rewards.answers import choice_letter, extract_with_source, grade, is_correct

OPTIONS = ["30", "40", "60", "80"]
UNITS = ["6cm", "7cm", "4cm", "5cm"]


@pytest.mark.parametrize(
    "predicted, gold, choices, precision, expected",
    [
        # letters in prose, against a gold letter or the gold option's text
        ("The answer is (D).", "D", OPTIONS, None, True),
        ("the correct option is C", "D", OPTIONS, None, False),
        ("Option D", "80", OPTIONS, None, True),
        ("D. 80", "D", OPTIONS, None, True),
        ("(d)", "D", OPTIONS, None, True),
        ("\\textbf{(D)}", "D", OPTIONS, None, True),
        ("A triangle has three sides", "D", OPTIONS, None, False),  # an article is not option A
        ("E", "A", OPTIONS, None, False),  # beyond the options: compared as text, and wrong
        # option text with units or degree signs names its option
        ("80°", "D", OPTIONS, None, True),
        ("80^{\\circ}", "80", OPTIONS, None, True),
        ("6", "6cm", UNITS, None, True),
        ("6 cm", "A", UNITS, None, True),
        ("7 cm", "A", UNITS, None, False),
        # a one-letter gold without an option list (MathVerse Vision Only: options drawn in the image)
        ("(B)", "B", None, None, True),
        ("The answer is B", "B", None, None, True),
        ("C", "B", None, None, False),
        # fractions and expressions
        ("\\frac{1}{2}", "0.5", None, None, True),
        ("\\dfrac{3}{4}", "0.75", None, None, True),
        ("1/3", "0.5", None, None, False),
        ("2\\sqrt{3}", "\\sqrt{12}", None, None, True),
        # numbers with units, degrees, thousands separators, assignments, percent
        ("5 cm", "5", None, None, True),
        ("12 square units", "12", None, None, True),
        ("5x", "5", None, None, False),  # an expression, not five of unit x
        ("30 degrees", "30", None, None, True),
        ("30^\\circ", "30", None, None, True),
        ("1,000", "1000", None, None, True),
        ("x = 5", "5", None, None, True),
        ("50\\%", "50", None, None, True),
        # the benchmark's precision (MathVista): agree after rounding to it
        ("1.23", "1.2", None, 1, True),
        ("1.26", "1.2", None, 1, False),
        ("\\frac{\\sqrt{3}}{2}", "0.87", None, 2, True),
        ("1.23", "1.2", None, None, False),  # without a precision field, no tolerance
        # lists, element by element and in order
        ("[1, 2, 3]", "[1,2,3]", None, None, True),
        ("1, 2, 3", "[1, 2, 3]", None, None, True),
        ("[1, 3, 2]", "[1, 2, 3]", None, None, False),
        ("[0.5, 2]", "[\\frac{1}{2}, 2]", None, None, True),
        ("(2, 3)", "(2,3)", None, None, True),
        # text
        ("\\text{Yes}", "Yes", ["Yes", "No"], None, True),
        ("\\text{Oct}", "Oct", None, None, True),
    ],
)
def test_is_correct(predicted, gold, choices, precision, expected):
    assert is_correct(predicted, gold, choices, precision) is expected


@pytest.mark.parametrize(
    "response, final_line, expected",
    [
        ("<think>\nx\n</think>\n<answer>\nIt is \\boxed{12}.\n</answer>", False, ("12", "boxed")),
        ("<answer>\n  42 \n</answer>", False, ("42", "answer_block")),
        ("so \\boxed{5}.", False, ("5", "boxed")),
        ("I think it is five.", False, (None, "none")),  # the reward never reads an unmarked line
        ("Let me compute.\nAnswer: 42.", True, ("42", "final_line")),
        ("A long line of reasoning that goes on well past forty characters.\nThe final answer is **7**", True, ("7", "final_line")),
        ("the answer is 3, since the angle is big, and more text that makes the line long", True, ("3", "final_line")),
        ("A long last line of prose that names no answer anywhere in it at all.", True, (None, "none")),
        ("<answer>\\boxed{4</answer>", True, (None, "none")),  # a box cut off inside the block commits to nothing
    ],
)
def test_extraction_sources(response, final_line, expected):
    assert extract_with_source(response, final_line) == expected


def test_choice_letter_bounds_and_prose():
    assert choice_letter("The answer is (C)", 4) == "C"
    assert choice_letter("The answer is (C)", 2) is None
    assert choice_letter("answer: a cat", 4) is None  # lower-case "a" is a word, not a letter


def test_grade_marks_what_the_rules_cannot_settle():
    assert grade("<answer>\\boxed{80}</answer>", "D", OPTIONS).settled  # right
    assert grade("<answer>\\boxed{40}</answer>", "D", OPTIONS).settled  # committed and wrong
    unmarked = grade("so it must be eighty", "80", final_line=True)
    assert unmarked.source == "final_line" and not unmarked.correct and not unmarked.settled
    prose = grade("<answer>\nThe measure of the arc is eighty degrees\n</answer>", "80")
    assert prose.source == "answer_block" and not prose.settled
    assert not grade("", "80").settled


def test_dev_items_oracle_answers_are_right_and_perturbed_ones_wrong(dev_data):
    """On the 200 real dev items: the gold answer (and the gold option's text) grades right; another option or
    the gold number plus one grades wrong."""
    import json

    rows = [json.loads(line) for line in (dev_data / "dev.jsonl").read_text().splitlines()]
    wrong = []
    for row in rows:
        gold, choices = row["answer"], row["choices"]
        boxed = lambda text: f"<think>\nx\n</think>\n<answer>\nSo \\boxed{{{text}}}\n</answer>"
        right = [gold]
        perturbed = []
        if choices and row["answer_type"] == "choice":
            index = ord(gold) - ord("A")
            other = (index + 1) % len(choices)
            right.append(choices[index])
            perturbed += [chr(ord("A") + other), choices[other]] if choices[other] != choices[index] else []
        if row["answer_type"] == "number":
            perturbed.append(str(float(gold) + 1))
        wrong += [(row["id"], r) for r in right if not grade(boxed(r), gold, choices).correct]
        wrong += [(row["id"], p) for p in perturbed if grade(boxed(p), gold, choices).correct]
    assert not wrong
