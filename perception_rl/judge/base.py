"""The judge extension point: `Judge` turns (annotations, response) requests into per-item verdicts.

`Judge.start(requests)` neutralises each response, answers what it can from the cache, hands the rest
to the backend (`launch`, which must not block) and returns a `PendingVerdicts`; `.result()` waits, never
longer than `batch_timeout`, and parses the backend's replies. Failures never raise there: each verdict
carries its failure kind, and the failure policy decides what it scores (`failure_score`, `check`).
Subclasses implement `launch` (asynchronous backends) or `ThreadedJudge.reply_batch` (blocking ones).
Nothing is loaded or connected in a constructor: runtime state is built on first use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from perception_rl.judge.health import JudgeHealth, VerdictCache
from perception_rl.judge.neutralise import Neutraliser
from perception_rl.judge.prompt import DEFAULT_PROMPT, PromptTemplate

log = logging.getLogger(__name__)

FailurePolicy = Literal["zero", "abstain", "raise"]
FailureKind = Literal["timeout", "http_error", "connection_error", "unparsable", "error"]
Average = Literal["reference", "emitted"]
_GRACE_S = 5.0  # most extra wait beyond batch_timeout, for a backend that does not enforce the deadline itself


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
    """What a backend returned for one request: the reply text, or a failure kind with a message."""

    text: str | None = None
    failure: FailureKind | None = None
    error: str = ""
    latency_s: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    retries: int = 0


@dataclass(frozen=True)
class JudgeVerdict:
    """Parsed verdicts of one request. `values[k]` in [0, 1] for fact k+1, possibly fewer than `num_items`."""

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
        }


@dataclass
class _Slot:
    """Where request i's verdict comes from: ready now, or reply `index` of the launched batch."""

    ready: JudgeVerdict | None = None
    index: int = -1
    removed: int = 0


class Judge(ABC):
    """Base of all judges: prompt, neutralisation, cache, health counters, failure policy, bounded waits.

    Args:
        prompt: a shipped prompt template by name ("perception-v1") or the path of a template YAML file.
        failure_policy: what a failed request scores: "zero"; "abstain" (NaN: the completion is left
            out of the loss); or "raise" (the training step fails with `JudgeError`).
        cache_size: verdicts remembered for identical requests, within and across steps; 0 disables.
        batch_timeout: most seconds one batch may take; requests unanswered by then count as timeouts.
    """

    _TRANSIENT: tuple[str, ...] = ("_template", "_neutraliser", "_cache", "_health")

    def __init__(
        self,
        prompt: str = DEFAULT_PROMPT,
        failure_policy: FailurePolicy = "zero",
        cache_size: int = 100_000,
        batch_timeout: float = 600.0,
    ):
        if failure_policy not in get_args(FailurePolicy):
            raise ValueError(f"judge.failure_policy must be one of {get_args(FailurePolicy)}, got {failure_policy!r}")
        if cache_size < 0:
            raise ValueError(f"judge.cache_size must be >= 0, got {cache_size}")
        if not batch_timeout > 0:
            raise ValueError(f"judge.batch_timeout must be > 0 seconds, got {batch_timeout}")
        self.prompt = prompt
        self.failure_policy = failure_policy
        self.cache_size = cache_size
        self.batch_timeout = float(batch_timeout)
        for name in self._TRANSIENT:
            setattr(self, name, None)

    # ----------------------------------------------------------------- runtime state, built on first use
    @property
    def template(self) -> PromptTemplate:
        if self._template is None:
            self._template = PromptTemplate.load(self.prompt)
            log.info("judge %s uses prompt %s (%s)", type(self).__name__, self._template.label, self._template.source)
        return self._template

    @property
    def health(self) -> JudgeHealth:
        if self._health is None:
            self._health = JudgeHealth()
        return self._health

    def _runtime(self) -> tuple[PromptTemplate, Neutraliser, VerdictCache]:
        if self._neutraliser is None:
            self._neutraliser = Neutraliser((self.template.tag,), self.template.delimiters)
            self._cache = VerdictCache(self.cache_size)
        return self.template, self._neutraliser, self._cache

    def state_dict(self) -> dict:
        """The verdict cache, so a resumed run answers exactly the requests the uninterrupted run would."""
        return {"cache": self._runtime()[2].state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._runtime()[2].load_state_dict(state.get("cache", {}))

    def __getstate__(self) -> dict:
        """Pickle the configuration only (threads, clients and models are rebuilt on first use)."""
        return {k: (None if k in self._TRANSIENT else v) for k, v in self.__dict__.items()}

    # ----------------------------------------------------------------- the interface
    @abstractmethod
    def launch(self, requests: list[JudgeRequest], deadline: float) -> Future:
        """Start answering `requests` (responses already neutralised) without blocking.

        Returns a Future of one `JudgeReply` per request, in order. `deadline` (time.monotonic()) is when
        the caller stops waiting; a backend should answer unfinished requests with timeouts by then.
        """

    def start(self, requests: list[JudgeRequest]) -> PendingVerdicts:
        """Begin judging; the returned handle's `result()` collects the verdicts."""
        template, neutralise, cache = self._runtime()
        slots, todo, keys, index_of = [], [], [], {}
        for request in requests:
            if not request.annotations:  # nothing to check: no judge call
                slots.append(_Slot(ready=JudgeVerdict((), 0)))
                continue
            clean, removed = neutralise(request.response)
            request = replace(request, response=clean)
            key = self._key(template, request)
            hit = cache.get(key)
            if hit is not None:
                slots.append(_Slot(ready=_as_repeat(hit), removed=removed))
            elif key in index_of:
                slots.append(_Slot(index=index_of[key], removed=removed))
            else:
                index_of[key] = len(todo)
                slots.append(_Slot(index=len(todo), removed=removed))
                todo.append(request)
                keys.append(key)
        deadline = time.monotonic() + self.batch_timeout
        future = self.launch(todo, deadline) if todo else _completed([])
        return PendingVerdicts(self, slots, todo, keys, future, deadline)

    def judge(self, requests: list[JudgeRequest]) -> list[JudgeVerdict]:
        """Judge and wait; raises `JudgeError` under the "raise" policy if any request failed."""
        verdicts = self.start(requests).result()
        self.check(verdicts)
        return verdicts

    def check(self, verdicts: list[JudgeVerdict]) -> None:
        failed = [v for v in verdicts if v.failure is not None]
        if failed and self.failure_policy == "raise":
            kinds = {kind: sum(v.failure == kind for v in failed) for kind in sorted({v.failure for v in failed})}
            summary = f"{len(failed)} of {len(verdicts)} judge requests failed {kinds}"
            raise JudgeError(f"{summary}; first: {failed[0].error}")

    @property
    def wants_images(self) -> bool:
        """Whether requests should carry the problem's images (multimodal judges)."""
        return False

    @property
    def failure_score(self) -> float:
        """What a failed request scores: 0 under "zero", NaN (abstain) otherwise."""
        return 0.0 if self.failure_policy == "zero" else math.nan

    def close(self) -> None:
        """Release threads, connections or models; the judge rebuilds them if used again."""

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prompt={self.prompt!r}, failure_policy={self.failure_policy!r})"

    # ----------------------------------------------------------------- helpers
    def _key(self, template: PromptTemplate, request: JudgeRequest) -> str:
        """Digest of everything that determines the reply (the prompt's hash included)."""
        digest = hashlib.sha256(json.dumps([template.hash, request.annotations, request.response]).encode())
        for image in request.images:
            digest.update(hashlib.sha256(image).digest())
        return digest.hexdigest()

    def _verdict(self, request: JudgeRequest, reply: JudgeReply) -> JudgeVerdict:
        common = dict(
            num_items=len(request.annotations), reply=reply.text, latency_s=reply.latency_s,
            tokens_in=reply.tokens_in, tokens_out=reply.tokens_out,
        )
        if reply.failure is not None:
            return JudgeVerdict((), failure=reply.failure, error=reply.error, **common)
        values = self.template.parse(reply.text or "")
        if values is None:
            return JudgeVerdict((), failure="unparsable", error="the reply holds no verdict tag", **common)
        return JudgeVerdict(values, **common)


