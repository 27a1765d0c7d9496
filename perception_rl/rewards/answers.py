"""One definition of a correct answer, shared by the accuracy reward and benchmark evaluation.

Extraction: the last `\\boxed{}` inside the `<answer>` block, else the answer block itself, else the last
`\\boxed{}` anywhere; evaluation may also fall back to the response's final line (`final_line=True`), which
the reward never does (a response that commits to no marked answer earns nothing).

Comparison (`is_correct`), in this order:

1. Options. With `choices`, the gold (a letter or an option's text) becomes a letter, and so does the
   prediction: a letter ("C", "(C)", "the answer is C"), a letter with its option's text ("C. 60°"), or the
   text of exactly one option ("60°"). A prediction that names two letters ("A or B", "A, B, C, D") names
   none; one whose letter and text name different options ("A. 45°" when 45° is B) is wrong. Without choices,
   a one-letter gold (options drawn in the image) is matched by the letter the prediction names.
2. Values (`values_equal`), for everything else and for a prediction that names no option:
   a. the same text once LaTeX wrappers, `$`, spacing, case and degree signs are set aside;
   b. a hedge in the prediction that the gold lacks ("or", "and", "at least", "approximately", "\\approx",
      ...) is wrong: an answer must commit to one value, or a policy learns to cover several. An exact value
      followed by its own decimal ("3\\sqrt{2} \\approx 4.24") is one value, not a hedge;
   c. lists ("2, 3", "(2, 3)", "[2, 3]", "2; 3") go element-wise, in order, when the gold is itself a list; a
      list against a single value is wrong, and so is one against a list of another length. Sets
      ("\\{2, 3\\}") have no order and go to math-verify;
   d. the wrapper's own normalisations, which math-verify lacks or does differently: "x = 5" -> "5", one
      trailing unit from an explicit vocabulary ("5 cm", "6cm", "12 m^2", "30°", "4 square units"; "5 x" and
      "7 people" keep their words), currency signs, thousands separators, Unicode √, π and minus;
   e. plain numbers: equal, or equal after rounding to the benchmark's `precision` (MathVista), where the
      prediction may also be an expression math-verify evaluates ("\\frac{\\sqrt{3}}{2}" for 0.87);
   f. math-verify, the authority for expressions ("2\\sqrt{3}" = "\\sqrt{12}", "4\\pi" != "4"), with its own
      unit stripping off: its unit list ("more", "apple", "t", ...) would accept "5 more" for 5.

math-verify bounds its work with `signal.alarm`, which only works in the main thread; elsewhere (a judge's
worker thread, a data loader) its timeouts are switched off, and expressions that could run unbounded
(power towers, huge exponents) are not handed to it at all, so a verdict never depends on the thread.
"""

from __future__ import annotations

import functools
import math
import re
import string
import threading
from dataclasses import dataclass
from typing import Literal

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FINAL_PHRASE = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*(.+)$", re.IGNORECASE)
_FINAL_PHRASE_END = re.compile(r"[.;]\s|,\s+(?=[a-z])|\s+(?:since|because)\s")  # "3, I think, since ..." -> "3"
_FINAL_LINE_MAX_CHARS = 40  # a longer unmarked last line is prose, not an answer

AnswerSource = Literal["answer_block", "boxed", "final_line", "none"]


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces balanced; None if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None  # unbalanced: the response was cut off inside the box


def extract_with_source(response: str, final_line: bool = False) -> tuple[str | None, AnswerSource]:
    """The final answer a response commits to, and where it was found."""
    blocks = _ANSWER_BLOCK.findall(response)
    if blocks:
        block = blocks[-1]
        if "\\boxed{" in block or "\\fbox{" in block:
            boxed = last_boxed(block)  # None when the box was never closed: no committed answer
            return (boxed, "boxed") if boxed is not None else (None, "none")
        return (block.strip(), "answer_block") if block.strip() else (None, "none")
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed, "boxed"
    if final_line:
        answer = _final_line_answer(response)
        if answer:
            return answer, "final_line"
    return None, "none"


