"""`AnswerJudge`: the optional LLM second stage of benchmark scoring, through perception-rl's `Judge` clients.

The rules in `perception_rl.rewards.answers` decide first. A response they cannot settle (no marked answer,
only an unmarked final line, or prose in the answer block, and judged wrong) goes to an LLM, which reads
the whole response, finds its final answer and says whether it matches the reference (one request that
both extracts and judges; paper.md §6). The same judge backends as the perception reward serve it
(`OpenAIJudge` against `vllm serve`, `LocalJudge`, ...) with an answer-checking prompt template; their
cache, timeouts, retries and failure policy apply. A failed request keeps the rules' verdict and is
counted. Rows it decides carry `judged_by: "llm"` and the judge's reply.
"""

from __future__ import annotations

import string
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from perception_rl.data.records import Record
from perception_rl.judge.base import Judge, JudgeRequest
from perception_rl.judge.prompt import DEFAULT_PROMPT

ANSWER_PROMPT = str(Path(__file__).with_name("prompts") / "answer-v1.yaml")


class AnswerJudge:
    """Sends the responses the rules cannot settle to an LLM judge for a true/false verdict on the final answer.

    Args:
        judge: the backend (`perception_rl.judge.OpenAIJudge`, `LocalJudge`, or any `Judge`). Left at the
            perception prompt, it is switched to the answer-checking template `prompt`.
        prompt: the answer-checking template (name of a shipped judge template, or a YAML path); default
            perception_rl/eval/prompts/answer-v1.yaml.
        recheck: "unsettled" sends only what the rules cannot settle; "all" sends every response (the
            paper's protocol, where an LLM judges every answer).
    """

    def __init__(self, judge: Judge, prompt: str | None = None, recheck: Literal["unsettled", "all"] = "unsettled"):
        if recheck not in ("unsettled", "all"):
            raise ValueError(f"answer_judge.recheck must be 'unsettled' or 'all', got {recheck!r}")
        self.judge = judge
        self.recheck = recheck
        if prompt is not None or judge.prompt == DEFAULT_PROMPT:
            judge.prompt = prompt or ANSWER_PROMPT  # judges build their template on first use, so this takes effect

    def settle(self, rows: list[dict[str, Any]], records: list[Record]) -> Counter:
        """Judge the rows that need it, in place (correct, judged_by, judge_reply); returns usage counts."""
        todo = [k for k, row in enumerate(rows) if self.recheck == "all" or not row["settled"]]
        counts: Counter = Counter()
        if not todo:
            return counts
        requests = [JudgeRequest((reference_statement(records[k]),), rows[k]["response"]) for k in todo]
        verdicts = self.judge.judge(requests)
        counts["judge_requests"] += len(todo)
        for k, verdict in zip(todo, verdicts):
            row = rows[k]
            if verdict.failure is not None or not verdict.values:
                counts["judge_failures"] += 1
                row["judge_failure"] = verdict.failure or "no verdict"
                continue
            correct = verdict.values[0] >= 0.5
            counts["judge_changed"] += correct != row["correct"]
            row.update(correct=correct, judged_by="llm", settled=True, judge_reply=verdict.reply)
        return counts


def reference_statement(record: Record) -> str:
    """The problem, its options and the gold answer (with the option's text for a letter), as the judge's one fact."""
    problem = " ".join(record.problem.split())
    parts = [f"Problem: {problem}"]
    gold = record.answer.strip()
    if record.choices:
        parts.append("Options: " + " ".join(f"{string.ascii_uppercase[i]}. {c}" for i, c in enumerate(record.choices)))
        if len(gold) == 1 and gold.upper() in string.ascii_uppercase[: len(record.choices)]:
            gold = f"{gold.upper()} ({record.choices[string.ascii_uppercase.index(gold.upper())]})"
    if record.metadata.get("precision") is not None:
        parts.append(f"Precision: {int(record.metadata['precision'])} decimal places")
    parts.append(f"Reference answer: {gold}")
    return "\n".join(parts)
