"""`ChatModel`: the OpenAI-compatible endpoint a stage sends its chat requests to, and its request counters.

It sends through the package's HTTP layer (`perception_rl.judge.transport.ChatTransport`: concurrency
limit, per-attempt timeout, retries with backoff, classified failures) and adds what a long offline job needs: requests are
streamed through a bounded window (bodies carrying images are built only when a slot is near), and each
reply is handed to the caller the moment it arrives, so the stage can log it before anything else fails.
The API key is read from the environment variable *named* by `api_key_env`, at first use.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from perception_rl.judge.health import percentile
from perception_rl.judge.transport import ChatTransport, auth_headers
from perception_rl.judge.types import FAILURE_KINDS, JudgeReply


@dataclass
class RequestStats:
    """What one stage's requests did in this run: sent, answered, failures by kind, retries, tokens, latency."""

    sent: int = 0
    answered: int = 0
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_KINDS, 0))
    latencies: list[float] = field(default_factory=list)
    first_errors: list[str] = field(default_factory=list)

    def record(self, reply: JudgeReply) -> None:
        self.sent += 1
        self.retries += reply.retries
        self.tokens_in += reply.tokens_in
        self.tokens_out += reply.tokens_out
        self.latencies.append(reply.latency_s)
        if reply.failure is None:
            self.answered += 1
        else:
            self.failures[reply.failure] = self.failures.get(reply.failure, 0) + 1
            if len(self.first_errors) < 5:
                self.first_errors.append(f"{reply.failure}: {reply.error}")

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent, "answered": self.answered, "failed": self.failed,
            "failures_by_kind": {k: n for k, n in self.failures.items() if n}, "retries": self.retries,
            "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
            "latency_p50_s": _round(percentile(self.latencies, 50)), "latency_p95_s": _round(percentile(self.latencies, 95)),
            "first_errors": self.first_errors,
        }


@dataclass
class ChatJob:
    """One request to send: its work-log key, its encoded body, and what the caller needs back with the reply."""

    key: str
    body: bytes
    context: Any = None


class ChatModel:
    """An OpenAI-compatible `/chat/completions` endpoint (vllm serve, llama-server, hosted APIs).

    Args:
        base_url: the server's API root, including "/v1" (e.g. "http://127.0.0.1:8000/v1").
        model: model name as the server knows it.
        api_key_env: name of the environment variable holding the API key; null sends no key.
        max_concurrency: most requests in flight at once.
        request_timeout: seconds one attempt may take (long chains of thought need minutes).
        max_retries: further attempts after a timeout, connection error, malformed body or a
            retryable HTTP status (408, 409, 425, 429, 5xx).
        backoff_base: first retry delay in seconds; doubles each attempt, with jitter.
        backoff_max: cap on one retry delay (also on a server's Retry-After).
        temperature: sampling temperature (solutions want variety, about 1.0; extraction wants 0).
        max_tokens: most tokens generated per reply.
        seed: sample k of a problem sends `seed + k`, so samples differ and reruns can reproduce them on
            servers that honour it; null sends no seed (the work log tells samples apart either way).
        extra_body: extra JSON fields for every request (e.g. {"top_p": 0.95} or a reasoning-effort switch).
        progress_every_s: seconds between progress lines on stderr; 0 turns them off.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str = "Qwen/Qwen2.5-VL-72B-Instruct",
        api_key_env: str | None = None,
        max_concurrency: int = 32,
        request_timeout: float = 600.0,
        max_retries: int = 3,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        temperature: float = 0.0,
        max_tokens: int = 4096,
        seed: int | None = 0,
        extra_body: dict[str, Any] | None = None,
        progress_every_s: float = 30.0,
    ):
        if max_concurrency < 1 or max_retries < 0 or max_tokens < 1:
            raise ValueError("model: max_concurrency and max_tokens must be >= 1, max_retries >= 0")
        if not request_timeout > 0 or backoff_base < 0 or backoff_max < 0 or temperature < 0:
            raise ValueError("model: request_timeout must be > 0; backoff_base, backoff_max and temperature >= 0")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"model.base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.request_timeout = float(request_timeout)
        self.max_retries = max_retries
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.temperature = float(temperature)
        self.max_tokens = max_tokens
        self.seed = seed
        self.extra_body = dict(extra_body or {})
        self.progress_every_s = float(progress_every_s)
        self._transport: ChatTransport | None = None

    def __repr__(self) -> str:
        return f"ChatModel(base_url={self.base_url!r}, model={self.model!r}, temperature={self.temperature})"

    def body(self, messages: list[dict], sample: int = 0) -> bytes:
        """The encoded request body; canonical JSON, so equal requests give equal bytes (and digests)."""
        body: dict[str, Any] = {
            "model": self.model, "messages": messages, "temperature": self.temperature, "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            body["seed"] = self.seed + sample
        body.update(self.extra_body)
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def run(self, jobs: Iterable[ChatJob], on_reply: Callable[[ChatJob, JudgeReply], None], label: str) -> RequestStats:
        """Send every job; `on_reply` runs in this thread for each reply (failures included) as soon as it arrives.

        `jobs` is consumed lazily, at most `2 * max_concurrency` ahead of the replies, so a generator that
        builds bodies with images on the way keeps only that many in memory."""
        stats, in_flight = RequestStats(), {}
        window, last_report = 2 * self.max_concurrency, time.monotonic()
        # Bound even a request queued behind a full window: every attempt, every backoff, twice over.
        patience = 2 * (self.max_retries + 1) * (self.request_timeout + self.backoff_max) + 10.0
        transport = self._client()
        for job in jobs:
            while len(in_flight) >= window:
                self._collect(in_flight, on_reply, stats)
            future = transport.submit([job.body], time.monotonic() + patience, "no reply within the stage's patience")
            in_flight[future] = job
            last_report = self._progress(stats, label, last_report)
        while in_flight:
            self._collect(in_flight, on_reply, stats)
            last_report = self._progress(stats, label, last_report)
        return stats

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_transport": None}

    # ----------------------------------------------------------------- helpers
    def _client(self) -> ChatTransport:
        if self._transport is None:
            self._transport = ChatTransport(
                f"{self.base_url}/chat/completions", auth_headers(self.api_key_env, "model.api_key_env"),
                self.max_concurrency, self.request_timeout, self.max_retries, self.backoff_base, self.backoff_max,
                thread_name="ChatModel-loop",
            )
        return self._transport

    @staticmethod
    def _collect(in_flight: dict[Future, ChatJob], on_reply, stats: RequestStats) -> None:
        done, _ = wait(list(in_flight), timeout=1.0, return_when=FIRST_COMPLETED)
        for future in done:
            job = in_flight.pop(future)
            try:
                reply = future.result()[0]
            except Exception as err:  # noqa: BLE001 - the transport itself broke: count it, never lose the job silently
                reply = JudgeReply(failure="error", error=f"{type(err).__name__}: {err}")
            stats.record(reply)
            on_reply(job, reply)

    def _progress(self, stats: RequestStats, label: str, last: float) -> float:
        now = time.monotonic()
        if self.progress_every_s <= 0 or now - last < self.progress_every_s:
            return last
        print(f"{label}: {stats.sent} replies ({stats.failed} failed), tokens {stats.tokens_in}/{stats.tokens_out}",
              file=sys.stderr, flush=True)
        return now


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)