def extract_answer(response: str, final_line: bool = False) -> str | None:
    """The final answer a response commits to, or None when it commits to none."""
    return extract_with_source(response, final_line)[0]


def _final_line_answer(response: str) -> str | None:
    """"Answer: X" on the last line, else a short last line, else the last "answer is X" anywhere."""
    lines = [line.strip() for line in response.strip().splitlines() if line.strip()]
    if not lines:
        return None
    phrase = _FINAL_PHRASE.search(lines[-1])
    if phrase:
        return _clean_final(_FINAL_PHRASE_END.split(phrase.group(1))[0])
    if len(lines[-1]) <= _FINAL_LINE_MAX_CHARS:
        return _clean_final(lines[-1])
    for line in reversed(lines[:-1]):
        phrase = _FINAL_PHRASE.search(line)
        if phrase:
            return _clean_final(_FINAL_PHRASE_END.split(phrase.group(1))[0])
    return None


def _clean_final(text: str) -> str | None:
    text = text.strip().strip("*").strip()  # markdown bold around the answer
    text = re.sub(r"^(?:answer|final answer)\s*[:=]\s*", "", text, flags=re.IGNORECASE)
    text = text.strip().rstrip(".").strip().strip("$").strip()
    return text or None


# ---------------------------------------------------------------------------------------------- options

_LETTER = re.compile(r"^\(?([A-Z])\)?[.:)]?$")
# "C. 60", "(C) 60", "C: 60": a letter that introduces an option's text.
_LETTER_WITH_TEXT = re.compile(r"^\(?([A-Z])(?:\)|[.:)])\s+(\S.*)$", re.DOTALL)
# "the answer is (C)", "correct option: C", "Option C", "choice (B)"; the letter must stand alone.
_LETTER_IN_PROSE = re.compile(
    r"(?:answer|option|choice)\s*(?:is|:|=|would be|should be)?\s*(?:option\s+)?\(?([A-Z])\)?(?![A-Za-z0-9])",
    re.IGNORECASE,
)
# What follows a letter to offer a second one: "A or B", "(A) and (C)", "A, B, C, D", "A/B".
_ANOTHER_LETTER = re.compile(r"^\s*(?:,|/|&|(?i:or|and)\b)\s*(?:(?i:option)\s+)?\(?[A-Z]\)?(?![A-Za-z0-9])")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|operatorname|mbox)\s*\{([^{}]*)\}")
_CONTRADICTION = "?"  # a letter and an option text that name different options: never the gold letter


def _letter_form(answer: str) -> str:
    return _TEXT_WRAPPER.sub(r"\1", answer).strip().strip("$").strip()


def choice_letter(answer: str, num_choices: int) -> str | None:
    """The option letter an answer names ("C", "(C)", "C.", "\\text{C}", "C. 60", "the answer is C"), or None.

    An answer that offers a second letter ("A or B", "the answer is C, D") names none.
    """
    cleaned = _letter_form(answer)
    if alone := _LETTER.match(cleaned.upper()):
        letter, rest = alone.group(1), ""
    elif with_text := _LETTER_WITH_TEXT.match(cleaned):
        letter, rest = with_text.groups()
    else:
        # upper-case ASCII only: "a" is an article, and IGNORECASE lets [A-Z] match the Kelvin sign
        found = [m for m in _LETTER_IN_PROSE.finditer(cleaned) if m.group(1) in string.ascii_uppercase]
        if not found:
            return None
        letter, rest = found[-1].group(1), cleaned[found[-1].end():]
    if string.ascii_uppercase.index(letter) >= num_choices or _ANOTHER_LETTER.match(rest):
        return None
    return letter


