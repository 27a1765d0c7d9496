"""The page itself: the run's data as JSON inside one HTML file, with the inline stylesheet and script.

Nothing is fetched when the page opens (images are data: URIs, curves inline SVG), so it works from file://,
offline, and can be mailed or archived as one file.
"""

from __future__ import annotations

import json
import math
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from perception_rl.eval.results import write_atomic
from perception_rl.viewer.curves import curves_svg, read_curves
from perception_rl.viewer.evaluation import ITEM_FILTERS, evaluation_folders, load_evaluation
from perception_rl.viewer.images import ImageStore
from perception_rl.viewer.training import GROUP_FILTERS, RESPONSE_FILTERS, load_steps, step_files

PAGE = "view.html"


def collect(run_dir: Path) -> dict[str, Any]:
    """Everything the page shows; a ValueError naming the folder when it holds nothing to view."""
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: no such folder (give a run's trainer.default_root_dir or a test output folder)")
    has_steps, evaluations = bool(step_files(run_dir)), evaluation_folders(run_dir)
    if not has_steps and not evaluations:
        raise ValueError(
            f"{run_dir}: nothing to view; expected training rollouts (rollouts/step_*.parquet, written by the "
            "perception_rl.RolloutLog callback) or test results (predictions.jsonl, here, in <name>/ or in "
            "eval/<name>/, written by `perception-rl test`)"
        )
    images = ImageStore()
    steps = load_steps(run_dir, images) if has_steps else []
    weights = {r["name"]: r.get("weight") for r in (steps[-1]["rewards"] if steps else [])}
    return {
        "run_dir": str(run_dir.resolve()),
        "steps": steps,
        "curves_svg": curves_svg(read_curves(run_dir), weights) if steps else "",
        "evaluations": [load_evaluation(folder, images) for folder in evaluations],
        "filters": {"response": RESPONSE_FILTERS, "group": GROUP_FILTERS, "item": ITEM_FILTERS},
        "images": images.uris,
    }


def _finite(value: Any) -> Any:
    """`value` with NaN and infinities as None: summaries hold NaN for a score no item had (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def render(data: dict[str, Any]) -> str:
    assets = resources.files("perception_rl.viewer") / "assets"
    # "<" escaped: no text inside the JSON (a completion, a reply) can close the script element.
    payload = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")
    title = f"perception-rl view: {Path(data['run_dir']).name}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{escape(title)}</title>"
        f"<style>{(assets / 'view.css').read_text(encoding='utf-8')}</style></head><body>"
        f"<header><h1>{escape(title)}</h1><div class=\"run\">{escape(data['run_dir'])}</div>"
        "<nav class=\"tabs\" id=\"tabs\"></nav></header><main id=\"main\"></main>"
        f"<script type=\"application/json\" id=\"view-data\">{payload}</script>"
        f"<script>{(assets / 'view.js').read_text(encoding='utf-8')}</script></body></html>\n"
    )


def write_page(run_dir: Path, out: Path | None = None) -> Path:
    """Write the page (atomically) to `out`, by default `run_dir/view.html`; returns its path."""
    path = out or run_dir / PAGE
    write_atomic(path, render(collect(run_dir)))
    return path
