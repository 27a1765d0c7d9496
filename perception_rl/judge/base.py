"""The judge extension point: `Judge` turns (annotations, response) requests into per-item verdicts.

`Judge.start(requests)` runs each request through a pipeline and returns a `PendingVerdicts`:

    neutralise  strip what speaks to the judge from the response (`Neutraliser`; only removes text)
    cache       serve a request this same judge answered before (`VerdictCache`; the key holds the judge's
                `identity()`, so a checkpoint of one judge never answers for another)
    backend     `launch` the rest, without blocking (subclasses implement it, or
                `ThreadedJudge.reply_batch` for blocking backends); one `JudgeReply` per request
    parse       `PendingVerdicts.result()` waits, never longer than `batch_timeout`, reads each reply into a
                `JudgeVerdict` (`parse_reply`), caches the successes and counts everything (`JudgeHealth`)

Failures never raise there: each verdict carries its failure kind, and the failure policy decides what it
scores (`failure_score`, `check`). Nothing is loaded or connected in a constructor: runtime state is
built on first use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, get_args

from perception_rl.judge.health import JudgeHealth, VerdictCache
from perception_rl.judge.neutralise import Neutraliser
from perception_rl.judge.prompt import DEFAULT_PROMPT, PromptTemplate
from perception_rl.judge.types import (  # re-exported: their home before judge/types.py
    Average,
    FailureKind,
    FailurePolicy,
    ItemVerdict,
    JudgeError,
    JudgeReply,
    JudgeRequest,
    JudgeVerdict,
)

__all__ = [
    "Average", "FailureKind", "FailurePolicy", "ItemVerdict", "Judge", "JudgeError", "JudgeReply", "JudgeRequest",
    "JudgeVerdict", "PendingVerdicts", "ThreadedJudge",
]

log = logging.getLogger(__name__)

_GRACE_S = 5.0  # most extra wait beyond batch_timeout, for a backend that does not enforce the deadline itself


class Judge(ABC):
    """Base of all judges: prompt, neutralisation, cache, health counters, failure policy, bounded waits.

    Args:
        prompt: a shipped prompt template by name ("perception-v1") or the path of a template YAML file.
        failure_policy: what a failed request (timeout, HTTP or connection error, a reply without one
            usable verdict) scores: "abstain" (NaN: the completion is left out of the advantage and the
            loss); "zero" (scores 0, so judge outages become negative advantages); or "raise" (the
            training step fails with `JudgeError`).
        cache_size: verdicts remembered for identical requests, within and across steps; 0 disables.
        batch_timeout: most seconds one batch may take; requests unanswered by then count as timeouts.
    """

    _TRANSIENT: tuple[str, ...] = ("_template", "_neutraliser", "_cache", "_health")

    def __init__(
        self,
        prompt: str = DEFAULT_PROMPT,
        failure_policy: FailurePolicy = "abstain",
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
        """The verdict cache and whose verdicts they are, so a resumed run answers exactly what the
        uninterrupted run would (and a run resumed with another judge asks that judge)."""
        return {"identity": self.identity(), "cache": self._runtime()[2].state_dict()}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("identity")
        if saved is None or _canonical(saved) != _canonical(self.identity()):
            # Its keys could never match this judge's requests (they hold the identity): start empty instead.
            if state.get("cache", {}).get("entries"):
                log.warning("judge: the checkpoint's verdict cache comes from another judge (%s; this one is %s); "
                            "not reused", saved, self.identity())
            return
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

    def identity(self) -> dict[str, Any]:
        """Everything besides the request that decides a verdict: the judge class and the prompt's hash here;
        subclasses add their model and sampling settings. Part of every cache key (never a secret)."""
        return {"judge": f"{type(self).__module__}.{type(self).__qualname__}", "prompt": self.template.hash}

    def start(self, requests: list[JudgeRequest]) -> PendingVerdicts:
        """Begin judging (neutralise -> cache -> backend); the returned handle's `result()` parses the replies."""
        _, neutralise, cache = self._runtime()
        identity = _digest(_canonical(self.identity()))
        batch = _Batch()
        for request in requests:
            if not request.annotations:  # nothing to check: no judge call
                batch.add_ready(JudgeVerdict((), 0))
                continue
            clean, removed = neutralise(request.response)  # 1. neutralise
            request = replace(request, response=clean)
            key = _request_key(identity, request)
            judged = clean if removed else None
            batch.add(request, key, cache.get(key), judged_response=judged)  # 2. cache; repeats are sent once
        deadline = time.monotonic() + self.batch_timeout
        future = self.launch(batch.todo, deadline) if batch.todo else _completed([])  # 3. backend
        collect = partial(self._collect, batch)  # 4. parse, when the caller asks for the result
        return PendingVerdicts(future, len(batch.todo), deadline, self.batch_timeout, collect)

    def parse_reply(self, request: JudgeRequest, reply: JudgeReply) -> JudgeVerdict:
        """One backend reply as a verdict: per-item values, or a failure (the backend's, or "unparsable"
        when no item of the reply holds a number: a judge answering "present" in words scores nothing)."""
        common = dict(
            num_items=len(request.annotations), reply=reply.text, latency_s=reply.latency_s,
            tokens_in=reply.tokens_in, tokens_out=reply.tokens_out,
        )
        if reply.failure is not None:
            return JudgeVerdict((), failure=reply.failure, error=reply.error, **common)
        tag = self.template.tag
        items = self.template.parse_items(reply.text or "")
        if items is None:
            error = f"the reply holds no verdict tag <{tag}1>..</{tag}1>"
            return JudgeVerdict((), failure="unparsable", error=error, **common)
        unparsable = sum(value is None for value in items[: len(request.annotations)])
        verdict = JudgeVerdict(tuple(0.0 if v is None else v for v in items), unparsable=unparsable, **common)
        if verdict.answered == 0:
            error = (f"no verdict tag <{tag}K> holds a number ({verdict.unparsable} unparsable, "
                     f"{verdict.missing} missing of {verdict.num_items} items)")
            return replace(verdict, failure="unparsable", error=error)
        return verdict

    def item_verdicts(self, verdict: JudgeVerdict) -> tuple[ItemVerdict, ...]:
        """Each annotation item's verdict, read from the reply as `parse_reply` reads it: "correct" (value >=
        0.5), "wrong", "unparsable" (its tag holds no number), "missing" (no tag), or "failed" (no reply read)."""
        if not verdict.replied:
            return ("failed",) * verdict.num_items
        values = self.template.parse_items(verdict.reply or "") or ()
        return tuple(_item_verdict(values[k] if k < len(values) else "missing") for k in range(verdict.num_items))

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
    def endpoint(self) -> str:
        """Where verdicts come from, for messages (a server's URL, a model's path)."""
        return f"{type(self).__name__} (in process)"

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

    # ----------------------------------------------------------------- the parse stage
    def _collect(self, batch: _Batch, replies: list[JudgeReply]) -> list[JudgeVerdict]:
        """Parse the replies, remember the successes, count every verdict with facts; in request order."""
        fresh = [self.parse_reply(request, reply) for request, reply in zip(batch.todo, replies)]
        for key, verdict in zip(batch.keys, fresh):
            self._cache.put(key, verdict)
        verdicts = batch.assemble(fresh)
        for verdict, index in zip(verdicts, batch.sources):
            if verdict.num_items:  # requests without facts were never sent
                self.health.record(verdict, replies[index].retries if index >= 0 and not verdict.cached else 0)
        return verdicts