def _option_named_by_text(predicted: str, choices: list[str]) -> str | None:
    """The letter of the one option whose text the answer equals (exactly, else as the same number)."""
    exact = [i for i, c in enumerate(choices) if _normalise(c) == _normalise(predicted)]
    if len(exact) == 1:
        return string.ascii_uppercase[exact[0]]
    value = _plain_number(_value_form(predicted))
    if value is None:
        return None
    numeric = [i for i, c in enumerate(choices) if _same_number(_plain_number(_value_form(c)), value)]
    return string.ascii_uppercase[numeric[0]] if len(numeric) == 1 else None


def _option_of(predicted: str, choices: list[str]) -> str | None:
    """The letter of the option a prediction names (by letter, else by text).

    _CONTRADICTION when the text after its letter names another option or hedges.
    """
    letter = choice_letter(predicted, len(choices))
    if letter is None:
        return _option_named_by_text(predicted, choices)
    with_text = _LETTER_WITH_TEXT.match(_letter_form(predicted))
    if with_text is None:
        return letter
    text, own_text = _without_decimal_tail(with_text.group(2)), choices[string.ascii_uppercase.index(letter)]
    if _option_named_by_text(text, choices) not in (None, letter) or _hedged(text, own_text):
        return _CONTRADICTION  # "A. 45°" with 45° option B, or "A. 60° or 45°"
    return letter


def _gold_option(gold: str, choices: list[str]) -> str | None:
    """The gold answer as an option letter: a letter itself, or the text of an option; None otherwise."""
    if _LETTER.match(gold.strip().upper()):
        return choice_letter(gold, len(choices))
    matches = [i for i, c in enumerate(choices) if _normalise(c) == _normalise(gold)]
    return string.ascii_uppercase[matches[0]] if matches else None


def _bare_letter(gold: str) -> str | None:
    gold = gold.strip()
    return gold.upper() if len(gold) == 1 and gold.upper() in string.ascii_uppercase else None


# ------------------------------------------------------------------------------------------ normalising

_SPACING = re.compile(r"\\(?:[,;: ]|quad|qquad)|~")
_UNICODE = {"−": "-", "–": "-", "²": "^2", "³": "^3", "π": "\\pi ", "×": "\\times ", "·": "\\cdot "}
_ROOT_SIGN = re.compile(r"√\s*(\d+(?:\.\d+)?|[A-Za-z]|\([^()]*\)|\{[^{}]*\})")
_BARE_PI = re.compile(r"(?<![A-Za-z\\])pi(?![A-Za-z])")  # "4pi" is 4 times pi, not 4*p*i
_CURRENCY = re.compile(r"(?:\\\$|[€£¥])(?=\s*[-+]?\.?\d)")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°|\s*\bdegrees?\b", re.IGNORECASE)

# Words that offer more than one value or no exact one. Prose options ("more than 5") carry them in the
# gold too, and a hedge the gold itself uses is no hedge.
_HEDGE = re.compile(
    r"\b(?:or|and|either|between|at\s+(?:least|most)|up\s+to|(?:more|less|fewer|greater|larger|smaller)\s+than|"
    r"approx(?:imately)?|about|around|roughly|nearly|almost|maybe|perhaps|probably|possibly|likely)\b"
    r"|\\approx|≈|\\sim\b|\\pm\b|±",
    re.IGNORECASE,
)

