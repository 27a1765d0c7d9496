"""Judge client throughput: N requests against a local OpenAI-compatible server with fixed latency.

    .venv/bin/python benchmarks/judge_throughput.py                      # 1,024 requests, 200 ms, concurrency 128
    .venv/bin/python benchmarks/judge_throughput.py --requests 4096 --concurrency 512 --latency 0.1

The server (tests/judge_server.py) runs in its own process, as a real judge server would, on 127.0.0.1;
it stops by itself after --lifetime seconds. The ideal wall time is ceil(N / concurrency) x latency; the
script prints each run's wall time, its ratio to the ideal, latency p50/p95, and the server's peak
concurrency. Requests are distinct and the cache is off, so every request reaches the server.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def start_server(latency: float, lifetime: float) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "judge_server.py"), "--latency", str(latency), "--lifetime", str(lifetime)],
        stdout=subprocess.PIPE, text=True,
    )
    line = server.stdout.readline().strip()
    if not line.startswith("READY "):
        server.kill()
        raise RuntimeError(f"judge server failed to start: {line!r}")
    return server, line.removeprefix("READY ")


def run_once(url: str, requests: int, concurrency: int) -> tuple[float, dict[str, float]]:
    from perception_rl.judge import JudgeRequest, OpenAIJudge

    judge = OpenAIJudge(base_url=url, model="judge", max_concurrency=concurrency, request_timeout=30, cache_size=0)
    batch = [JudgeRequest(("There are 2 circles.",), f"Response {i}: I see 2 circles.") for i in range(requests)]
    judge.judge(batch[:1])  # warm-up: event loop thread, session, first connection (not timed)
    judge.health.reset()
    gc.collect()  # start each timed run from a clean heap, as timeit does
    start = time.perf_counter()
    verdicts = judge.judge(batch)
    wall = time.perf_counter() - start
    failed = sum(v.failure is not None for v in verdicts)
    health = judge.health.snapshot()
    judge.close()
    if failed:
        raise RuntimeError(f"{failed} of {requests} requests failed")
    return wall, health


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1024)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lifetime", type=float, default=300.0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    ideal = math.ceil(args.requests / args.concurrency) * args.latency
    server, url = start_server(args.latency, args.lifetime)
    try:
        walls = []
        for k in range(args.repeats):
            wall, health = run_once(url, args.requests, args.concurrency)
            walls.append(wall)
            print(
                f"run {k + 1}: {args.requests} requests in {wall:.3f} s = {wall / ideal:.3f} x ideal ({ideal:.2f} s); "
                f"{args.requests / wall:.0f} req/s; latency p50 {health['latency_p50_s']:.3f} s p95 {health['latency_p95_s']:.3f} s"
            )
        best, median = min(walls), statistics.median(walls)
        print(f"best {best:.3f} s ({best / ideal:.3f} x ideal), median {median:.3f} s ({median / ideal:.3f} x ideal)")
    finally:
        server.terminate()
        stats = server.communicate(timeout=15)[0].strip().splitlines()
        print(f"server: {stats[-1] if stats else 'no stats'}")


if __name__ == "__main__":
    main()