@dataclass
class PendingVerdicts:
    """Verdicts being computed. `result()` waits (bounded by the judge's batch_timeout) and is idempotent."""

    judge: Judge
    slots: list[_Slot]
    requests: list[JudgeRequest]
    keys: list[str]
    future: Future
    deadline: float
    _verdicts: list[JudgeVerdict] | None = field(default=None, repr=False)

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> list[JudgeVerdict]:
        if self._verdicts is None:
            replies = self._wait()
            fresh = [self.judge._verdict(r, reply) for r, reply in zip(self.requests, replies)]
            for key, verdict in zip(self.keys, fresh):
                self.judge._cache.put(key, verdict)
            self._verdicts = self._assemble(fresh, [reply.retries for reply in replies])
        return self._verdicts

    def _wait(self) -> list[JudgeReply]:
        n = len(self.requests)
        try:
            grace = min(_GRACE_S, 0.5 * self.judge.batch_timeout)
            replies = self.future.result(timeout=max(0.0, self.deadline - time.monotonic()) + grace)
        except FutureTimeout:
            self.future.cancel()
            return [JudgeReply(failure="timeout", error=f"batch_timeout of {self.judge.batch_timeout}s passed")] * n
        except Exception as err:  # a backend bug must not kill training under the zero/abstain policies
            log.warning("judge backend failed on a batch of %d: %r", n, err)
            return [JudgeReply(failure="error", error=repr(err))] * n
        if len(replies) != n:
            return [JudgeReply(failure="error", error=f"backend returned {len(replies)} replies for {n} requests")] * n
        return replies

    def _assemble(self, fresh: list[JudgeVerdict], retries: list[int]) -> list[JudgeVerdict]:
        verdicts, seen = [], set()
        for slot in self.slots:
            if slot.ready is not None:
                verdict = slot.ready
            elif slot.index in seen:  # the same request twice in one batch: judged once
                verdict = _as_repeat(fresh[slot.index])
            else:
                seen.add(slot.index)
                verdict = fresh[slot.index]
            verdict = replace(verdict, neutralised=slot.removed > 0)
            if verdict.num_items:
                self.judge.health.record(verdict, 0 if verdict.cached else retries[slot.index])
            verdicts.append(verdict)
        return verdicts


class ThreadedJudge(Judge):
    """A judge whose backend blocks (`reply_batch`); batches run in order on one worker thread.

    Args: as `Judge`.
    """

    _TRANSIENT = (*Judge._TRANSIENT, "_executor")

    def launch(self, requests: list[JudgeRequest], deadline: float) -> Future:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{type(self).__name__}-worker")
        return self._executor.submit(self.reply_batch, requests, deadline)

    @abstractmethod
    def reply_batch(self, requests: list[JudgeRequest], deadline: float) -> list[JudgeReply]:
        """One reply per request; past `deadline` (time.monotonic()) answer the rest with timeouts."""

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _as_repeat(verdict: JudgeVerdict) -> JudgeVerdict:
    """A verdict served again: no latency, no tokens, marked cached."""
    return replace(verdict, cached=True, latency_s=0.0, tokens_in=0, tokens_out=0)


def _completed(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future