# An answer's unit: an explicit vocabulary, so that "5 x" or "6 apples or more" are never "five of some unit".
_UNIT_NAMES = (
    "millimeters?|millimetres?|centimeters?|centimetres?|kilometers?|kilometres?|meters?|metres?|"
    "mm|cm|dm|km|inch(?:es)?|in|ft|foot|feet|yards?|yd|miles?|mi|"
    "acres?|hectares?|ml|liters?|litres?|gallons?|gal|cc|"
    "degrees?|deg|radians?|rad|"
    "seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?|yrs?|"
    "mg|kg|grams?|kilograms?|lbs?|pounds?|oz|ounces?|tons?|tonnes?|"
    "dollars?|cents?|euros?|yuan|usd|"
    "km/h|km/hr|kmph|kph|mph|m/s|cm/s|"
    "units?|percent"
)
_ONE_LETTER_UNITS = "m|g|s|h"  # only after a space: "12m" or "5s" may be a product
_SQUARED = r"(?:\s*\^\s*\{?\s*[23]\s*\}?|\s+squared|\s+cubed)?"
_MEASURE = r"(?:(?:square|sq\.?|cubic|cu\.?)\s*)?"
_UNIT_AT_END = re.compile(
    rf"(?:(?:(?<=[\d}})])\s*|\s+){_MEASURE}(?:{_UNIT_NAMES})|\s+{_MEASURE}(?:{_ONE_LETTER_UNITS})){_SQUARED}\.?$"
    rf"|\s*(?:\^\s*\{{?\s*\\circ\s*\}}?|\\circ|\\degree|°)\s*(?:[CF](?![A-Za-z]))?\.?$",
    re.IGNORECASE,
)
_EXACT_THEN_DECIMAL = re.compile(r"^(.+?)\s*(?:\\approx|≈)\s*([-+]?(?:\d+\.\d+|\d+))$")
# "x = 5", "m\angle ABC = 60", "AB = 5", "x_1 = 2": a name, not an expression, on the left.
_ASSIGNMENT = re.compile(r"^\s*[A-Za-z\\](?:_\{?\d+\}?|[A-Za-z\\{}' ])*=(?!=)\s*(?=\S)")
_NUMBER = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?$", re.IGNORECASE)
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:(?:,|\s)\d{3})+(?:\.\d+)?$")
_FRACTION = re.compile(r"^(-)?\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$|^([-+]?\d+)\s*/\s*(\d+)$")


def _clean(text: str) -> str:
    """Surface forms set aside: LaTeX text wrappers and spacing, `$`, percent signs, Unicode math signs."""
    text = _TEXT_WRAPPER.sub(r" \1 ", text)
    text = _CURRENCY.sub("", text).replace("$", "").replace("\\%", "").replace("%", "").replace("\\!", "")
    text = _SPACING.sub(" ", text).replace("{,}", ",").replace("\\left", "").replace("\\right", "")
    for sign, latex in _UNICODE.items():
        text = text.replace(sign, latex)
    return _BARE_PI.sub(r"\\pi ", _ROOT_SIGN.sub(r"\\sqrt{\1}", text)).strip()


def _normalise(text: str) -> str:
    """The text for string equality: cleaned, without degree signs, spaces, a final period or case."""
    return re.sub(r"\s+", "", _DEGREES.sub("", _clean(text))).rstrip(".").lower()


def _value_form(text: str) -> str:
    """The value an answer states: cleaned, without "x =" before it or a unit after it."""
    text = _ASSIGNMENT.sub("", _clean(text)).strip()
    return _UNIT_AT_END.sub("", text).strip() or text


def _hedged(predicted: str, gold: str) -> bool:
    """Whether the prediction uses a hedge word or sign ("or", "at least", "\\approx") that the gold does not."""
    found = lambda text: {re.sub(r"\s+", " ", m.group(0).lower()) for m in _HEDGE.finditer(_clean(text))}
    return bool(found(predicted) - found(gold))


def _without_decimal_tail(text: str) -> str:
    """"3\\sqrt{2} \\approx 4.24" -> "3\\sqrt{2}": an exact value and its decimal are one answer, if they agree.

    Anything else with "\\approx" ("x \\approx 5", "5 \\approx 6") is left as it is, for `_hedged` to refuse.
    """
    match = _EXACT_THEN_DECIMAL.match(_clean(text))
    if not match:
        return text
    exact, decimal = match.groups()
    value = _plain_number(exact)
    value = value if value is not None else _symbolic_number(exact)
    places = len(decimal.partition(".")[2])
    # within one unit of the decimal's last place: rounded or truncated
    agree = value is not None and abs(value - float(decimal)) <= 10**-places * (1 + 1e-9)
    return exact if agree else text


