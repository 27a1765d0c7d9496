"""The data pipeline of paper.md §4, rerunnable on your own problems: `perception-rl annotate`.

    solve    K chains of thought per problem from an OpenAI-compatible multimodal endpoint (or your own file)
    filter   keep solutions whose final answer is right (the accuracy reward's check)
    extract  a text LLM lists the atomic visual facts each kept solution relies on
    write    training records with `annotations` (JSONL or parquet) and summary.json

Resumable (work logs keyed by request digest), atomic outputs, bad inputs reported with file and line.
Converters read Geometry3K's official layout and the authors' record shape; `report` and `agree` check quality.
"""

from perception_rl.annotate.items import clean_items, normalise_item
from perception_rl.annotate.llm import ChatModel, RequestStats
from perception_rl.annotate.pipeline import STAGES, AnnotatePipeline
from perception_rl.annotate.problems import BadRecord, convert, read_problems, write_records
from perception_rl.annotate.prompts import ExtractTemplate, SolveTemplate, parse_facts
from perception_rl.annotate.quality import agreement, sample_report
from perception_rl.annotate.stages import Extract, Solve, WorkDir
from perception_rl.annotate.worklog import WorkLog

__all__ = [
    "STAGES", "AnnotatePipeline", "BadRecord", "ChatModel", "Extract", "ExtractTemplate", "RequestStats", "Solve",
    "SolveTemplate", "WorkDir", "WorkLog", "agreement", "clean_items", "convert", "normalise_item", "parse_facts",
    "read_problems", "sample_report", "write_records",
]
