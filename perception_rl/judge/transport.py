"""`ChatTransport`: the HTTP side of every OpenAI-compatible client in the package (`OpenAIJudge` and the
annotation stages' `ChatModel`), and `auth_headers` for the API key.

Built on aiohttp rather than the `openai` package: one dependency gives both the client (a connection
pool sized to the concurrency limit) and the small test servers, and it keeps the failure kinds
(timeout, HTTP status, connection) and the retry policy in our hands instead of a second retry layer.
It knows nothing of judging: it posts ready-encoded bodies and returns one `JudgeReply` (text and token
usage, or a classified failure) per body.
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

import aiohttp  # imported here, not on the first batch, so its import time never lands inside a training step

from perception_rl.judge.types import JudgeReply

__all__ = ["ChatTransport", "auth_headers"]

# Statuses worth another attempt besides 5xx: timeouts, conflicts, rate limits. Others (400, 401, 404, 422) repeat.
_RETRY_STATUSES = frozenset({408, 409, 425, 429})


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
    """A client of one OpenAI-compatible `/chat/completions` endpoint: bounded concurrency, timeouts, retries.

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
        max_retries: int, backoff_base: float, backoff_max: float, thread_name: str = "ChatTransport-loop",
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
