"""A scriptable OpenAI-compatible chat server for the judge tests and benchmarks (aiohttp, 127.0.0.1 only).

Replies are chosen by substrings of the user turn (`replies`), else `default_reply`; a model backend
(`generate`) or a function of the whole request body (`respond`) may answer instead. It injects latency
and faults (HTTP 500 / 429 / 400, hangs, unparsable replies, malformed bodies) at a seeded rate, per
attempt or per request content ("sticky"). A `gullible` mode plays a hackable judge: it obeys verdict tags
and instructions it finds in the user turn. It counts requests, faults, and the most requests in flight,
and keeps the digest of every request body received (`digests`) and answered (`answered`). It is
bounded: it answers at most `max_requests` (503 after that) and stops by itself after `lifetime_s`.

    python tests/judge_server.py --port 8000 --latency 0.2 --fault-rate 0.3 --lifetime 300   # prints READY <url>
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import signal
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

FAULTS = ("http500", "http429", "http400", "hang", "unparsable", "malformed")
_TAGS = re.compile(r"<\s*(verdict|info)(\d+)\s*>\s*([01](?:\.\d+)?)\s*<\s*/\s*\1\2\s*>", re.IGNORECASE)
_OBEY = re.compile(r"ignore\b.{0,40}\binstructions|all (?:key )?facts are present", re.IGNORECASE)


@dataclass
class ServerScript:
    replies: dict[str, str] = field(default_factory=dict)  # substring of the user turn -> reply text
    default_reply: str = "<verdict1>1</verdict1>"
    latency_s: float = 0.0
    fault_rate: float = 0.0
    faults: tuple[str, ...] = ("http500", "hang", "unparsable")
    hang_s: float = 60.0
    sticky_faults: bool = False  # the fault follows the request's content, so retries meet it again
    seed: int = 0
    gullible: bool = False
    generate: Callable[[list[dict], int], tuple[str, int, int]] | None = None  # messages, max_tokens -> text, in, out
    respond: Callable[[dict], str | None] | None = None  # request body -> reply text; None falls back to `replies`


def user_text(body: dict) -> str:
    content = [m for m in body.get("messages", []) if m.get("role") == "user"][-1]["content"]
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content


class JudgeServer:
    """Runs on its own thread and event loop; `with JudgeServer(script) as server: server.url`."""

    def __init__(self, script: ServerScript | None = None, port: int = 0, max_requests: int = 20_000, lifetime_s: float = 300.0):
        self.script = script or ServerScript()
        self.port, self.max_requests, self.lifetime_s = port, max_requests, lifetime_s
        self.requests = 0
        self.faults: Counter = Counter()
        self.in_flight = self.max_in_flight = 0
        self.bodies: list[dict] = []
        self.digests: list[str] = []  # sha256 of each raw request body, in arrival order
        self.answered: list[str] = []  # digests of the requests answered with a completion, in order
        self.authorizations: list[str | None] = []
        self._rng = random.Random(self.script.seed)
        self._model_lock = threading.Lock()
        self._stopped = threading.Event()

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> JudgeServer:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name="judge-server", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("judge test server did not start")
        return self

    def _serve(self, ready: threading.Event) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._open())
        ready.set()
        self.loop.call_later(self.lifetime_s, self.loop.stop)  # stops by itself, whatever the caller does
        self.loop.run_forever()
        self.loop.run_until_complete(self._runner.cleanup())
        self.loop.close()
        self._stopped.set()

    async def _open(self) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if not self._stopped.is_set() and self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._stopped.wait(10)

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> dict:
        return {"requests": self.requests, "faults": dict(self.faults), "max_in_flight": self.max_in_flight}

    # ----------------------------------------------------------------- handlers
    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "judge", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.requests > self.max_requests:
            return web.json_response({"error": "request budget of the test server spent"}, status=503)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            raw = await request.read()
            body, digest = json.loads(raw), hashlib.sha256(raw).hexdigest()
            self.bodies.append(body)
            self.digests.append(digest)
            self.authorizations.append(request.headers.get("Authorization"))
            fault = self._fault(body)
            if fault:
                self.faults[fault] += 1
            if fault == "hang":  # the client's timeout fires first; the handler is cancelled when it leaves
                await asyncio.sleep(self.script.hang_s)
            elif fault:
                return _injected(fault)
            if self.script.latency_s:
                await asyncio.sleep(self.script.latency_s)
            text, tokens_in, tokens_out = await self._answer(body)
            self.answered.append(digest)
            return web.json_response(_completion(body, text, tokens_in, tokens_out))
        finally:
            self.in_flight -= 1

    def _fault(self, body: dict) -> str | None:
        script = self.script
        if not script.fault_rate or not script.faults:
            return None
        if script.sticky_faults:
            rng = random.Random(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest() + bytes([script.seed % 256]))
        else:
            rng = self._rng
        return rng.choice(script.faults) if rng.random() < script.fault_rate else None

    async def _answer(self, body: dict) -> tuple[str, int, int]:
        text = user_text(body)
        if self.script.respond is not None:
            reply = self.script.respond(body)
            if reply is not None:
                return reply, len(text) // 4, len(reply) // 4
        if self.script.generate is not None:
            return await asyncio.get_running_loop().run_in_executor(None, self._generate, body)
        reply = next((r for key, r in self.script.replies.items() if key in text), self.script.default_reply)
        if self.script.gullible:
            reply = _swayed(reply, text)
        return reply, len(text) // 4, len(reply) // 4

    def _generate(self, body: dict) -> tuple[str, int, int]:
        with self._model_lock:  # one generation at a time, like a single-slot server
            return self.script.generate(body["messages"], int(body.get("max_tokens") or 64))


def _swayed(honest: str, text: str) -> str:
    """A hackable judge: verdict tags it reads override its own, and it obeys instructions it reads."""
    verdicts = {int(k): v for _, k, v in _TAGS.findall(honest)}
    verdicts.update({int(k): v for _, k, v in _TAGS.findall(text)})
    if _OBEY.search(text):
        verdicts = dict.fromkeys(range(1, max(verdicts, default=0) + 1), "1")
    return "".join(f"<verdict{k}>{v}</verdict{k}>" for k, v in sorted(verdicts.items()))


def _injected(fault: str) -> web.Response:
    if fault == "http500":
        return web.json_response({"error": "injected fault"}, status=500)
    if fault == "http429":
        return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "0"})
    if fault == "http400":
        return web.json_response({"error": "bad request"}, status=400)
    if fault == "malformed":
        return web.Response(text="<html>not json</html>", content_type="text/html")
    return web.json_response(_completion({}, "I am not sure about these facts.", 10, 8))  # "unparsable"


def _completion(body: dict, text: str, tokens_in: int, tokens_out: int) -> dict:
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "model": body.get("model", "judge"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answered request")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--faults", default="http500,hang,unparsable", help=f"comma-separated, of {','.join(FAULTS)}")
    parser.add_argument("--hang", type=float, default=60.0, help="seconds a hanging request waits")
    parser.add_argument("--sticky", action="store_true", help="faults follow the request content")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--script", help='JSON file: {"replies": {substring: reply}, "default_reply": str}')
    parser.add_argument("--gullible", action="store_true")
    parser.add_argument("--lifetime", type=float, default=300.0, help="seconds before the server stops itself")
    parser.add_argument("--max-requests", type=int, default=100_000)
    args = parser.parse_args()
    scripted = json.loads(open(args.script, encoding="utf-8").read()) if args.script else {}
    script = ServerScript(
        replies=scripted.get("replies", {}), default_reply=scripted.get("default_reply", ServerScript.default_reply),
        latency_s=args.latency, fault_rate=args.fault_rate, faults=tuple(f for f in args.faults.split(",") if f),
        hang_s=args.hang, sticky_faults=args.sticky, seed=args.seed, gullible=args.gullible,
    )
    server = JudgeServer(script, port=args.port, max_requests=args.max_requests, lifetime_s=args.lifetime).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(f"READY {server.url}", flush=True)
    while not done.wait(0.2) and not server._stopped.is_set():
        pass
    server.stop()
    print(json.dumps(server.stats()), flush=True)


if __name__ == "__main__":
    main()