def _plain_number(text: str) -> float | None:
    """A number, a thousands-separated number or a fraction of two integers ("1,000", "\\frac{1}{2}")."""
    text = text.strip()
    if _THOUSANDS.match(text):
        text = re.sub(r"[,\s]", "", text)
    fraction = _FRACTION.match(text)
    if fraction:
        sign, num, den, plain_num, plain_den = fraction.groups()
        try:
            value = float(num) / float(den) if num is not None else float(plain_num) / float(plain_den)
        except (ValueError, ZeroDivisionError):
            return None
        return -value if sign else value
    return float(text) if _NUMBER.match(text) else None


def _same_number(a: float | None, b: float | None, precision: int | None = None) -> bool:
    if a is None or b is None:
        return False
    if precision is None:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return math.isclose(round(a, precision), round(b, precision), abs_tol=10 ** -(precision + 6))


def _is_set(text: str) -> bool:
    """Whether the answer is written as a set, "\\{1, 2\\}"."""
    text = _clean(text)
    return text.startswith("\\{") and text.endswith("\\}")


def _list_items(text: str) -> list[str] | None:
    """Top-level items of "[1, 2]", "(1, 2)", "1, 2" or "1; 2"; None for a single value."""
    text = _clean(text)
    if _THOUSANDS.match(text):  # "1,000" is one number
        return None
    if text[:1] + text[-1:] in ("[]", "()"):
        text = text[1:-1]
    separator = "," if "," in text else ";"
    items, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == separator and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    return [item.strip() for item in items] if len(items) > 1 and all(i.strip() for i in items) else None


# ------------------------------------------------------------------------------------------ math-verify

_MAX_VERIFY_CHARS = 200  # longer is prose, not an expression
# Power towers and huge exponents or factorials: sympy may compute them for minutes, past any alarm.
_UNBOUNDED = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\d+\s*\^|\^\s*\{?\s*-?\d{5,}|\d{6,}\s*!")


@functools.cache
def _parse_config() -> tuple:
    """LaTeX extraction with math-verify's unit stripping off: units are this module's vocabulary."""
    from math_verify import LatexExtractionConfig, LatexNormalizationConfig

    normalisation = LatexNormalizationConfig(basic_latex=True, units=False, malformed_operators=True, nits=True,
                                             boxed="all", equations=False)
    return (LatexExtractionConfig(normalization_config=normalisation),)


def _timeout() -> int | None:
    # signal.alarm works only in the main thread; elsewhere math-verify would raise, so run it unbounded there
    return 5 if threading.current_thread() is threading.main_thread() else None


def _parse(text: str) -> list:
    """math-verify's reading of `text` ([] when it cannot read it, or when reading it could run unbounded)."""
    from math_verify import parse

    if len(text) > _MAX_VERIFY_CHARS or _UNBOUNDED.search(text):
        return []
    try:
        return parse(f"\\boxed{{{text}}}", _parse_config(), parsing_timeout=_timeout())
    except Exception:  # noqa: BLE001 - anything unreadable is simply not an expression
        return []


def math_equal(predicted: str, gold: str) -> bool:
    """Equivalence by math-verify; False on any parse failure or exception."""
    from math_verify import verify

    gold_parsed, pred_parsed = _parse(gold), _parse(predicted)
    if not gold_parsed or not pred_parsed:
        return False
    try:
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=_timeout()))
    except Exception:  # noqa: BLE001 - any failure to verify means "not shown equal"
        return False


def _symbolic_number(text: str) -> float | None:
    """The numeric value of an expression such as "\\frac{\\sqrt{3}}{2}" (math-verify's parse), or None."""
    parsed = _parse(text)
    try:
        return float(parsed[0]) if parsed and getattr(parsed[0], "is_number", False) else None
    except Exception:  # noqa: BLE001 - not a number we can evaluate
        return None