class _Batch:
    """One `start` call: per request, a verdict ready now (no facts, a cache hit) or the index of the request
    sent for it; identical requests of the batch are sent once. `_judged` keeps, per request, the response
    as the neutraliser left it when it changed anything (None: unchanged)."""

    def __init__(self):
        self.todo: list[JudgeRequest] = []
        self.keys: list[str] = []
        self.sources: list[int] = []  # index into `todo`, or -1 for a ready verdict
        self._ready: dict[int, JudgeVerdict] = {}
        self._judged: list[str | None] = []
        self._index_of: dict[str, int] = {}

    def add_ready(self, verdict: JudgeVerdict, judged_response: str | None = None) -> None:
        self._ready[len(self.sources)] = verdict
        self.sources.append(-1)
        self._judged.append(judged_response)

    def add(self, request: JudgeRequest, key: str, hit: JudgeVerdict | None, judged_response: str | None) -> None:
        if hit is not None:
            self.add_ready(_as_repeat(hit), judged_response)
            return
        if key not in self._index_of:
            self._index_of[key] = len(self.todo)
            self.todo.append(request)
            self.keys.append(key)
        self.sources.append(self._index_of[key])
        self._judged.append(judged_response)

    def assemble(self, fresh: list[JudgeVerdict]) -> list[JudgeVerdict]:
        verdicts, seen = [], set()
        for slot, index in enumerate(self.sources):
            if index < 0:
                verdict = self._ready[slot]
            elif index in seen:  # the same request twice in one batch: judged once
                verdict = _as_repeat(fresh[index])
            else:
                seen.add(index)
                verdict = fresh[index]
            judged = self._judged[slot]
            verdicts.append(replace(verdict, neutralised=judged is not None, judged_response=judged))
        return verdicts


@dataclass
class PendingVerdicts:
    """Verdicts being computed. `result()` waits (never past `deadline` plus a grace) and is idempotent.

    `collect` turns the backend's replies into the verdicts of every request of the batch (the judge's
    parse stage), so this handle needs nothing else from the judge.
    """

    future: Future
    size: int
    deadline: float
    batch_timeout: float
    collect: Callable[[list[JudgeReply]], list[JudgeVerdict]]
    _verdicts: list[JudgeVerdict] | None = field(default=None, repr=False)

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> list[JudgeVerdict]:
        if self._verdicts is None:
            self._verdicts = self.collect(self._wait())
        return self._verdicts

    def _wait(self) -> list[JudgeReply]:
        n = self.size
        try:
            grace = min(_GRACE_S, 0.5 * self.batch_timeout)
            replies = self.future.result(timeout=max(0.0, self.deadline - time.monotonic()) + grace)
        except FutureTimeout:
            self.future.cancel()
            return [JudgeReply(failure="timeout", error=f"batch_timeout of {self.batch_timeout}s passed")] * n
        except Exception as err:  # a backend bug must not kill training under the zero/abstain policies
            log.warning("judge backend failed on a batch of %d: %r", n, err)
            return [JudgeReply(failure="error", error=repr(err))] * n
        if len(replies) != n:
            return [JudgeReply(failure="error", error=f"backend returned {len(replies)} replies for {n} requests")] * n
        return replies


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


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _request_key(identity: str, request: JudgeRequest) -> str:
    """Digest of everything that determines the reply: the judge's identity digest and the request."""
    digest = hashlib.sha256(json.dumps([identity, request.annotations, request.response]).encode())
    for image in request.images:
        digest.update(hashlib.sha256(image).digest())
    return digest.hexdigest()


def _item_verdict(value: float | None | str) -> ItemVerdict:
    if value == "missing":
        return "missing"
    if value is None:
        return "unparsable"
    return "correct" if value >= 0.5 else "wrong"


def _as_repeat(verdict: JudgeVerdict) -> JudgeVerdict:
    """A verdict served again: no latency, no tokens, marked cached."""
    return replace(verdict, cached=True, latency_s=0.0, tokens_in=0, tokens_out=0)


def _completed(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future
