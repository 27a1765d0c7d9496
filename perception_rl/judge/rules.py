"""`RuleJudge`: a deterministic judge that looks for each annotation's words in the response.

For offline runs, demos and tests; it needs no model. A fact counts as stated when its content words
(numbers, names, nouns; stop words dropped, simple plurals and number words normalised, common LaTeX
and symbols spelled out) appear in order inside one sentence of the response, with at most `max_gap`
other words and no other number between neighbours. "There are 2 circles." is found in "I see 2 red
circles", not in "2 squares and 3 circles". It is a matcher, not a reader: paraphrases it cannot
normalise count as absent, and a response that lists every fact scores 1 (use an LLM judge to train).
"""

from __future__ import annotations

import re
import time
import unicodedata
from concurrent.futures import Future

from perception_rl.judge.base import Judge
from perception_rl.judge.prompt import DEFAULT_PROMPT
from perception_rl.judge.types import FailurePolicy, JudgeReply, JudgeRequest

_STOP_WORDS = frozenset(
    "a an the is are was were be been being there here this that these those of in on at to by for from with and "
    "it its as has have had which who whose what picture image figure diagram shown given =".split()
)
_NUMBER_WORDS = {
    w: str(n) for n, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
_SYMBOLS = [  # spelled out so "AB ⊥ CD", "AB \perp CD" and "AB is perpendicular to CD" normalise alike
    (r"\\perp|⊥", " perpendicular "), (r"\\parallel|∥", " parallel "), (r"\\angle|∠", " angle "),
    (r"\\triangle|△", " triangle "), (r"\\odot|⊙", " circle "), (r"\^\s*\{?\s*\\circ\s*\}?|°", " degree "),
    (r"\\cong|≅", " congruent "), (r"\\sim|∼", " similar "),
    (r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r" \1 / \2 "),
    (r"\\(?:left|right|mathrm|text|overline|widehat|overarc|,|;|!)", " "),
]
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+|[=<>+\-*/^]")
_SENTENCE_END = re.compile(r"(?<!\d)[.!?;](?!\d)|\n")


def _words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text)
    for pattern, replacement in _SYMBOLS:
        text = re.sub(pattern, replacement, text)
    words = []
    for token in _TOKEN.findall(text.lower()):
        token = _NUMBER_WORDS.get(token, token)
        if token in _STOP_WORDS:
            continue
        if token.isalpha() and len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
            token = token[:-1]  # plural -> singular, crude on purpose: both sides get the same treatment
        words.append(token)
    return words


def _in_order(needle: list[str], hay: list[str], max_gap: int, start: int = 0, anchored: bool = False) -> bool:
    """`needle` is a subsequence of `hay[start:]` with at most `max_gap` words between neighbours and no
    other number in between ("2 squares and 3 circles" does not state "2 circles")."""
    if not needle:
        return True
    stop = min(len(hay), start + max_gap + 1) if anchored else len(hay)
    for i in range(start, stop):
        if hay[i] == needle[0] and _in_order(needle[1:], hay, max_gap, i + 1, anchored=True):
            return True
        if anchored and hay[i][0].isdigit():
            return False
    return False


def fact_stated(fact: str, response: str, max_gap: int = 2) -> bool:
    """Whether one sentence of `response` holds the content words of `fact`, in order and close together."""
    needle = _words(fact)
    if not needle:
        return False
    return any(_in_order(needle, _words(sentence), max_gap) for sentence in _SENTENCE_END.split(response))


class RuleJudge(Judge):
    """Deterministic word matcher: one verdict per annotation, no model, no network.

    Args:
        max_gap: most words allowed between consecutive content words of a fact within a sentence.
        prompt: prompt template; only its verdict tag is used (replies are written in it and parsed back).
        failure_policy: as for every judge (this one only fails on a bug).
        cache_size: verdicts remembered for identical requests; 0 disables.
        batch_timeout: most seconds one batch may take.
    """

    def __init__(
        self,
        max_gap: int = 2,
        prompt: str = DEFAULT_PROMPT,
        failure_policy: FailurePolicy = "abstain",
        cache_size: int = 100_000,
        batch_timeout: float = 600.0,
    ):
        if max_gap < 0:
            raise ValueError(f"judge.max_gap must be >= 0, got {max_gap}")
        super().__init__(prompt, failure_policy, cache_size, batch_timeout)
        self.max_gap = max_gap

    def identity(self) -> dict:
        return {**super().identity(), "max_gap": self.max_gap}

    def launch(self, requests: list[JudgeRequest], deadline: float) -> Future:
        # Cheap enough to answer inline; the result is ready before the other rewards start.
        future: Future = Future()
        future.set_result([self._reply(request) for request in requests])
        return future

    def _reply(self, request: JudgeRequest) -> JudgeReply:
        start = time.perf_counter()
        verdicts = [float(fact_stated(fact, request.response, self.max_gap)) for fact in request.annotations]
        return JudgeReply(text=self.template.reply_for(verdicts), latency_s=time.perf_counter() - start)

    def __repr__(self) -> str:
        return f"RuleJudge(max_gap={self.max_gap}, prompt={self.prompt!r})"
