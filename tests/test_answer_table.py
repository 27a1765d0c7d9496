"""A table of answers in the styles of the evaluation benchmarks, each decided right or wrong (`is_correct`).

Rows are (prediction, gold, choices, precision, expected), grouped by benchmark and written from that
benchmark's conventions:

- MathVista: free-form integers and floats (floats carry a `precision`, the decimals compared), multi-choice
  items whose gold answer is the option's text, list answers.
- MathVerse: multi-choice gold letters A-D with the options only in the question text or the image (no
  option list), free-form expressions such as "2\\sqrt{3}".
- MATH-Vision: gold letters A-E with LaTeX option texts, or with the options drawn in the image; free-form
  LaTeX fractions and expressions.
- WeMath: gold letters whose options read like "A. 60°"; models often answer with letter and text.
- Geometry3K: option values with square roots, pi, fractions and degrees, and free-form values.

A hedged or multiple answer ("5 or 6", "at least 6", "A, B, C, D", "approximately 5"), a different quantity
("4\\pi" for 4, "5^2" for 5) and words after a number that are not a unit ("5 x", "7 people") are wrong;
a plain unit after a number ("5 cm", "6cm", "12 m^2", "30°") is not.
"""

from __future__ import annotations

import json

import pytest

from perception_rl.rewards.answers import grade, is_correct

T, F = True, False

# ------------------------------------------------------------------------------------------------ MathVista
MATHVISTA_FRACTIONS = ["3/11", "8/11", "6/11", "3/5"]
MATHVISTA_ANGLES = ["145°", "135°", "120°", "110°"]
YES_NO = ["Yes", "No"]

MATHVISTA = [
    # free-form integers
    ("2", "2", None, None, T),
    ("2.0", "2", None, None, T),
    ("3", "2", None, None, F),
    ("$27$", "27", None, None, T),
    ("27.", "27", None, None, T),
    ("1,000", "1000", None, None, T),
    ("x = 5", "5", None, None, T),
    ("50\\%", "50", None, None, T),
    ("50%", "50", None, None, T),
    ("14 cm", "14", None, None, T),
    ("−3", "-3", None, None, T),  # a Unicode minus sign
    ("7 people", "7", None, None, F),  # a word that is no unit
    ("6 or more", "6", None, None, F),
    ("6 apples or more", "6", None, None, F),
    ("5 or 6", "5", None, None, F),
    ("5 and 6", "5", None, None, F),
    ("at least 6", "6", None, None, F),
    ("more than 5", "5", None, None, F),
    ("approximately 5", "5", None, None, F),
    ("about 5", "5", None, None, F),
    ("\\approx 5", "5", None, None, F),
    ("x \\approx 5", "5", None, None, F),
    ("5 more", "5", None, None, F),  # math-verify's own unit list would drop "more"
    ("5 x", "5", None, None, F),
    ("5x", "5", None, None, F),
    ("5, 6", "5", None, None, F),  # a list against a single value
    # free-form floats with the benchmark's precision
    ("1.45", "1.45", None, 2, T),
    ("1.454", "1.45", None, 2, T),
    ("1.46", "1.45", None, 2, F),
    ("0.6", "0.6", None, 1, T),
    ("0.62", "0.6", None, 1, T),
    ("0.7", "0.6", None, 1, F),
    ("\\frac{3}{5}", "0.6", None, 1, T),
    ("3/5", "0.6", None, 1, T),
    ("\\sqrt{2}", "1.41", None, 2, T),
    ("2\\sqrt{2}", "1.41", None, 2, F),
    ("4\\pi", "12.57", None, 2, T),
    ("\\approx 1.45", "1.45", None, 2, F),
    ("1.45 or 1.46", "1.45", None, 2, F),
    # multi-choice: the gold answer is the option's text
    ("8/11", "8/11", MATHVISTA_FRACTIONS, None, T),
    ("B", "8/11", MATHVISTA_FRACTIONS, None, T),
    ("(B) 8/11", "8/11", MATHVISTA_FRACTIONS, None, T),
    ("\\frac{8}{11}", "8/11", MATHVISTA_FRACTIONS, None, T),
    ("A", "8/11", MATHVISTA_FRACTIONS, None, F),
    ("3/11", "8/11", MATHVISTA_FRACTIONS, None, F),
    ("B or C", "8/11", MATHVISTA_FRACTIONS, None, F),
    ("8/11 or 6/11", "8/11", MATHVISTA_FRACTIONS, None, F),
    ("145", "145°", MATHVISTA_ANGLES, None, T),
    ("145^\\circ", "145°", MATHVISTA_ANGLES, None, T),
    ("A", "145°", MATHVISTA_ANGLES, None, T),
    ("A. 145°", "145°", MATHVISTA_ANGLES, None, T),
    ("135°", "145°", MATHVISTA_ANGLES, None, F),
    ("Yes", "Yes", YES_NO, None, T),
    ("yes", "Yes", YES_NO, None, T),
    ("A", "Yes", YES_NO, None, T),
    ("No", "Yes", YES_NO, None, F),
    ("Yes or No", "Yes", YES_NO, None, F),
    # list answers
    ("[2007, 2008]", "[2007, 2008]", None, None, T),
    ("2007, 2008", "[2007, 2008]", None, None, T),
    ("[2008, 2007]", "[2007, 2008]", None, None, F),
    ("2007", "[2007, 2008]", None, None, F),
]

