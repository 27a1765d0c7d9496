"""Judge bookkeeping: the verdict cache and the health counters logged every step."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

from perception_rl.judge.types import FAILURE_KINDS, ITEM_OUTCOMES, JudgeVerdict

__all__ = ["FAILURE_KINDS", "JudgeHealth", "VerdictCache", "percentile"]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated q-th percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class VerdictCache:
    """LRU map from a request's digest to its successful verdict, kept across steps.

    Args:
        max_entries: most verdicts kept; 0 disables the cache.
    """

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, JudgeVerdict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> JudgeVerdict | None:
        with self._lock:
            verdict = self._entries.get(key)
            if verdict is not None:
                self._entries.move_to_end(key)
            return verdict

    def put(self, key: str, verdict: JudgeVerdict) -> None:
        if self.max_entries <= 0 or verdict.failure is not None:  # failures are retried next time, not remembered
            return
        with self._lock:
            self._entries[key] = verdict
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def state_dict(self) -> dict:
        """The entries, oldest first, as plain data (checkpoints load with weights_only)."""
        with self._lock:
            return {"entries": [[key, verdict.to_dict()] for key, verdict in self._entries.items()]}

    def load_state_dict(self, state: dict) -> None:
        with self._lock:
            self._entries.clear()
            for key, fields in state.get("entries", []):
                self._entries[key] = JudgeVerdict.from_dict(fields)


class JudgeHealth:
    """Counters since the last `snapshot(reset=True)`: one step's worth when the reward logs every step.

    Requests, cache hits, failures by kind, retries, latency and tokens count what was sent to the backend.
    The item outcomes (answered / unparsable / missing, see `JudgeVerdict`) count the facts of every verdict
    the judge read a reply for, served from the cache or not: they describe the scores handed out.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests = self.cache_hits = self.retries = self.neutralised = 0
        self.tokens_in = self.tokens_out = 0
        self.failures = dict.fromkeys(FAILURE_KINDS, 0)
        self.items = dict.fromkeys(ITEM_OUTCOMES, 0)
        self.latencies: list[float] = []

    def record(self, verdict: JudgeVerdict, retries: int = 0) -> None:
        with self._lock:
            self.requests += 1
            self.neutralised += int(verdict.neutralised)
            if verdict.replied:
                self.items["answered"] += verdict.answered
                self.items["unparsable"] += verdict.unparsable
                self.items["missing"] += verdict.missing
            if verdict.cached:
                self.cache_hits += 1
                return
            self.retries += retries
            self.tokens_in += verdict.tokens_in
            self.tokens_out += verdict.tokens_out
            self.latencies.append(verdict.latency_s)
            if verdict.failure is not None:
                self.failures[verdict.failure] += 1

    def snapshot(self, reset: bool = True) -> dict[str, float]:
        """Flat counters: requests, cache_hits, failures, failures/<kind>, items/<outcome>, retries, latency, tokens."""
        with self._lock:
            out = {
                "requests": float(self.requests),
                "cache_hits": float(self.cache_hits),
                "failures": float(sum(self.failures.values())),
                **{f"failures/{kind}": float(n) for kind, n in self.failures.items()},
                **{f"items/{outcome}": float(n) for outcome, n in self.items.items()},
                "retries": float(self.retries),
                "neutralised": float(self.neutralised),
                "latency_p50_s": percentile(self.latencies, 50),
                "latency_p95_s": percentile(self.latencies, 95),
                "tokens_in": float(self.tokens_in),
                "tokens_out": float(self.tokens_out),
            }
            if reset:
                self.reset()
            return out
