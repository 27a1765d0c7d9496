"""One definition of a correct answer, shared by the accuracy reward and benchmark evaluation.

Extraction: the last `\\boxed{}` inside the `<answer>` block, else the answer block itself, else the last
`\\boxed{}` anywhere. Comparison: multiple-choice letters (against a gold letter or option text), then
normalised string equality, then math-verify (symbolic/numeric equivalence).
"""

from __future__ import annotations

import re
import string
import threading

_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_LETTER = re.compile(r"^\(?([A-Z])\)?[.:)]?$")


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


def extract_answer(response: str) -> str | None:
    """The final answer a response commits to, or None when it commits to none."""
    blocks = _ANSWER_BLOCK.findall(response)
    if blocks:
        block = blocks[-1]
        if "\\boxed{" in block or "\\fbox{" in block:
            return last_boxed(block)  # None when the box was never closed: no committed answer
        return block.strip() or None
    return last_boxed(response)


def choice_letter(answer: str, num_choices: int) -> str | None:
    """The option letter an answer names ("C", "(C)", "C.", "\\text{C}"), or None."""
    cleaned = re.sub(r"\\text\{(.*?)\}", r"\1", answer).strip().upper()
    match = _LETTER.match(cleaned)
    if match and string.ascii_uppercase.index(match.group(1)) < num_choices:
        return match.group(1)
    return None


def _normalise(text: str) -> str:
    text = re.sub(r"\\text\{(.*?)\}", r"\1", text)
    text = text.replace("$", "").replace("\\%", "").replace("%", "").replace("^\\circ", "").replace("°", "")
    return re.sub(r"\s+", "", text).rstrip(".").lower()


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


def is_correct(predicted: str | None, gold: str, choices: list[str] | None = None) -> bool:
    """Whether an extracted answer matches the gold answer (a letter when `choices` are given, or option text)."""
    if predicted is None or not predicted.strip():
        return False
    if choices:
        gold_letter = choice_letter(gold, len(choices))
        if gold_letter is None:  # gold given as option text: find its letter
            matches = [i for i, c in enumerate(choices) if _normalise(c) == _normalise(gold)]
            gold_letter = string.ascii_uppercase[matches[0]] if matches else None
        if gold_letter is not None:
            predicted_letter = choice_letter(predicted, len(choices))
            if predicted_letter is not None:
                return predicted_letter == gold_letter
            gold = choices[string.ascii_uppercase.index(gold_letter)]  # compare the text of the option
    if _normalise(predicted) == _normalise(gold):
        return True
    return math_equal(predicted, gold)