# ------------------------------------------------------------------------------------------------ MathVerse
MATHVERSE = [
    # multi-choice: the options are in the question text or the image, the gold is a letter
    ("B", "B", None, None, T),
    ("(B)", "B", None, None, T),
    ("B.", "B", None, None, T),
    ("\\text{B}", "B", None, None, T),
    ("The answer is B", "B", None, None, T),
    ("B. 60°", "B", None, None, T),
    ("C", "B", None, None, F),
    ("B or C", "B", None, None, F),
    ("The answer is B or C", "B", None, None, F),
    ("(A) or (B)", "A", None, None, F),
    ("A, B", "A", None, None, F),
    ("A, B, C, D", "A", None, None, F),
    # free-form expressions
    ("2\\sqrt{3}", "2\\sqrt{3}", None, None, T),
    ("\\sqrt{12}", "2\\sqrt{3}", None, None, T),
    ("2√3", "2\\sqrt{3}", None, None, T),
    ("2\\sqrt{3} cm", "2\\sqrt{3}", None, None, T),
    ("3.46", "2\\sqrt{3}", None, None, F),  # no precision given: no rounding either
    ("2\\sqrt{3} \\approx 3.46", "2\\sqrt{3}", None, None, T),  # the exact value, then its decimal
    ("2\\sqrt{3} \\approx 3.5", "2\\sqrt{3}", None, None, T),
    ("2\\sqrt{3} \\approx 4.2", "2\\sqrt{3}", None, None, F),  # the decimal is another value: a hedge
    ("\\sqrt{3}", "3", None, None, F),
    ("\\frac{5}{2}", "2.5", None, None, T),
    ("5/2", "\\frac{5}{2}", None, None, T),
    ("y = 2x + 1", "y=2x+1", None, None, T),
    ("y = 2x - 1", "y=2x+1", None, None, F),
    ("60°", "60", None, None, T),
    ("60", "60°", None, None, T),
    ("120°", "60°", None, None, F),
    ("4\\pi", "4", None, None, F),
    ("4pi", "4", None, None, F),
    ("4 \\pi", "4\\pi", None, None, T),
    ("4π", "4\\pi", None, None, T),
    ("4pi", "4\\pi", None, None, T),
    ("5^2", "5", None, None, F),
    ("25", "5^2", None, None, T),
]

# ---------------------------------------------------------------------------------------------- MATH-Vision
MATHVISION_OPTIONS = ["$\\frac{1}{2}$", "$1$", "$\\frac{3}{2}$", "$2$", "$\\frac{5}{2}$"]

MATHVISION = [
    # gold letter with LaTeX option texts
    ("C", "C", MATHVISION_OPTIONS, None, T),
    ("(C)", "C", MATHVISION_OPTIONS, None, T),
    ("\\frac{3}{2}", "C", MATHVISION_OPTIONS, None, T),
    ("$\\frac{3}{2}$", "C", MATHVISION_OPTIONS, None, T),
    ("1.5", "C", MATHVISION_OPTIONS, None, T),
    ("C. \\frac{3}{2}", "C", MATHVISION_OPTIONS, None, T),
    ("C. 2", "C", MATHVISION_OPTIONS, None, F),  # the letter says C, the text says D
    ("\\frac{1}{2}", "C", MATHVISION_OPTIONS, None, F),
    ("E", "C", MATHVISION_OPTIONS, None, F),
    ("C or D", "C", MATHVISION_OPTIONS, None, F),
    ("C, D", "C", MATHVISION_OPTIONS, None, F),
    # gold letter, options drawn in the image
    ("E", "E", None, None, T),
    ("The correct option is E.", "E", None, None, T),
    ("D", "E", None, None, F),
    ("D or E", "E", None, None, F),
    # free-form fractions and expressions
    ("\\frac{1}{4}", "\\frac{1}{4}", None, None, T),
    ("0.25", "\\frac{1}{4}", None, None, T),
    ("1/4", "\\frac{1}{4}", None, None, T),
    ("\\dfrac{1}{4}", "\\frac{1}{4}", None, None, T),
    ("\\frac{1}{3}", "\\frac{1}{4}", None, None, F),
    ("6", "6", None, None, T),
    ("6 cm^2", "6", None, None, T),
    ("6 \\mathrm{~cm}^{2}", "6", None, None, T),
    ("36", "6", None, None, F),
    ("6^2", "6", None, None, F),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", None, None, T),
    ("2+\\sqrt{2}", "\\sqrt{2}+2", None, None, T),
    ("2-\\sqrt{2}", "\\sqrt{2}+2", None, None, F),
    ("3 or 4", "3", None, None, F),
]

