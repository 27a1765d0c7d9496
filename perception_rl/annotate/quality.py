"""Quality tools for an annotation run: a Markdown sample report, and the judge agreement check.

`sample_report` shows sampled problems as three columns (HTML tables, which Markdown viewers render):
figure and problem | kept solution | extracted annotations (plus the input's own annotations when it had
them, e.g. Geometry3K's diagram logic forms); then a few dropped problems per reason with the answers
their solutions reached.

`agreement` scores each record's kept solution with the perception judge twice: against the record's own
annotations (a solution states the facts extracted from it, so near 1 is expected) and against another
record's annotations (near 0 is expected). A low own score flags an extraction that invented facts or a
judge that misses paraphrases; a high other score flags generic annotations ("there is a triangle") or a
lenient judge. Problems that share a diagram (Geometry3K has such siblings) legitimately score high.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from html import escape
from pathlib import Path
from typing import Any

from perception_rl.annotate.stages import WorkDir
from perception_rl.annotate.worklog import atomic_jsonl, atomic_text, read_jsonl
from perception_rl.data.prompts import problem_text
from perception_rl.data.records import Record, load_records
from perception_rl.judge.base import Judge, JudgeRequest
from perception_rl.judge.cli import run as judge_in_chunks

_DROPPED_PER_REASON = 3


def find_records(work: WorkDir) -> Path:
    for output_format in ("jsonl", "parquet"):
        if work.records(output_format).is_file():
            return work.records(output_format)
    raise FileNotFoundError(f"no records.jsonl or records.parquet in {work.root}: run `perception-rl annotate write` first")


# ------------------------------------------------------------------------------------------------ report
def sample_report(problems: list[Record], work: WorkDir, samples: int = 20, seed: int = 0) -> Path:
    """Write report.md into the output folder and return its path."""
    records = load_records(find_records(work))
    texts = {row["key"]: row for row in read_jsonl(work.solutions)}
    graded = defaultdict(list)
    for row in read_jsonl(work.graded):
        graded[row["id"]].append(row)
    chosen = sorted(random.Random(seed).sample(range(len(records)), min(samples, len(records))))
    summary = json.loads(work.summary.read_text(encoding="utf-8")) if work.summary.is_file() else {}
    lines = [f"# Annotation sample report: {work.root}", "", *_counts(summary), "",
             f"## Annotated problems ({len(chosen)} of {len(records)}, seed {seed})", ""]
    for index in chosen:
        lines += _annotated(records[index], texts, work.root)
    lines += _dropped(problems, read_jsonl(work.annotations), graded)
    return atomic_text(work.root / "report.md", "\n".join(lines) + "\n")


def _counts(summary: dict[str, Any]) -> list[str]:
    if not summary:
        return ["(no summary.json yet)"]
    rows = [("input", f"{summary.get('input', {}).get('problems', '?')} problems, {summary.get('input', {}).get('bad', 0)} bad")]
    if "solve" in summary:
        rows.append(("solve", f"{summary['solve'].get('solutions')} solutions, {summary['solve'].get('pending', 0)} pending"))
    if "filter" in summary:
        f = summary["filter"]
        rows.append(("filter", f"{f['kept']} of {f['solutions']} kept; dropped {f['dropped_by_reason']}"))
    if "extract" in summary:
        e = summary["extract"]
        items = f"items kept {e['items_kept']} of {e['items_extracted']} {e['dropped_items_by_reason']}"
        rows.append(("extract", f"{e['annotated_problems']} annotated; dropped {e['dropped_problems_by_reason']}; {items}"))
    if "write" in summary:
        rows.append(("write", f"{summary['write']['records']} records"))
    tokens = ", ".join(f"{stage} {t['tokens_in']}/{t['tokens_out']}" for stage, t in summary.get("tokens", {}).items())
    return ["| stage | counts |", "|---|---|", *[f"| {stage} | {text} |" for stage, text in rows], "",
            f"Tokens in/out: {tokens or 'none'}"]


def _annotated(record: Record, texts: dict[str, dict], root: Path) -> list[str]:
    """One problem as a three-column HTML table: figure and problem | kept solution | annotations."""
    figures = "".join(f'<img src="{escape(Path(image).resolve().relative_to(root.resolve()).as_posix())}" width="260"><br>'
                      for image in record.images if isinstance(image, str))
    problem = f"{figures}<pre>{escape(problem_text(record))}</pre>Answer: <b>{escape(record.answer)}</b>"
    solutions = [texts[key] for key in (record.metadata.get("annotation_source") or {}).get("solutions", []) if key in texts]
    kept = "".join(f"<i>sample {s['sample']}</i><pre>{escape(s['text'])}</pre>" for s in solutions) or "(not found)"
    items = "".join(f"<li>{escape(item)}</li>" for item in record.annotations or [])
    facts = f"<ol>{items}</ol>"
    reference = record.metadata.get("reference_annotations")
    if reference:
        facts += "Input's own annotations:<ul>" + "".join(f"<li><code>{escape(r)}</code></li>" for r in reference) + "</ul>"
    header = f"<tr><th>Problem</th><th>Kept solution</th><th>Annotations ({len(record.annotations or [])})</th></tr>"
    row = f'<tr><td valign="top">{problem}</td><td valign="top">{kept}</td><td valign="top">{facts}</td></tr>'
    return [f"### {record.id}", "", f"<table>{header}{row}</table>", ""]


def _dropped(problems: list[Record], annotations: list[dict], graded: dict[str, list[dict]]) -> list[str]:
    by_id = {record.id: record for record in problems}
    per_reason = defaultdict(list)
    for row in annotations:
        if row.get("reason") and row["id"] in by_id and len(per_reason[row["reason"]]) < _DROPPED_PER_REASON:
            per_reason[row["reason"]].append(row)
    lines = ["## Dropped problems (up to 3 per reason)", ""]
    for reason, rows in sorted(per_reason.items()):
        lines += [f"### {reason}", ""]
        for row in rows:
            record = by_id[row["id"]]
            answers = ", ".join(f"sample {g['sample']}: {g['extracted']!r} ({g['reason'] or 'correct'})"
                                for g in sorted(graded.get(record.id, []), key=lambda g: g["sample"]))
            lines += [f"- **{record.id}** (gold {record.answer!r}): {_one_line(problem_text(record))}",
                      f"  - solutions: {answers or 'none'}"]
        lines.append("")
    return lines if per_reason else [*lines, "None.", ""]


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------------------------------------ agreement
def agreement(work: WorkDir, judge: Judge, seed: int = 0, limit: int | None = None, chunk_size: int = 512) -> dict[str, Any]:
    """Own vs another record's annotations, judged on each record's first kept solution; agreement.jsonl + .json."""
    records = [r for r in load_records(find_records(work)) if r.annotations]
    texts = {row["key"]: row["text"] for row in read_jsonl(work.solutions)}
    pairs = [(r, texts[keys[0]]) for r in records if (keys := (r.metadata.get("annotation_source") or {}).get("solutions"))
             and keys[0] in texts][:limit]
    if len(pairs) < 2:
        raise ValueError(f"agreement needs at least 2 annotated records with their solutions in {work.root}, found {len(pairs)}")
    other = _derangement(len(pairs), seed)
    requests = [JudgeRequest(tuple(r.annotations), text) for r, text in pairs]
    requests += [JudgeRequest(tuple(pairs[other[i]][0].annotations), text) for i, (_, text) in enumerate(pairs)]
    try:
        verdicts, _ = judge_in_chunks(judge, requests, chunk_size)
    finally:
        judge.close()
    n = len(pairs)
    rows = []
    for i, (record, _) in enumerate(pairs):
        own, foreign = verdicts[i], verdicts[n + i]
        rows.append({
            "id": record.id, "other_id": pairs[other[i]][0].id,
            "own_score": None if own.failure else own.score(), "other_score": None if foreign.failure else foreign.score(),
            "own_verdicts": list(own.values), "other_verdicts": list(foreign.values),
            "failure": own.failure or foreign.failure,
        })
    atomic_jsonl(work.root / "agreement.jsonl", rows)
    result = _agreement_summary(rows, judge)
    atomic_text(work.root / "agreement.json", json.dumps(result, indent=2) + "\n")
    return result


def _agreement_summary(rows: list[dict], judge: Judge) -> dict[str, Any]:
    own = [r["own_score"] for r in rows if r["own_score"] is not None]
    foreign = [r["other_score"] for r in rows if r["other_score"] is not None]
    own_mean = sum(own) / len(own) if own else None
    other_mean = sum(foreign) / len(foreign) if foreign else None
    return {
        "judge": repr(judge), "prompt": judge.template.label, "records": len(rows),
        "own_mean": own_mean, "other_mean": other_mean,
        "gap": None if own_mean is None or other_mean is None else own_mean - other_mean,
        "own_below_half": [r["id"] for r in rows if r["own_score"] is not None and r["own_score"] < 0.5],
        "other_above_half": [r["id"] for r in rows if r["other_score"] is not None and r["other_score"] > 0.5],
        "failures": sum(r["failure"] is not None for r in rows),
    }


def _derangement(n: int, seed: int) -> list[int]:
    """other[i] != i for every i: a seeded shuffle, each position paired with the next one in it."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    other = [0] * n
    for position, index in enumerate(order):
        other[index] = order[(position + 1) % n]
    return other

