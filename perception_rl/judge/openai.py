"""`OpenAIJudge`: an asynchronous client for any OpenAI-compatible chat server (vllm serve, llama.cpp, hosted APIs).

Requests of a batch run concurrently on an asyncio loop in one background thread, so the training loop
(and math-verify's signal-based timeouts in the main thread) carries on while they are in flight. Every
wait is bounded: each attempt by `request_timeout`, the retries by `max_retries` and `backoff_max`, and
the whole batch by `batch_timeout`, after which unanswered requests count as timeouts.

Built on aiohttp rather than the `openai` package: one dependency gives both the client (a connection
pool sized to the concurrency limit) and the small test servers, and it keeps the failure kinds
(timeout, HTTP status, connection) and the retry policy in our hands instead of a second retry layer.
The API key is read from the environment variable *named* in the config, at first use; it is never
stored in the config, logged, or shown in `repr`. The HTTP layer (`ChatTransport`) is shared with the
annotation stages (`perception_rl.annotate`), which send their own chat requests through it.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import aiohttp  # imported here, not on the first batch, so its import time never lands inside a step

from perception_rl.judge.base import FailurePolicy, Judge, JudgeReply, JudgeRequest
from perception_rl.judge.prompt import DEFAULT_PROMPT

# Statuses worth another attempt besides 5xx: timeouts, conflicts, rate limits. Others (400, 401, 404, 422) repeat.
_RETRY_STATUSES = frozenset({408, 409, 425, 429})


class OpenAIJudge(Judge):
    """Judge through the `/chat/completions` endpoint of an OpenAI-compatible server.

    Args:
        base_url: the server's API root, including "/v1" (e.g. "http://127.0.0.1:8000/v1").
        model: model name as the server knows it (`vllm serve MODEL` serves it under MODEL).
        api_key_env: name of the environment variable that holds the API key; null sends no key.
        max_concurrency: most requests in flight at once (also the connection pool size).
        request_timeout: seconds one attempt may take, connection included.
        max_retries: further attempts after a timeout, connection error, malformed body or a
            retryable HTTP status (408, 409, 425, 429, 5xx).
        backoff_base: first retry delay in seconds; doubles each attempt, with jitter.
        backoff_max: cap on one retry delay (also on a server's Retry-After).
        temperature: sampling temperature (0: greedy, reproducible verdicts).
        max_tokens: most tokens the judge may generate per reply.
        multimodal: also send the problem's images (data URLs); the server's model must accept images.
        extra_body: extra JSON fields for every request (e.g. {"seed": 0} or vLLM's {"top_k": 1}).
        prompt: prompt template name or path.
        failure_policy: "zero", "abstain" or "raise" (see `Judge`).
        cache_size: verdicts remembered for identical requests; 0 disables.
        batch_timeout: most seconds one batch may take.
    """

    _TRANSIENT = (*Judge._TRANSIENT, "_client")

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str = "Qwen/Qwen2.5-32B-Instruct-AWQ",
        api_key_env: str | None = None,
        max_concurrency: int = 128,
        request_timeout: float = 60.0,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        temperature: float = 0.0,
        max_tokens: int = 512,
        multimodal: bool = False,
        extra_body: dict[str, Any] | None = None,
        prompt: str = DEFAULT_PROMPT,
        failure_policy: FailurePolicy = "zero",
        cache_size: int = 100_000,
        batch_timeout: float = 600.0,
    ):
        if max_concurrency < 1 or max_retries < 0 or max_tokens < 1:
            raise ValueError("judge: max_concurrency and max_tokens must be >= 1, max_retries >= 0")
        if not request_timeout > 0 or backoff_base < 0 or backoff_max < 0:
            raise ValueError("judge: request_timeout must be > 0 and backoff_base/backoff_max >= 0")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge.base_url must start with http:// or https://, got {base_url!r}")
        super().__init__(prompt, failure_policy, cache_size, batch_timeout)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.request_timeout = float(request_timeout)
        self.max_retries = max_retries
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.multimodal = multimodal
        self.extra_body = dict(extra_body or {})

    def __repr__(self) -> str:
        return (
            f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r}, max_concurrency={self.max_concurrency}, "
            f"request_timeout={self.request_timeout}, max_retries={self.max_retries}, prompt={self.prompt!r})"
        )

    # ----------------------------------------------------------------- Judge interface
    @property
    def wants_images(self) -> bool:
        return self.multimodal

    def launch(self, requests: list[JudgeRequest], deadline: float) -> Future:
        if self._client is None:
            self._client = ChatTransport(
                f"{self.base_url}/chat/completions", auth_headers(self.api_key_env, "judge.api_key_env"),
                self.max_concurrency, self.request_timeout, self.max_retries, self.backoff_base, self.backoff_max,
            )
        bodies = [self._body(request) for request in requests]
        return self._client.submit(bodies, deadline, late_error=f"batch_timeout of {self.batch_timeout}s passed")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ----------------------------------------------------------------- request building
    def _body(self, request: JudgeRequest) -> bytes:
        images = request.images if self.multimodal else ()
        body = {
            "model": self.model,
            "messages": self.template.messages(request.annotations, request.response, images),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.extra_body,
        }
        return json.dumps(body).encode()  # encoded here, in the caller's thread, to keep the loop light


def auth_headers(api_key_env: str | None, key_name: str = "api_key_env") -> dict[str, str]:
    """JSON content type, plus a bearer token read now from the environment variable *named* `api_key_env`."""
    headers = {"Content-Type": "application/json"}
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise ValueError(f"{key_name}: environment variable {api_key_env!r} is not set or empty")
        headers["Authorization"] = f"Bearer {key}"
    return headers


class ChatTransport:
    """The HTTP side of every OpenAI-compatible client in the package (`OpenAIJudge`, the annotation stages).

    Posts ready-encoded `/chat/completions` bodies to one URL from an asyncio loop on a daemon thread, with
    one aiohttp session whose connection pool and semaphore bound the requests in flight. Each request is
    retried after a timeout, connection error, malformed body or retryable status, with exponential backoff
    and jitter. `submit` never raises for a request: each comes back as a `JudgeReply` with the reply text
    and token usage, or a failure kind ("timeout", "http_error", "connection_error", "error") and message.

    Args:
        url: the endpoint, e.g. "http://127.0.0.1:8000/v1/chat/completions".
        headers: HTTP headers of every request (see `auth_headers`).
        max_concurrency: most requests in flight at once (also the connection pool size).
        request_timeout: seconds one attempt may take, connection included.
        max_retries: further attempts after a retryable failure.
        backoff_base: first retry delay in seconds; doubles each attempt, with jitter.
        backoff_max: cap on one retry delay (also on a server's Retry-After).
        thread_name: name of the event-loop thread (shows in stack dumps).
    """

    def __init__(
        self, url: str, headers: dict[str, str], max_concurrency: int, request_timeout: float,
        max_retries: int, backoff_base: float, backoff_max: float, thread_name: str = "OpenAIJudge-loop",
    ):
        self.url = url
        self.request_timeout, self.max_retries = float(request_timeout), max_retries
        self.backoff_base, self.backoff_max = float(backoff_base), float(backoff_max)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=thread_name, daemon=True)
        self.thread.start()
        opened = self._open(headers, max_concurrency, request_timeout)
        self.session, self.slots = asyncio.run_coroutine_threadsafe(opened, self.loop).result(30)
        atexit.register(self.close)

    def submit(self, bodies: list[bytes], deadline: float, late_error: str = "the deadline passed") -> Future:
        """Start the requests; a Future of one reply per body, in order. Unanswered at `deadline`
        (time.monotonic()): a timeout failure with message `late_error`."""
        return asyncio.run_coroutine_threadsafe(self._run_batch(bodies, deadline, late_error), self.loop)

    def close(self) -> None:
        if not self.loop.is_running():
            return
        atexit.unregister(self.close)
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(5)
        except Exception:  # closing is best effort; the loop stops either way
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.loop.is_running():
            self.loop.close()

    # ----------------------------------------------------------------- the asyncio side
    @staticmethod
    async def _open(headers: dict[str, str], max_concurrency: int, request_timeout: float):
        connector = aiohttp.TCPConnector(limit=max_concurrency, limit_per_host=max_concurrency)
        timeout = aiohttp.ClientTimeout(total=request_timeout)  # per attempt, connection included
        session = aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout)
        return session, asyncio.Semaphore(max_concurrency)

    async def _shutdown(self) -> None:
        """Cancel requests still in flight (a batch given up on), then close the connections."""
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.session.close()

    async def _run_batch(self, bodies: list[bytes], deadline: float, late_error: str) -> list[JudgeReply]:
        tasks = [asyncio.ensure_future(self._request(body)) for body in bodies]
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic())) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        late = JudgeReply(failure="timeout", error=late_error)
        return [task.result() if task in done else late for task in tasks]

    async def _request(self, body: bytes) -> JudgeReply:
        """One request with retries; returns a reply or a classified failure, never raises.

        Its latency counts the attempts and the backoff between them, not the wait for a free slot.
        """
        busy, retries = 0.0, 0
        while True:
            async with self.slots:
                began = time.monotonic()
                reply, retry_after = await self._attempt(body)
                busy += time.monotonic() - began
            if reply.failure is None or retry_after is None or retries >= self.max_retries:
                return replace(reply, latency_s=busy, retries=retries)
            retries += 1
            delay = min(self.backoff_max, self.backoff_base * 2 ** (retries - 1)) * (0.5 + random.random() / 2)
            delay = min(self.backoff_max, max(delay, retry_after))
            await asyncio.sleep(delay)
            busy += delay

    async def _attempt(self, body: bytes) -> tuple[JudgeReply, float | None]:
        """One HTTP attempt. The second value is None when retrying is pointless, else a minimum delay."""
        try:
            async with self.session.post(self.url, data=body) as response:
                text = (await response.read()).decode("utf-8", errors="replace")
                if not 200 <= response.status < 300:
                    retryable = response.status >= 500 or response.status in _RETRY_STATUSES
                    reply = JudgeReply(failure="http_error", error=f"HTTP {response.status}: {text[:200]}")
                    return reply, (_retry_after(response.headers) if retryable else None)
        except asyncio.TimeoutError:
            return JudgeReply(failure="timeout", error=f"no reply within request_timeout={self.request_timeout}s"), 0.0
        except aiohttp.ClientError as err:  # refused, reset, disconnected, DNS
            return JudgeReply(failure="connection_error", error=f"{type(err).__name__}: {err}"), 0.0
        except Exception as err:  # anything else fails this request only, never its whole batch
            return JudgeReply(failure="error", error=f"{type(err).__name__}: {err}"), None
        return _parse_completion(text)


def _parse_completion(text: str) -> tuple[JudgeReply, float | None]:
    """The reply text and token usage of a 200 response; a malformed body is an HTTP error worth a retry."""
    try:
        data = json.loads(text)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return JudgeReply(failure="http_error", error=f"malformed completion body: {text[:200]}"), 0.0
    if isinstance(content, list):  # some servers return content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    usage = data.get("usage") or {}
    tokens_in, tokens_out = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return JudgeReply(text=content or "", tokens_in=tokens_in, tokens_out=tokens_out), None


def _retry_after(headers) -> float:
    try:
        return max(0.0, float(headers.get("Retry-After", 0)))
    except ValueError:  # an HTTP date; the exponential backoff applies
        return 0.0