# --------------------------------------------------------------------------------------------------- WeMath
WEMATH_ANGLES = ["60°", "45°", "30°", "90°"]
WEMATH_LENGTHS = ["4 cm", "6 cm", "8 cm", "10 cm"]

WEMATH = [
    ("A. 60°", "A", WEMATH_ANGLES, None, T),
    ("(A) 60°", "A", WEMATH_ANGLES, None, T),
    ("A: 60°", "A", WEMATH_ANGLES, None, T),
    ("A", "A", WEMATH_ANGLES, None, T),
    ("60°", "A", WEMATH_ANGLES, None, T),
    ("60", "A", WEMATH_ANGLES, None, T),
    ("A. 45°", "A", WEMATH_ANGLES, None, F),  # letter and text disagree
    ("B. 45°", "A", WEMATH_ANGLES, None, F),
    ("A or B", "A", WEMATH_ANGLES, None, F),
    ("A, B, C, D", "A", WEMATH_ANGLES, None, F),
    ("60° or 45°", "A", WEMATH_ANGLES, None, F),
    ("A. 60° or 45°", "A", WEMATH_ANGLES, None, F),
    ("B. 6 cm", "B", WEMATH_LENGTHS, None, T),
    ("6cm", "B", WEMATH_LENGTHS, None, T),
    ("6 cm", "B", WEMATH_LENGTHS, None, T),
    ("6", "B", WEMATH_LENGTHS, None, T),
    ("8", "B", WEMATH_LENGTHS, None, F),
    ("6 or 8", "B", WEMATH_LENGTHS, None, F),
    # options only in the question text
    ("C. 8 cm", "C", None, None, T),
    ("C", "C", None, None, T),
    ("D. 10 cm", "C", None, None, F),
]

# ----------------------------------------------------------------------------------------------- Geometry3K
GEO_SQRT = ["3\\sqrt{3}", "6", "6\\sqrt{3}", "12"]

GEOMETRY3K = [
    # gold letter with option values
    ("6\\sqrt{3}", "C", GEO_SQRT, None, T),
    ("6 \\sqrt { 3 }", "C", GEO_SQRT, None, T),
    ("\\sqrt{108}", "C", GEO_SQRT, None, T),
    ("C", "C", GEO_SQRT, None, T),
    ("6", "C", GEO_SQRT, None, F),
    ("10.39", "C", GEO_SQRT, None, F),  # no precision given: an approximation is not the option
    ("6\\sqrt{3} or 12", "C", GEO_SQRT, None, F),
    ("C. 6\\sqrt{3} \\approx 10.39", "C", GEO_SQRT, None, T),
    # free-form values
    ("4\\pi", "4\\pi", None, None, T),
    ("4", "4\\pi", None, None, F),
    ("12.57", "4\\pi", None, None, F),
    ("\\frac{15}{2}", "7.5", None, None, T),
    ("7.5", "\\frac{15}{2}", None, None, T),
    ("15/2", "7.5", None, None, T),
    ("\\frac{2}{3}\\pi", "\\frac{2\\pi}{3}", None, None, T),
    ("60", "60", None, None, T),
    ("60°", "60", None, None, T),
    ("60^{\\circ}", "60", None, None, T),
    ("60 degrees", "60", None, None, T),
    ("30°", "30", None, None, T),
    ("30 degrees", "30", None, None, T),
    ("m\\angle ABC = 60", "60", None, None, T),
    ("x = 12", "12", None, None, T),
    ("12 units", "12", None, None, T),
    ("4 square units", "4", None, None, T),
    ("12 m^2", "12", None, None, T),
    ("12 m²", "12", None, None, T),
    ("12 ft", "12", None, None, T),
    ("24.6 in.", "24.6", None, None, T),
    ("5 cm", "5", None, None, T),
    ("6cm", "6", None, None, T),
    ("12 or 13", "12", None, None, F),
    ("12 x", "12", None, None, F),
    ("8.49", "8.5", None, None, F),
    ("2\\sqrt{13}", "2\\sqrt{13}", None, None, T),
    ("\\sqrt{52}", "2\\sqrt{13}", None, None, T),
    ("13", "2\\sqrt{13}", None, None, F),
    # the gold itself a list: element-wise, in order
    ("2, 3", "2, 3", None, None, T),
    ("(2, 3)", "2, 3", None, None, T),
    ("x = 2, y = 3", "2, 3", None, None, T),
    ("3, 2", "2, 3", None, None, F),
    ("2", "2, 3", None, None, F),
    ("2, 3", "2", None, None, F),
    ("2 or 3", "2, 3", None, None, F),  # lists are written with commas; "or" and "and" are hedges
    ("2 and 3", "2, 3", None, None, F),
    ("2; 3", "2, 3", None, None, T),
    ("\\{3, 2\\}", "\\{2, 3\\}", None, None, T),  # a set has no order
    ("\\{2, 4\\}", "\\{2, 3\\}", None, None, F),
    ("2, 3, 4", "2, 3", None, None, F),
]

