"""`OpenAIJudge`: an asynchronous client for any OpenAI-compatible chat server (vllm serve, llama.cpp, hosted APIs).

Requests of a batch run concurrently on an asyncio loop in one background thread (`ChatTransport`, shared
with the annotation stages), so the training loop (and math-verify's signal-based timeouts in the main
thread) carries on while they are in flight. Every wait is bounded: each attempt by `request_timeout`, the
retries by `max_retries` and `backoff_max`, and the whole batch by `batch_timeout`, after which unanswered
requests count as timeouts.

`max_concurrency` is what the judge server sees: the total over all training processes, each of which takes
ceil(total / world size). The API key is read from the environment variable *named* in the config, at first
use; it is never stored in the config, logged, shown in `repr` or part of the judge's identity.
"""

from __future__ import annotations

import json
import logging
import math
import os
from concurrent.futures import Future
from typing import Any

from perception_rl.judge.base import Judge
from perception_rl.judge.prompt import DEFAULT_PROMPT
from perception_rl.judge.transport import ChatTransport, auth_headers
from perception_rl.judge.types import FailurePolicy, JudgeRequest

__all__ = ["ChatTransport", "OpenAIJudge", "auth_headers", "concurrency_share"]  # ChatTransport: its old home

log = logging.getLogger(__name__)


def concurrency_share(total: int) -> int:
    """This process's share of `total` requests in flight: ceil(total / world size), at least 1.

    The world size comes from torch.distributed when a process group is up (training under Lightning),
    else from the WORLD_SIZE variable that torchrun and Lightning's launchers set, else 1.
    """
    import torch.distributed as dist  # torch is loaded by then wherever a judge runs; this is a dict lookup

    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
    else:
        value = os.environ.get("WORLD_SIZE") or "1"
        if not value.isdigit():
            raise ValueError(f"environment variable WORLD_SIZE must be a positive integer, got {value!r}")
        world = int(value)
    return max(1, math.ceil(total / max(1, world)))


class OpenAIJudge(Judge):
    """Judge through the `/chat/completions` endpoint of an OpenAI-compatible server.

    Args:
        base_url: the server's API root, including "/v1" (e.g. "http://127.0.0.1:8000/v1").
        model: model name as the server knows it (`vllm serve MODEL` serves it under MODEL).
        api_key_env: name of the environment variable that holds the API key; null sends no key.
        max_concurrency: most requests in flight at the server, summed over all training processes: each
            process sends at most ceil(max_concurrency / world_size) at once (its connection pool size).
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
        failure_policy: "abstain" (NaN: the completion leaves the loss), "zero" or "raise" (see `Judge`).
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
        failure_policy: FailurePolicy = "abstain",
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

    @property
    def endpoint(self) -> str:
        return self.base_url

    def identity(self) -> dict[str, Any]:
        # Everything in the request body but the messages (which the cache key covers), and where it goes.
        return {
            **super().identity(), "base_url": self.base_url, "model": self.model, "temperature": self.temperature,
            "max_tokens": self.max_tokens, "multimodal": self.multimodal, "extra_body": self.extra_body,
        }

    def launch(self, requests: list[JudgeRequest], deadline: float) -> Future:
        if self._client is None:
            share = concurrency_share(self.max_concurrency)
            if share != self.max_concurrency:
                log.info("judge: this process sends %d of max_concurrency=%d at once", share, self.max_concurrency)
            self._client = ChatTransport(
                f"{self.base_url}/chat/completions", auth_headers(self.api_key_env, "judge.api_key_env"),
                share, self.request_timeout, self.max_retries, self.backoff_base, self.backoff_max,
                thread_name="OpenAIJudge-loop",
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
