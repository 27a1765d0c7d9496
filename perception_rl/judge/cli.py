"""`perception-rl judge`: score a JSONL file of (annotations, response) pairs with a configured judge.

    perception-rl judge --config configs/judges/rules.yaml --input pairs.jsonl
    perception-rl judge --config configs/judges/qwen2_5_32b_vllm.yaml --input pairs.jsonl \\
        --judge.init_args.base_url http://127.0.0.1:8000/v1 --judge.init_args.request_timeout 30

`--config` takes a judge config (`judge: {class_path: ..., init_args: ...}`) or a training config whose
`model.rewards` hold a PerceptionReward (its judge is used); `--judge.init_args.*` override single values.
Input lines: {"id": optional, "annotations": list or "<info1>..</info1>" string, "response": str,
"images": optional paths relative to the file, "expected": optional 0/1 per annotation (agreement is
then reported)}. Output lines (default <input>.verdicts.jsonl): id, score, per-item verdicts, failure
kind and message, per-item outcomes (answered / unparsable / missing), latency, tokens, cached /
neutralised flags, the judge's raw reply and the prompt label. Prints a summary: mean score, failures by
kind, item outcomes, latency p50/p95, throughput. Exits with status 1 when requests were sent and none
succeeded; the last lines then name the endpoint, the first error and what to check.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser

from perception_rl.data.records import RecordError, parse_annotations
from perception_rl.judge.base import Judge
from perception_rl.judge.health import percentile
from perception_rl.judge.types import FAILURE_KINDS, ITEM_OUTCOMES, Average, JudgeRequest, JudgeVerdict

# Where to look first, by the first failure's kind ({endpoint} and {error} filled in).
_HINTS = {
    "connection_error": "cannot connect to {endpoint}: is the server running? The header of "
                        "configs/judges/openai_local.yaml has the command that starts one ({error})",
    "timeout": "{endpoint} did not answer in time ({error}): is the model still loading, or the server overloaded? "
               "raise --judge.init_args.request_timeout or lower max_concurrency",
    "http_error": "{endpoint} refused the requests ({error}): check judge.init_args.model against GET {endpoint}/models "
                  "and the API key variable (judge.init_args.api_key_env)",
    "unparsable": "{endpoint} answered, but with no verdict tag holding a number ({error}): the model ignores the "
                  "prompt's format; see the 'reply' field of the verdicts file, try a stronger model or another prompt",
    "error": "judging through {endpoint} failed: {error}",
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="perception-rl judge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=str | None, default=None, help="judge config or training config (YAML)")
    parser.add_argument("--judge", type=Judge, required=True, help="the judge (class_path + init_args)")
    parser.add_argument("--input", type=str, required=True, help="JSONL file of annotations/response pairs")
    parser.add_argument("--output", type=str | None, default=None, help="verdicts file; <input>.verdicts.jsonl if unset")
    parser.add_argument("--average", type=Average, default="reference", help="over reference items or emitted verdicts")
    parser.add_argument("--chunk_size", type=int, default=1024, help="requests per judge batch")
    parser.add_argument("--summary_json", type=str | None, default=None, help="also write the summary as JSON here")
    return parser


def judge_spec(config_path: str) -> dict:
    """The judge's class_path/init_args from a judge config or from a training config's PerceptionReward."""
    raw = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
    if isinstance(raw.get("judge"), dict):
        return raw["judge"]
    for reward in (raw.get("model") or {}).get("rewards") or []:
        if str(reward.get("class_path", "")).endswith("PerceptionReward"):
            judge = (reward.get("init_args") or {}).get("judge")
            if judge:
                return judge
    raise ValueError(f"{config_path}: no `judge:` section and no PerceptionReward with a judge under model.rewards")


def read_pairs(path: Path) -> list[tuple[str, JudgeRequest, list[float] | None]]:
    """(id, request, expected verdicts) per line; errors name the file, line and field."""
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            raise RecordError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("response"), str):
            raise RecordError(f"{where}: field 'response' must be a string")
        annotations = parse_annotations(raw.get("annotations"), where) or []
        images = tuple((path.parent / p).read_bytes() for p in raw.get("images") or [])
        expected = raw.get("expected")
        if expected is not None and len(expected) != len(annotations):
            raise RecordError(f"{where}: field 'expected' needs one 0/1 per annotation ({len(annotations)})")
        pairs.append((str(raw.get("id", number)), JudgeRequest(tuple(annotations), raw["response"], images), expected))
    return pairs


def run(judge: Judge, requests: list[JudgeRequest], chunk_size: int) -> tuple[list[JudgeVerdict], float]:
    """All verdicts (in order) and the wall time, judging `chunk_size` requests per batch."""
    start, verdicts = time.perf_counter(), []
    for begin in range(0, len(requests), chunk_size):
        verdicts += judge.start(requests[begin : begin + chunk_size]).result()
    return verdicts, time.perf_counter() - start


def summarise(
    judge: Judge, verdicts: list[JudgeVerdict], expected: list, wall_s: float, average: str
) -> dict[str, Any]:
    judged = [v for v in verdicts if v.failure is None and v.num_items]
    failures = {kind: sum(v.failure == kind for v in verdicts) for kind in FAILURE_KINDS}
    replied = [v for v in verdicts if v.replied]
    sent = [v.latency_s for v in verdicts if not v.cached and v.num_items]
    summary = {
        "judge": repr(judge), "prompt": judge.template.label, "pairs": len(verdicts), "judged": len(judged),
        "mean_score": sum(v.score(average) for v in judged) / len(judged) if judged else None,
        "failures": sum(failures.values()), "failures_by_kind": failures,
        "items": {outcome: sum(getattr(v, outcome) for v in replied) for outcome in ITEM_OUTCOMES},
        "requests": sum(v.num_items > 0 for v in verdicts), "endpoint": judge.endpoint,
        "first_error": next((f"{v.failure}: {v.error}" for v in verdicts if v.failure), None),
        "latency_p50_s": percentile(sent, 50) if sent else None,
        "latency_p95_s": percentile(sent, 95) if sent else None,
        "wall_s": wall_s, "throughput_rps": len(verdicts) / wall_s if wall_s > 0 else None,
        "cache_hits": sum(v.cached for v in verdicts), "neutralised": sum(v.neutralised for v in verdicts),
        "tokens_in": sum(v.tokens_in for v in verdicts), "tokens_out": sum(v.tokens_out for v in verdicts),
        "average": average,
    }
    pairs = [(v, e) for v, e in zip(verdicts, expected) if e is not None and v.failure is None]
    if pairs:
        items = [(round(v.values[k]) if k < len(v.values) else 0) == int(e[k]) for v, e in pairs for k in range(len(e))]
        summary["item_agreement"] = sum(items) / len(items) if items else None
    return summary


def print_summary(s: dict[str, Any]) -> None:
    def fmt(value, spec=".3f"):
        return "n/a" if value is None else format(value, spec)

    kinds = ", ".join(f"{kind} {n}" for kind, n in s["failures_by_kind"].items())
    print(f"judge: {s['judge']}\nprompt: {s['prompt']}")
    print(f"pairs: {s['pairs']}  judged: {s['judged']}  "
          f"mean score: {fmt(s['mean_score'])} ({s['average']} average, failures excluded)")
    print(f"failures: {s['failures']} ({kinds})")
    print("items: " + ", ".join(f"{outcome} {n}" for outcome, n in s["items"].items()))
    print(f"latency: p50 {fmt(s['latency_p50_s'])} s  p95 {fmt(s['latency_p95_s'])} s  "
          f"throughput: {fmt(s['throughput_rps'], '.1f')} pairs/s ({s['pairs']} in {s['wall_s']:.2f} s)")
    print(f"cache hits: {s['cache_hits']}  neutralised: {s['neutralised']}  "
          f"tokens in/out: {s['tokens_in']}/{s['tokens_out']}")
    if "item_agreement" in s:
        print(f"item agreement with 'expected': {fmt(s['item_agreement'])}")


def failure_report(s: dict[str, Any], verdicts: list[JudgeVerdict]) -> str | None:
    """The closing lines when requests were sent and none succeeded (None otherwise): endpoint, first error, hint."""
    if not s["requests"] or s["judged"]:
        return None
    first = next(v for v in verdicts if v.failure)
    error = f"{first.failure}: {first.error}"
    hint = _HINTS.get(first.failure, _HINTS["error"]).format(endpoint=s["endpoint"], error=error)
    return f"error: no judge request succeeded ({s['failures']} of {s['requests']} failed)\n{hint}"


def _config_to_judge_args(argv: list[str]) -> list[str]:
    """Turn `--config FILE` into `--judge <spec>` so that later `--judge.init_args.*` override it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    return ["--judge", json.dumps(judge_spec(known.config)), *rest] if known.config else rest


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    cfg = parser.parse_args(_config_to_judge_args(argv))
    judge: Judge = parser.instantiate(cfg).judge
    input_path = Path(cfg.input)
    pairs = read_pairs(input_path)
    # torch, transformers and lightning leave ~450k objects on the heap; a full collection of them takes
    # ~0.2 s and stalls the request loop mid-batch. This process is ours: freeze them out of collection.
    gc.collect()
    gc.freeze()
    try:
        verdicts, wall_s = run(judge, [request for _, request, _ in pairs], cfg.chunk_size)
    finally:
        judge.close()
    output = Path(cfg.output) if cfg.output else input_path.with_suffix(".verdicts.jsonl")
    with output.open("w", encoding="utf-8") as handle:
        for (pair_id, _, _), verdict in zip(pairs, verdicts):
            row = {"id": pair_id, "score": None if verdict.failure else verdict.score(cfg.average), **verdict.to_dict()}
            handle.write(json.dumps({**row, "verdicts": row.pop("values"), "prompt": judge.template.label}) + "\n")
    summary = summarise(judge, verdicts, [e for _, _, e in pairs], wall_s, cfg.average)
    print_summary(summary)
    print(f"wrote {len(verdicts)} verdicts to {output}")
    if cfg.summary_json:
        Path(cfg.summary_json).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    report = failure_report(summary, verdicts)
    if report:  # an audit that judged nothing must not pass for one that did (scripts check the status)
        print(report, flush=True)
        raise SystemExit(1)