TABLE = [
    pytest.param(*row, id=f"{name}-{i}-{row[0]}->{row[1]}")
    for name, rows in [("MathVista", MATHVISTA), ("MathVerse", MATHVERSE), ("MATH-Vision", MATHVISION),
                       ("WeMath", WEMATH), ("Geometry3K", GEOMETRY3K)]
    for i, row in enumerate(rows)
]


def test_the_table_is_large_enough():
    assert len(TABLE) >= 100


@pytest.mark.parametrize("predicted, gold, choices, precision, expected", TABLE)
def test_answer_table(predicted, gold, choices, precision, expected):
    assert is_correct(predicted, gold, choices, precision) is expected


# ------------------------------------------------------------------------------------------ real dev items
def _equivalent_forms(row: dict) -> list[str]:
    """Ways of writing the gold answer of a dev item that must all grade right."""
    gold, choices = row["answer"], row["choices"]
    forms = [gold, f"${gold}$", f"\\text{{{gold}}}"]
    if choices and row["answer_type"] == "choice":
        text = choices[ord(gold) - ord("A")]
        forms += [f"({gold})", f"{gold}.", f"{gold}. {text}", f"({gold}) {text}", text]
    if row["answer_type"] == "number":
        value = float(gold)
        forms += [f"{value:.6f}", f"{gold} cm", f"x = {gold}"]
        if value == int(value) and abs(value) >= 1000:
            forms.append(f"{int(value):,}")
    return forms


def _wrong_forms(row: dict) -> list[str]:
    """Answers to a dev item that must grade wrong: another option, another number, a hedge."""
    gold, choices = row["answer"], row["choices"]
    forms = []
    if choices and row["answer_type"] == "choice":
        index = ord(gold) - ord("A")
        other = (index + 1) % len(choices)
        if choices[other] != choices[index]:
            forms += [chr(ord("A") + other), choices[other], f"{gold} or {chr(ord('A') + other)}"]
        forms.append(", ".join(chr(ord("A") + i) for i in range(len(choices))))
    if row["answer_type"] == "number":
        forms += [str(float(gold) + 1), f"{gold} or {float(gold) + 1:g}", f"at least {gold}"]
        forms += [f"{gold} x"] if float(gold) != 0 else []  # 0 x is 0: math-verify is right there
    return forms


def test_dev_gold_answers_grade_right_in_every_plain_form_and_hedges_wrong(dev_data):
    rows = [json.loads(line) for line in (dev_data / "dev.jsonl").read_text().splitlines()]
    boxed = lambda text: f"<think>\nx\n</think>\n<answer>\nSo \\boxed{{{text}}}\n</answer>"
    check = lambda row, form: is_correct(form, row["answer"], row["choices"])
    not_right = [(r["id"], f) for r in rows for f in _equivalent_forms(r) if not check(r, f)]
    not_wrong = [(r["id"], f) for r in rows for f in _wrong_forms(r) if check(r, f)]
    not_boxed = [r["id"] for r in rows if not grade(boxed(r["answer"]), r["answer"], r["choices"]).correct]
    assert not not_right and not not_wrong and not not_boxed


def test_the_table_is_decided_the_same_in_a_worker_thread():
    """math-verify's timeouts need the main thread; off it they are switched off, and the verdicts stay the same.
    Expressions that could run unbounded without a timeout (a power tower) are refused rather than computed."""
    from concurrent.futures import ThreadPoolExecutor

    rows = [p.values for p in TABLE] + [("9^{9^{9}}", "5", None, None, False), ("10^{10^{10}}", "10", None, 2, False)]
    with ThreadPoolExecutor(2) as pool:
        verdicts = list(pool.map(lambda row: is_correct(*row[:4]), rows))
    assert verdicts == [row[4] for row in rows]
