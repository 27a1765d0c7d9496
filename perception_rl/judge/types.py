"""The judge's data: what goes in (`JudgeRequest`), what a backend returns (`JudgeReply`), what is scored
(`JudgeVerdict`), and the vocabularies (failure kinds, failure policies, averaging). No behaviour beyond
scoring a verdict; every judge module imports from here and this module imports none of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

FailurePolicy = Literal["zero", "abstain", "raise"]
FailureKind = Literal["timeout", "http_error", "connection_error", "unparsable", "error"]
FAILURE_KINDS: tuple[str, ...] = ("timeout", "http_error", "connection_error", "unparsable", "error")
Average = Literal["reference", "emitted"]
ITEM_OUTCOMES = ("answered", "unparsable", "missing")
# One annotation item as judged: an answered item is "correct" (value >= 0.5) or "wrong"; "failed" when the
# request failed before any reply was read (timeout, HTTP or connection error).
ItemVerdict = Literal["correct", "wrong", "unparsable", "missing", "failed"]


class JudgeError(RuntimeError):
    """Raised under `failure_policy: raise` when any request of a batch failed."""


@dataclass(frozen=True)
class JudgeRequest:
    """One judgement: does `response` state each of `annotations`? `images` (PNG/JPEG bytes) for multimodal judges."""

    annotations: tuple[str, ...]
    response: str
    images: tuple[bytes, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "annotations", tuple(self.annotations))
        object.__setattr__(self, "images", tuple(self.images))


@dataclass(frozen=True)
class JudgeReply:
    """What a backend (or any chat transport) returned for one request: the text, or a failure kind and message."""

    text: str | None = None
    failure: FailureKind | None = None
    error: str = ""
    latency_s: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    retries: int = 0


@dataclass(frozen=True)
class JudgeVerdict:
    """Parsed verdicts of one request. `values[k]` in [0, 1] for fact k+1, possibly fewer than `num_items`.

    Each of the `num_items` facts is *answered* (its tag holds a number), *unparsable* (its tag holds
    something else, e.g. "present"; `unparsable` counts them, and their value is 0) or *missing* (no tag;
    parsing stops at the first missing number, as in the authors' code). A reply with no answered fact
    is a failure of kind "unparsable". `judged_response` is the response as the judge read it when the
    neutraliser changed it (None: unchanged).
    """

    values: tuple[float, ...]
    num_items: int
    failure: FailureKind | None = None
    reply: str | None = None
    error: str = ""
    latency_s: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    cached: bool = False
    neutralised: bool = False
    unparsable: int = 0
    judged_response: str | None = None

    @property
    def missing(self) -> int:
        return max(0, self.num_items - len(self.values))

    @property
    def answered(self) -> int:
        return max(0, min(len(self.values), self.num_items) - self.unparsable)

    @property
    def replied(self) -> bool:
        """Whether the judge's reply was read (the facts have outcomes), as opposed to a transport failure."""
        return self.failure in (None, "unparsable") and self.num_items > 0

    def score(self, average: Average = "reference") -> float:
        """Fraction of facts judged present; NaN on failure (the failure policy maps it), 0 without facts.

        "reference" divides by the number of facts (a fact the judge skipped counts 0); "emitted" averages
        the verdicts the judge gave, as the authors' code does. Verdicts past the last fact never count.
        """
        if self.failure is not None:
            return math.nan
        values = self.values[: self.num_items]
        if average == "emitted":
            return sum(values) / len(values) if values else 0.0
        return sum(values) / self.num_items if self.num_items else 0.0

    def to_dict(self) -> dict:
        return {
            "values": list(self.values), "num_items": self.num_items, "failure": self.failure, "error": self.error,
            "reply": self.reply, "latency_s": self.latency_s, "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out, "cached": self.cached, "neutralised": self.neutralised,
            "unparsable": self.unparsable, "answered": self.answered, "missing": self.missing,
            "judged_response": self.judged_response,
        }

    @classmethod
    def from_dict(cls, fields: dict) -> JudgeVerdict:
        """The inverse of `to_dict` (derived counts dropped; older dicts without `unparsable` load too)."""
        known = {k: v for k, v in fields.items() if k not in ("answered", "missing")}
        return cls(**{**known, "values": tuple(known["values"])})
