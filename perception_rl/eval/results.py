"""Evaluation outputs on disk: per-item rows (resumable), the skip report, and the summary (JSON + Markdown).

Layout of an evaluation folder:

    predictions.jsonl          one row per item, in benchmark order (written when a run completes)
    predictions.rank<k>.jsonl  rows appended by process k while a run is in progress
    skipped.jsonl              items the adapter could not use, with the reason
    run.json                   what produced the rows (model, checkpoint, decoding); resuming checks it
    summary.json, summary.md   the numbers and the table

A run appends each finished batch to its own rank's file, so an interrupted run loses at most the batch in
flight; the next run reads every file here, skips the items already done, and merges all rows at the end.
A line cut off mid-write is dropped (its item is simply evaluated again).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

PREDICTIONS = "predictions.jsonl"
SHARD_GLOB = "predictions.rank*.jsonl"


def shard_path(folder: Path, rank: int) -> Path:
    return folder / f"predictions.rank{rank}.jsonl"


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of a JSONL file and the number of lines that did not parse (an interrupted write leaves one)."""
    rows, bad = [], 0
    if not path.is_file():
        return rows, bad
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict) and "id" in row:
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def finished_rows(folder: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Every row already written in `folder` (merged file first, then in-progress shards), keyed by id."""
    done: dict[str, dict[str, Any]] = {}
    bad = 0
    for path in [folder / PREDICTIONS, *sorted(folder.glob(SHARD_GLOB))]:
        rows, unreadable = read_jsonl(path)
        bad += unreadable
        for row in rows:
            done.setdefault(str(row["id"]), row)
    return done, bad


def repair_tail(path: Path) -> None:
    """Cut a last line that an interrupted write left without its newline, so appends start on a fresh line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        data = handle.read()
        handle.truncate(data.rfind(b"\n") + 1)


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows as whole lines, flushed before returning."""
    if not rows:
        return
    text = "".join(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n" for row in rows)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()


def merge_rows(folder: Path, order: list[str]) -> tuple[Path, int]:
    """Write every row into predictions.jsonl (benchmark order, then any others), then remove the shards.

    Returns the file and the number of rows whose id is not in `order` (items outside this run's set).
    """
    done, _ = finished_rows(folder)
    position = {item_id: k for k, item_id in enumerate(order)}
    rows = sorted(done.values(), key=lambda r: (position.get(str(r["id"]), len(order)), str(r["id"])))
    write_atomic(folder / PREDICTIONS, "".join(json.dumps(r, ensure_ascii=False, default=_jsonable) + "\n" for r in rows))
    for shard in folder.glob(SHARD_GLOB):
        shard.unlink()
    return folder / PREDICTIONS, sum(str(r["id"]) not in position for r in rows)


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees a half-written file."""
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.write_text(text, encoding="utf-8")
    temp.replace(path)


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is absent or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False, default=_jsonable) + "\n" for r in rows))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# ------------------------------------------------------------------------------------------------ table
def _percent(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as Markdown: an overall table, then one accuracy table per grouping field."""
    lines = [f"## {summary['benchmark']} - {summary['model']}", "", "| metric | value |", "|---|---|"]
    items = f"{summary['items']} ({summary['evaluated']} evaluated, {summary['skipped']} skipped"
    items += f", {summary['not_evaluated']} not evaluated yet)" if summary.get("not_evaluated") else ")"
    lines += [
        f"| items | {items} |",
        f"| accuracy (%) | {_percent(summary['accuracy'])} ({summary['correct']}/{summary['evaluated']}) |",
        f"| format compliance (%) | {_percent(summary['format_rate'])} |",
        f"| mean response length (tokens) | {_fmt(summary['mean_response_tokens'])} |",
        f"| perception score (%) | {_percent(summary['perception'])} ({summary['perception_items']} annotated items) |",
        *_perception_lines(summary),
        f"| answers settled by the LLM judge | {summary['llm_judged']} |",
    ]
    if summary.get("perception_judge"):
        lines.append(_judge_line(summary["perception_judge"]))
    if summary["skipped"]:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in summary["skipped_reasons"].items())
        lines.append(f"| skipped, by reason | {reasons} |")
    for field, rows in summary["groups"].items():
        lines += ["", f"### accuracy by {field}", "", f"| {field} | items | correct | accuracy (%) |", "|---|---:|---:|---:|"]
        lines += [f"| {r['value']} | {r['items']} | {r['correct']} | {_percent(r['accuracy'])} |" for r in rows]
    return "\n".join(lines) + "\n"


def _perception_lines(summary: dict[str, Any]) -> list[str]:
    """Every gold fact stated, and right answers with wrong perception (summaries of older runs lack both)."""
    scored, right = summary.get("perception_items", 0), summary.get("right_and_scored")
    if not scored or right is None:
        return []
    wrong = summary["right_answer_wrong_perception"]
    return [
        f"| every gold fact stated (%) | {_percent(summary['perception_correct'] / scored)} "
        f"({summary['perception_correct']}/{scored}) |",
        f"| right answers with wrong perception (%) | {_percent(wrong / right if right else math.nan)} "
        f"({wrong}/{right}) |",
    ]


def _judge_line(judge: dict[str, Any]) -> str:
    """The perception judge's health in this run: what it was asked, what failed, how its replies parsed."""
    kinds = ", ".join(f"{kind} {n}" for kind, n in judge["failures_by_kind"].items())
    items = judge["items"]
    failed = f"{judge['failures']} failed" + (f" ({kinds})" if kinds else "")
    return (f"| perception judge | {judge['requests']} requests, {failed}; "
            f"items answered {items['answered']}, unparsable {items['unparsable']}, missing {items['missing']} |")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"
