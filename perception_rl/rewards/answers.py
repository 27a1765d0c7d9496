"""One definition of a correct answer, shared by the accuracy reward and benchmark evaluation.

Extraction: the last `\\boxed{}` inside the `<answer>` block, else the answer block itself, else the last
`\\boxed{}` anywhere; evaluation may also fall back to the response's final line (`final_line=True`), which
the reward never does (a response that commits to no marked answer earns nothing).

Comparison (`is_correct`): option letters, also in prose ("the answer is (C)"), against a gold letter or
option text; an answer that matches exactly one option's text names that option; then normalised string
equality, numbers (rounded to the benchmark's `precision` where it gives one; units and degree signs
dropped), element-wise lists, and finally math-verify for expressions.
"""

from __future__ import annotations

import math
import re
import string
import threading
from dataclasses import dataclass
from typing import Literal

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_LETTER = re.compile(r"^\(?([A-Z])\)?[.:)]?$")
# "C. 60", "(C) 60", "C: 60": a letter that introduces an option's text.
_LETTER_WITH_TEXT = re.compile(r"^\(?([A-Z])(?:\)|[.:)])\s+\S")
# "the answer is (C)", "correct option: C", "Option C", "choice (B)"; the letter must stand alone.
_LETTER_IN_PROSE = re.compile(
    r"(?:answer|option|choice)\s*(?:is|:|=|would be|should be)?\s*(?:option\s+)?\(?([A-Z])\)?(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°|\s*\bdegrees?\b", re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?", re.IGNORECASE)
_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
# A unit after a number: one or two words after a space ("5 cm", "4 square units"), or two or more letters
# right after it ("6cm"); "5x" is an expression, not five of unit x.
_POWER = r"(?:\s*\^\s*\{?[23]\}?|[²³])?"
_UNIT = rf"\s+[A-Za-zµ]+(?:\s+[A-Za-zµ]+)?{_POWER}|[A-Za-zµ]{{2,}}{_POWER}"
_NUMBER_WITH_UNIT = re.compile(rf"^({_NUMBER.pattern})(?:{_UNIT})?\.?$", re.IGNORECASE)
_ASSIGNMENT = re.compile(r"^[A-Za-z][A-Za-z0-9_{}\\]*\s*=\s*(?=\S)")
_FRACTION = re.compile(r"^(-)?\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$|^([-+]?\d+)\s*/\s*(\d+)$")
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


def choice_letter(answer: str, num_choices: int) -> str | None:
    """The option letter an answer names ("C", "(C)", "C.", "\\text{C}", "C. 60", "the answer is C"), or None."""
    cleaned = _TEXT_WRAPPER.sub(r"\1", answer).strip().strip("$").strip()
    for pattern, text in ((_LETTER, cleaned.upper()), (_LETTER_WITH_TEXT, cleaned)):
        match = pattern.match(text)
        if match and string.ascii_uppercase.index(match.group(1).upper()) < num_choices:
            return match.group(1).upper()
    found = [m.group(1) for m in _LETTER_IN_PROSE.finditer(cleaned) if m.group(1).isupper()]
    if found and string.ascii_uppercase.index(found[-1]) < num_choices:
        return found[-1]
    return None


def _normalise(text: str) -> str:
    text = _TEXT_WRAPPER.sub(r"\1", text)
    text = _DEGREES.sub("", text)
    text = text.replace("$", "").replace("\\%", "").replace("%", "").replace("\\!", "").replace("\\,", "")
    return re.sub(r"\s+", "", text).rstrip(".").lower()


def _number(text: str) -> float | None:
    """A plain number, fraction or number-with-unit ("5 cm", "30°", "x = 2", "1,000", "\\frac{1}{2}"); else None."""
    text = _DEGREES.sub("", _TEXT_WRAPPER.sub(r"\1", text)).replace("$", "").replace("\\%", "").replace("%", "")
    text = _ASSIGNMENT.sub("", text.replace("\\,", "").replace("\\!", "").strip()).strip()
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    fraction = _FRACTION.match(text)
    if fraction:
        sign, num, den, plain_num, plain_den = fraction.groups()
        try:
            value = float(num) / float(den) if num is not None else float(plain_num) / float(plain_den)
        except (ValueError, ZeroDivisionError):
            return None
        return -value if sign else value
    match = _NUMBER_WITH_UNIT.match(text)
    return float(match.group(1)) if match else None


def _list_items(text: str) -> list[str] | None:
    """Top-level comma-separated items of "[1, 2]", "(1, 2)" or "1, 2"; None for a single value."""
    text = text.strip().strip("$").strip()
    if text[:1] + text[-1:] in ("[]", "()", "{}"):
        text = text[1:-1]
    items, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    return [item.strip() for item in items] if len(items) > 1 and all(i.strip() for i in items) else None


def math_equal(predicted: str, gold: str) -> bool:
    """Equivalence by math-verify; False on any parse failure or exception.

    math-verify bounds its work with signal.alarm, which only works in the main thread; elsewhere its
    timeouts are switched off rather than letting it raise.
    """
    from math_verify import parse, verify

    in_main = threading.current_thread() is threading.main_thread()
    timeout = 5 if in_main else None
    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout)
        pred_parsed = parse(f"\\boxed{{{predicted}}}", parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - any failure to parse or verify means "not shown equal"
        return False


def _symbolic_number(text: str) -> float | None:
    """The numeric value of an expression such as "\\frac{\\sqrt{3}}{2}" (math-verify's parse), or None."""
    from math_verify import parse

    try:
        parsed = parse(f"\\boxed{{{text}}}", parsing_timeout=5 if threading.current_thread() is threading.main_thread() else None)
        return float(parsed[0]) if parsed and getattr(parsed[0], "is_number", False) else None
    except Exception:  # noqa: BLE001 - not a number we can evaluate
        return None


def values_equal(predicted: str, gold: str, precision: int | None = None) -> bool:
    """Whether two answers (no options involved) are the same value."""
    if _normalise(predicted) == _normalise(gold):
        return True
    precision = None if precision is None else int(precision)
    predicted_items, gold_items = _list_items(predicted), _list_items(gold)
    if predicted_items is not None and gold_items is not None:
        return len(predicted_items) == len(gold_items) and all(
            values_equal(p, g, precision) for p, g in zip(predicted_items, gold_items)
        )
    p_value, g_value = _number(predicted), _number(gold)
    if precision is not None and g_value is not None:
        p_value = p_value if p_value is not None else _symbolic_number(predicted)
        if p_value is not None:  # the benchmark states its precision: agree after rounding to it
            return math.isclose(round(p_value, precision), round(g_value, precision), abs_tol=10 ** -(precision + 6))
    if p_value is not None and g_value is not None:
        return math.isclose(p_value, g_value, rel_tol=1e-9, abs_tol=1e-12)
    return math_equal(predicted, gold)


def _option_named_by_text(predicted: str, choices: list[str]) -> str | None:
    """The letter of the one option whose text the answer equals (exactly, else as the same number)."""
    exact = [i for i, c in enumerate(choices) if _normalise(c) == _normalise(predicted)]
    if len(exact) == 1:
        return string.ascii_uppercase[exact[0]]
    value = _number(predicted)
    numeric = [i for i, c in enumerate(choices) if value is not None and _number(c) is not None and math.isclose(_number(c), value)]
    return string.ascii_uppercase[numeric[0]] if len(numeric) == 1 else None


def _bare_letter(gold: str) -> str | None:
    gold = gold.strip()
    return gold.upper() if len(gold) == 1 and gold.upper() in string.ascii_uppercase else None


def is_correct(predicted: str | None, gold: str, choices: list[str] | None = None, precision: int | None = None) -> bool:
    """Whether an extracted answer matches the gold answer.

    With `choices`, the gold may be a letter or an option's text; the prediction may be a letter (also in
    prose) or an option's text. Without choices, a one-letter gold (options drawn in the image) is matched by
    the letter the prediction names. `precision`: decimals the benchmark compares numbers to (MathVista).
    """
    if predicted is None or not predicted.strip():
        return False
    if choices:
        gold_letter = choice_letter(gold, len(choices)) if _bare_letter(gold) or _LETTER.match(gold.strip()) else None
        if gold_letter is None:  # gold given as option text: find its letter
            matches = [i for i, c in enumerate(choices) if _normalise(c) == _normalise(gold)]
            gold_letter = string.ascii_uppercase[matches[0]] if matches else None
        if gold_letter is not None:
            predicted_letter = choice_letter(predicted, len(choices)) or _option_named_by_text(predicted, choices)
            if predicted_letter is not None:
                return predicted_letter == gold_letter
            gold = choices[string.ascii_uppercase.index(gold_letter)]  # compare the text of the option
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
