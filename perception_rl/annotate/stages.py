"""The four stages. Each reads the previous stage's file in the output folder and writes its own:

    solve    problems -> solutions.jsonl      K chains of thought per problem from a multimodal endpoint
                                              (images inline), or the user's own solutions file
    filter   solutions -> graded.jsonl        keep those whose final answer is right (`rewards.answers.grade`,
                                              the accuracy reward's own check)
    extract  graded -> annotations.jsonl      atomic visual facts from kept solutions by a text LLM;
                                              normalised, de-duplicated, empty lists dropped with a reason
    write    annotations -> records.jsonl     training records (or .parquet), images copied beside them

Requests are keyed by a digest of their body (and sample index) and logged in log/<stage>.jsonl the moment
each reply arrives; a rerun sends only requests the log lacks. A failed request is not logged, so the
next run retries it. Each stage saves its counters to stats/<stage>.json.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from perception_rl.annotate.items import clean_items
from perception_rl.annotate.llm import ChatJob, ChatModel
from perception_rl.annotate.problems import BadRecord, image_bytes, write_records
from perception_rl.annotate.prompts import (
    DEFAULT_EXTRACT_PROMPT,
    DEFAULT_SOLVE_PROMPT,
    ExtractTemplate,
    SolveTemplate,
    parse_facts,
)
from perception_rl.annotate.worklog import WorkLog, atomic_jsonl, atomic_text, digest, read_jsonl
from perception_rl.data.prompts import problem_text
from perception_rl.data.records import Record
from perception_rl.judge.base import JudgeReply
from perception_rl.rewards.answers import grade

PROBLEM_DROP_REASONS = ("no_solution", "no_correct_solution", "extraction_failed", "unparsable_reply", "no_visual_facts")


class Solve:
    """Where solutions come from: a multimodal model, or a file of solutions the user already has.

    Args:
        model: the OpenAI-compatible multimodal endpoint; null when `solutions` is given.
        samples: chains of thought requested per problem (K).
        prompt: a shipped solve template by name ("solve-v1") or the path of a template YAML file.
        solutions: a JSONL file of existing solutions, one line per problem or solution:
            {"id": problem id, "solution": "..."} or {"id": ..., "solutions": ["...", ...]}. No requests are sent.
    """

    def __init__(self, model: ChatModel | None = None, samples: int = 4, prompt: str = DEFAULT_SOLVE_PROMPT,
                 solutions: str | None = None):
        if samples < 1:
            raise ValueError(f"solve.samples must be >= 1, got {samples}")
        if (model is None) == (solutions is None):
            raise ValueError("solve: give exactly one of solve.model (generate solutions) and solve.solutions (a file)")
        self.model, self.samples, self.prompt, self.solutions = model, samples, prompt, solutions


class Extract:
    """How kept solutions become annotation lists.

    Args:
        model: the OpenAI-compatible text endpoint that lists the facts (temperature 0 suits it).
        prompt: a shipped extraction template by name ("extract-v1") or the path of a template YAML file.
        solutions_per_problem: kept solutions read per problem (first ones by sample index); their facts
            are merged. 1 reads one solution per problem, as the paper's pipeline does.
        max_items: most annotations kept per problem (later ones are dropped and counted).
        max_item_chars: longer items are dropped and counted (a sentence of reasoning, not a fact).
        drop_stated_in_problem: drop items that the problem text states word for word.
    """

    def __init__(self, model: ChatModel | None = None, prompt: str = DEFAULT_EXTRACT_PROMPT, solutions_per_problem: int = 1,
                 max_items: int = 12, max_item_chars: int = 200, drop_stated_in_problem: bool = True):
        if solutions_per_problem < 1 or max_items < 1 or max_item_chars < 1:
            raise ValueError("extract: solutions_per_problem, max_items and max_item_chars must be >= 1")
        self.model, self.prompt, self.solutions_per_problem = model, prompt, solutions_per_problem
        self.max_items, self.max_item_chars, self.drop_stated_in_problem = max_items, max_item_chars, drop_stated_in_problem


class WorkDir:
    """The output folder: work logs, stage files, stage counters, records and summary."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.solutions, self.graded = self.root / "solutions.jsonl", self.root / "graded.jsonl"
        self.annotations, self.summary = self.root / "annotations.jsonl", self.root / "summary.json"

    def log(self, stage: str) -> Path:
        return self.root / "log" / f"{stage}.jsonl"

    def stats(self, stage: str) -> Path:
        return self.root / "stats" / f"{stage}.json"

    def records(self, output_format: str) -> Path:
        return self.root / f"records.{output_format}"

    def save_stats(self, stage: str, stats: dict[str, Any]) -> dict[str, Any]:
        atomic_text(self.stats(stage), json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
        return stats


# ------------------------------------------------------------------------------------------------ solve
def solve(problems: list[Record], config: Solve, work: WorkDir) -> dict[str, Any]:
    """Solutions for every problem (K samples each) into solutions.jsonl; only unlogged requests are sent."""
    if config.solutions is not None:
        rows, bad = import_solutions(Path(config.solutions), {r.id for r in problems})
        atomic_jsonl(work.solutions, rows)
        return work.save_stats("solve", {"source": config.solutions, "problems": len(problems), "solutions": len(rows),
                                         "bad_lines": [b.to_dict() for b in bad], "pending": 0})
    model, template = config.model, SolveTemplate.load(config.prompt)
    wanted: list[tuple[str, int, str]] = []
    failed: list[dict[str, Any]] = []

    def jobs():
        queued = set()  # identical problems (same text and image) share their requests
        for record in problems:
            messages = template.messages(problem_text(record), [image_bytes(image) for image in record.images])
            for sample in range(config.samples):
                body = model.body(messages, sample)
                key = digest(body, f"sample={sample}")
                wanted.append((record.id, sample, key))
                if key not in log and key not in queued:
                    queued.add(key)
                    yield ChatJob(key, body, (record.id, sample))

    def on_reply(job: ChatJob, reply: JudgeReply) -> None:
        problem_id, sample = job.context
        if reply.failure is not None:
            failed.append({"id": problem_id, "sample": sample, "failure": reply.failure, "error": reply.error[:300]})
            return
        log.append({"key": job.key, "request": hashlib.sha256(job.body).hexdigest(), "id": problem_id, "sample": sample,
                    "text": reply.text or "", **_usage(reply), "prompt": template.label, "model": model.model})

    with WorkLog(work.log("solve")) as log:
        try:
            stats = model.run(jobs(), on_reply, "solve")
        finally:
            model.close()
        done = [log.get(key) for _, _, key in wanted]
        dropped_lines = log.torn_lines + log.bad_lines  # cut short by a crash, or not ours: their requests rerun
    rows = [{"id": pid, "sample": k, "key": key, "text": row["text"]} for (pid, k, key), row in zip(wanted, done) if row]
    atomic_jsonl(work.solutions, rows)
    replies = {key: row for (_, _, key), row in zip(wanted, done)}  # one per distinct request
    return work.save_stats("solve", {
        "prompt": template.label, "model": repr(model), "problems": len(problems), "samples": config.samples,
        "requests": len(replies), "done_before": len(replies) - stats.sent, "solutions": len(rows),
        "pending": sum(row is None for row in replies.values()), **_tokens([row for row in replies.values() if row]),
        "this_run": stats.to_dict(), "failed_requests": failed[:50], "log_lines_dropped": dropped_lines,
    })


def import_solutions(path: Path, problem_ids: set[str]) -> tuple[list[dict[str, Any]], list[BadRecord]]:
    """Rows of a user's solutions file; lines that cannot be used are reported with file and line."""
    rows, bad, count = [], [], Counter()
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            bad.append(BadRecord(where, f"not valid JSON ({err.msg})"))
            continue
        texts = raw.get("solutions", [raw.get("solution")]) if isinstance(raw, dict) else None
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            bad.append(BadRecord(where, "needs 'id' and a non-empty 'solution' string or 'solutions' list"))
            continue
        problem_id = str(raw.get("id"))
        if problem_id not in problem_ids:
            bad.append(BadRecord(where, f"field 'id': {problem_id!r} is not among the usable problems"))
            continue
        for text in texts:
            rows.append({"id": problem_id, "sample": count[problem_id], "key": digest("imported", problem_id, text), "text": text})
            count[problem_id] += 1
    return rows, bad


# ------------------------------------------------------------------------------------------------ filter
def filter_solutions(problems: list[Record], work: WorkDir) -> dict[str, Any]:
    """Grade every solution against its problem's answer into graded.jsonl (kept = correct)."""
    by_id = {record.id: record for record in problems}
    rows, reasons = [], Counter()
    for solution in read_jsonl(work.solutions):
        record = by_id.get(solution["id"])
        if record is None:  # the problem left the input since it was solved
            continue
        result = grade(solution["text"], record.answer, record.choices, record.metadata.get("precision"))
        reason = None if result.correct else ("no_final_answer" if result.extracted is None else "wrong_answer")
        reasons[reason or "kept"] += 1
        rows.append({"id": record.id, "sample": solution["sample"], "key": solution["key"], "correct": result.correct,
                     "extracted": result.extracted, "reason": reason})
    atomic_jsonl(work.graded, rows)
    kept_problems = {row["id"] for row in rows if row["correct"]}
    return work.save_stats("filter", {
        "solutions": len(rows), "kept": reasons.pop("kept", 0), "dropped_by_reason": dict(reasons),
        "problems_with_kept_solution": len(kept_problems), "problems_without": len(problems) - len(kept_problems),
    })


# ------------------------------------------------------------------------------------------------ extract
def extract(problems: list[Record], config: Extract, work: WorkDir) -> dict[str, Any]:
    """Annotation lists from kept solutions into annotations.jsonl; only unlogged requests are sent."""
    if config.model is None:
        raise ValueError("extract.model: the extract stage needs a text model endpoint")
    model, template = config.model, ExtractTemplate.load(config.prompt)
    texts = {row["key"]: row["text"] for row in read_jsonl(work.solutions)}
    graded = read_jsonl(work.graded)
    kept: dict[str, list[str]] = defaultdict(list)
    for row in sorted(graded, key=lambda r: r["sample"]):
        if row["correct"] and row["key"] in texts and len(kept[row["id"]]) < config.solutions_per_problem:
            kept[row["id"]].append(row["key"])
    plan: dict[str, list[tuple[str, str]]] = {}  # problem id -> (solution key, request key)
    failed: list[dict[str, Any]] = []

    def jobs():
        queued = set()
        for record in problems:
            for solution_key in kept.get(record.id, []):
                body = model.body(template.messages(problem_text(record), texts[solution_key], record.answer))
                key = digest(body)
                plan.setdefault(record.id, []).append((solution_key, key))
                if key not in log and key not in queued:
                    queued.add(key)
                    yield ChatJob(key, body, (record.id, solution_key))

    def on_reply(job: ChatJob, reply: JudgeReply) -> None:
        problem_id, solution_key = job.context
        if reply.failure is not None:
            failed.append({"id": problem_id, "solution": solution_key, "failure": reply.failure, "error": reply.error[:300]})
            return
        log.append({"key": job.key, "request": hashlib.sha256(job.body).hexdigest(), "id": problem_id,
                    "solution": solution_key, "text": reply.text or "", **_usage(reply), "prompt": template.label,
                    "model": model.model})

    with WorkLog(work.log("extract")) as log:
        try:
            stats = model.run(jobs(), on_reply, "extract")
        finally:
            model.close()
        replies = {key: log.get(key) for pairs in plan.values() for _, key in pairs}
        dropped_lines = log.torn_lines + log.bad_lines
    solved = {row["id"] for row in graded}
    rows = [_annotation_row(record, plan.get(record.id, []), replies, record.id in solved, config, template.label)
            for record in problems]
    atomic_jsonl(work.annotations, rows)
    items = Counter()
    for row in rows:
        items.update(row.get("dropped_items", {}))
    requests = len(replies)
    annotated = [row for row in rows if row["annotations"]]
    return work.save_stats("extract", {
        "prompt": template.label, "model": repr(model), "requests": requests, "done_before": requests - stats.sent,
        "pending": sum(r is None for r in replies.values()), "annotated_problems": len(annotated),
        "dropped_problems_by_reason": dict(Counter(row["reason"] for row in rows if row["reason"])),
        "items_extracted": sum(row.get("raw_items", 0) for row in rows),
        "items_kept": sum(len(row["annotations"]) for row in rows), "dropped_items_by_reason": dict(items),
        "unparsable_replies": sum(row.get("unparsable_replies", 0) for row in rows),
        **_tokens([r for r in replies.values() if r]), "this_run": stats.to_dict(), "failed_requests": failed[:50],
        "log_lines_dropped": dropped_lines,
    })


def _annotation_row(record: Record, pairs: list[tuple[str, str]], replies: dict, solved: bool, config: Extract,
                    prompt: str) -> dict[str, Any]:
    """One problem's cleaned annotation list, or an empty one with the reason it has none."""
    row: dict[str, Any] = {"id": record.id, "annotations": [], "solutions": [s for s, _ in pairs], "prompt": prompt}
    if not pairs:
        return {**row, "reason": "no_correct_solution" if solved else "no_solution"}
    texts = [replies[key]["text"] for _, key in pairs if replies.get(key)]
    if len(texts) < len(pairs):
        return {**row, "reason": "extraction_failed"}
    parsed = [parse_facts(text) for text in texts]
    found = [item for facts in parsed if facts is not None for item in facts]
    annotations, dropped = clean_items(found, problem_text(record), config.max_items, config.max_item_chars,
                                       config.drop_stated_in_problem)
    unparsable = sum(facts is None for facts in parsed)
    reason = None if annotations else ("unparsable_reply" if unparsable == len(parsed) else "no_visual_facts")
    return {**row, "annotations": annotations, "raw_items": len(found), "dropped_items": dict(dropped),
            "unparsable_replies": unparsable, "reason": reason}


# ------------------------------------------------------------------------------------------------ write
def write(problems: list[Record], work: WorkDir, output_format: str = "jsonl") -> dict[str, Any]:
    """Training records for every problem with annotations; the input's own annotations move to metadata."""
    extracted = {row["id"]: row for row in read_jsonl(work.annotations) if row["annotations"]}
    records = []
    for record in problems:
        row = extracted.get(record.id)
        if row is None:
            continue
        metadata = {**record.metadata, "annotation_source": {"solutions": row["solutions"], "prompt": row["prompt"]}}
        if record.annotations:
            metadata["reference_annotations"] = record.annotations
        records.append(replace(record, annotations=row["annotations"], metadata=metadata))
    path = write_records(records, work.records(output_format))
    counts = [len(r.annotations or []) for r in records]
    return work.save_stats("write", {
        "records": len(records), "path": str(path), "annotations_per_record_mean": sum(counts) / len(counts) if counts else None,
        "annotations_per_record_min": min(counts, default=None), "annotations_per_record_max": max(counts, default=None),
    })


def _usage(reply: JudgeReply) -> dict[str, Any]:
    return {"tokens_in": reply.tokens_in, "tokens_out": reply.tokens_out, "latency_s": round(reply.latency_s, 4),
            "retries": reply.retries}


def _tokens(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Tokens the current requests cost, summed over every run that answered them."""
    return {"tokens_in": sum(int(r.get("tokens_in") or 0) for r in rows),
            "tokens_out": sum(int(r.get("tokens_out") or 0) for r in rows)}