# ------------------------------------------------------------------------------------------- comparing


def values_equal(predicted: str, gold: str, precision: int | None = None) -> bool:
    """Whether two answers (no options involved) state the same value; see the module docstring, step 2."""
    if _normalise(predicted) == _normalise(gold):
        return True
    predicted = _without_decimal_tail(predicted)
    if _hedged(predicted, gold):
        return False
    precision = None if precision is None else int(precision)
    if not (_is_set(predicted) or _is_set(gold)):  # a set has no order: math-verify compares sets
        predicted_items, gold_items = _list_items(predicted), _list_items(gold)
        if predicted_items is not None or gold_items is not None:
            return _lists_equal(predicted_items, gold_items, precision)
    return _single_values_equal(_value_form(predicted), _value_form(gold), precision)


def _lists_equal(predicted: list[str] | None, gold: list[str] | None, precision: int | None) -> bool:
    """Element-wise and in order; a list against a single value (either way round) is wrong."""
    if predicted is None or gold is None or len(predicted) != len(gold):
        return False
    return all(values_equal(p, g, precision) for p, g in zip(predicted, gold))


def _single_values_equal(predicted: str, gold: str, precision: int | None) -> bool:
    """Two value forms (`_value_form`): the same text, the same number (to `precision`), or math-verify's equal."""
    if _normalise(predicted) == _normalise(gold):
        return True
    p_value, g_value = _plain_number(predicted), _plain_number(gold)
    if precision is not None and g_value is not None:
        p_value = p_value if p_value is not None else _symbolic_number(predicted)
        if p_value is not None:  # the benchmark states its precision: agree after rounding to it
            return _same_number(p_value, g_value, precision)
    if p_value is not None and g_value is not None:
        return _same_number(p_value, g_value)
    return math_equal(predicted, gold)


def is_correct(
    predicted: str | None, gold: str, choices: list[str] | None = None, precision: int | None = None
) -> bool:
    """Whether an extracted answer matches the gold answer (the order of checks: the module docstring).

    With `choices`, the gold may be a letter or an option's text; the prediction may be a letter (also in
    prose), a letter with its option's text, or an option's text. Without choices, a one-letter gold (options
    drawn in the image) is matched by the letter the prediction names. `precision`: decimals the benchmark
    compares numbers to (MathVista).
    """
    if predicted is None or not predicted.strip():
        return False
    if choices:
        gold_letter = _gold_option(gold, choices)
        if gold_letter is not None:
            named = _option_of(predicted, choices)
            if named is not None:
                return named == gold_letter
            gold = choices[string.ascii_uppercase.index(gold_letter)]  # compare with the text of the option
    elif _bare_letter(gold) is not None:
        named = choice_letter(predicted, len(string.ascii_uppercase))
        if named is not None:
            return named == _bare_letter(gold)
    return values_equal(predicted, gold, precision)


@dataclass(frozen=True)
class Grade:
    """One response checked against its gold answer.

    `settled` is False when the rules cannot be trusted to have the last word: the response was judged wrong
    but committed to no marked answer (nothing found, or only an unmarked final line), or its answer block
    holds prose rather than a value. An LLM second stage may look at exactly these.
    """

    extracted: str | None
    source: AnswerSource
    correct: bool

    @property
    def settled(self) -> bool:
        if self.correct:
            return True
        if self.source in ("none", "final_line"):
            return False
        return not (self.source == "answer_block" and len((self.extracted or "").split()) > 3)


def grade(
    response: str, gold: str, choices: list[str] | None = None, precision: int | None = None, final_line: bool = False
) -> Grade:
    """Extract the answer of `response` and check it (the accuracy reward and the benchmark metrics both use this)."""
    extracted, source = extract_with_source(response, final_line)
    return Grade(extracted, source, is_correct(extracted, gold, choices, precision))
