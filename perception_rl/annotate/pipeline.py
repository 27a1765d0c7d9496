"""`AnnotatePipeline`: the configuration of one annotation run and the orchestrator of its stages.

    read problems -> solve -> filter -> extract -> write -> summary.json

Any stage runs alone (`perception-rl annotate solve|filter|extract|write --config C`) or all in order
(`perception-rl annotate run --config C`); each reads the previous stage's file in `output_dir`. Rerunning
with the same `output_dir` resumes: finished requests are read from the work logs, never sent again.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal, get_args

from perception_rl.annotate.problems import BadRecord, InputFormat, read_problems
from perception_rl.annotate.stages import Extract, Solve, WorkDir, extract, filter_solutions, solve, write
from perception_rl.annotate.worklog import atomic_text, exclusive
from perception_rl.data.records import Record

Stage = Literal["solve", "filter", "extract", "write"]
STAGES: tuple[str, ...] = get_args(Stage)


class AnnotatePipeline:
    """From raw problems to annotated training records (paper.md §4), resumable.

    Args:
        input: the problems: a record file (.jsonl/.json/.parquet), a Geometry3K release folder, or a file of
            rows in the authors' shape (see `input_format`).
        output_dir: where work logs, stage files, records, summary.json and report.md go; rerunning with
            the same folder skips every finished request.
        solve: the solve stage: a multimodal model and K samples per problem, or an existing solutions file.
        extract: the extract stage: a text model, the prompt template and the limits on items.
        input_format: "records" (this package's records), "geometry3k" (the official per-problem folders)
            or "authors" (problem / answer / images / visual_key_info rows).
        split: the Geometry3K split folder to read ("train", "val" or "test").
        output_format: "jsonl" or "parquet" for records.<format>.
        images_outside_data_dir: allow image paths that lead outside the input file's folder.
    """

    def __init__(
        self,
        input: str,
        output_dir: str,
        solve: Solve,
        extract: Extract,
        input_format: InputFormat = "records",
        split: str = "train",
        output_format: Literal["jsonl", "parquet"] = "jsonl",
        images_outside_data_dir: bool = False,
    ):
        if input_format not in get_args(InputFormat):
            raise ValueError(f"input_format must be one of {get_args(InputFormat)}, got {input_format!r}")
        if output_format not in ("jsonl", "parquet"):
            raise ValueError(f"output_format must be 'jsonl' or 'parquet', got {output_format!r}")
        self.input, self.output_dir, self.input_format, self.split = input, output_dir, input_format, split
        self.solve, self.extract, self.output_format = solve, extract, output_format
        self.images_outside_data_dir = images_outside_data_dir
        self.work = WorkDir(output_dir)

    def run(self, stages: Sequence[str] = STAGES) -> dict[str, Any]:
        """Run the stages in order; returns (and writes) the summary."""
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
        with exclusive(self.output_dir):
            problems = self.read_problems()
            for stage in [s for s in STAGES if s in stages]:
                began = time.perf_counter()
                if stage == "solve":
                    stats = solve(problems, self.solve, self.work)
                elif stage == "filter":
                    stats = filter_solutions(problems, self.work)
                elif stage == "extract":
                    stats = extract(problems, self.extract, self.work)
                else:
                    stats = write(problems, self.work, self.output_format)
                stats = self.work.save_stats(stage, {**stats, "wall_s": round(time.perf_counter() - began, 3)})
                print(f"{stage}: {one_line(stage, stats)} [{stats['wall_s']:.1f} s]", file=sys.stderr, flush=True)
            return self.summarise()

    def read_problems(self) -> list[Record]:
        """Usable problems; bad ones are printed with file and line, and counted in stats/input.json."""
        problems, bad = read_problems(self.input, self.input_format, self.split, self.images_outside_data_dir)
        for item in bad:
            print(f"bad record {item} (skipped)", file=sys.stderr)
        self.work.save_stats("input", {
            "input": str(self.input), "input_format": self.input_format, "problems": len(problems), "bad": len(bad),
            "bad_by_reason": _reason_counts(bad), "bad_records": [b.to_dict() for b in bad],
        })
        print(f"input: {len(problems)} problems, {len(bad)} bad records", file=sys.stderr, flush=True)
        return problems

    def summarise(self) -> dict[str, Any]:
        """summary.json: the counters of every stage run so far, drop reasons, and tokens per model stage."""
        summary: dict[str, Any] = {}
        for stage in ("input", *STAGES):
            path = self.work.stats(stage)
            if path.is_file():
                summary[stage] = json.loads(path.read_text(encoding="utf-8"))
        summary["tokens"] = {
            stage: {k: summary[stage].get(k, 0) for k in ("tokens_in", "tokens_out")}
            for stage in ("solve", "extract") if stage in summary
        }
        summary["pending_requests"] = sum(summary.get(stage, {}).get("pending", 0) for stage in ("solve", "extract"))
        atomic_text(self.work.summary, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        return summary


def one_line(stage: str, stats: dict[str, Any]) -> str:
    """A stage's counters in one line for the console."""
    if stage == "solve" and "requests" in stats:
        run = stats["this_run"]
        return (f"{stats['solutions']}/{stats['requests']} solutions ({stats['done_before']} from earlier runs, "
                f"{run['sent']} sent, {run['failed']} failed{_kinds(run['failures_by_kind'])}), "
                f"tokens {stats['tokens_in']}/{stats['tokens_out']}")
    if stage == "solve":
        return f"{stats['solutions']} solutions read from {stats['source']}, {len(stats['bad_lines'])} bad lines"
    if stage == "filter":
        return (f"kept {stats['kept']} of {stats['solutions']} solutions{_kinds(stats['dropped_by_reason'])}; "
                f"{stats['problems_with_kept_solution']} problems with a correct solution")
    if stage == "extract":
        run = stats["this_run"]
        return (f"{stats['annotated_problems']} problems annotated, {_dropped(stats['dropped_problems_by_reason'])}; "
                f"items kept {stats['items_kept']} of {stats['items_extracted']}{_kinds(stats['dropped_items_by_reason'])}; "
                f"{stats['done_before']} requests from earlier runs, {run['sent']} sent, {run['failed']} failed")
    return f"{stats['records']} records -> {stats['path']}"


def _dropped(counts: dict[str, int]) -> str:
    return f"dropped {sum(counts.values())} {counts}" if counts else "none dropped"


def _kinds(counts: dict[str, int]) -> str:
    return f" {counts}" if counts else ""


def _reason_counts(bad: list[BadRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in bad:
        kind = item.reason.split(":")[0].split(" (")[0]
        counts[kind] = counts.get(kind, 0) + 1
    return counts
