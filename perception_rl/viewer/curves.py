"""Reward curves for the page: read from the run's CSV logs, drawn as inline SVG (no plotting library, no CDN).

Every `logs/version_N/metrics.csv` of the run is read, oldest version first, so a resumed run (a new
version) continues the curves; where versions overlap the later one wins. The x axis counts training steps
done (the CSV's `step` + 1), the rollout log's step under one optimizer step per rollout batch (the default).
"""

from __future__ import annotations

import csv
import math
import re
from html import escape
from pathlib import Path

from perception_rl.callbacks import TOTAL, moving_average

_MEAN = re.compile(r"^train/reward/(?P<name>[^/]+)/mean$")
WIDTH, HEIGHT = 212, 118
LEFT, RIGHT, TOP, BOTTOM = 34, 8, 20, 22


def read_curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """{"total" | reward name: {step: value}} from every metrics.csv under run_dir/logs."""
    versions = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=_version_number)
    series: dict[str, dict[int, float]] = {}
    for path in versions:
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if not row.get(TOTAL) or not row.get("step"):
                    continue
                step = int(float(row["step"])) + 1
                for key, value in row.items():
                    match = _MEAN.match(key or "")
                    name = "total" if key == TOTAL else match["name"] if match else None
                    if name is not None and value not in ("", None):
                        series.setdefault(name, {})[step] = float(value)
    return dict(sorted(series.items(), key=lambda item: item[0] != "total"))


def _version_number(path: Path) -> int:
    digits = path.parent.name.removeprefix("version_")
    return int(digits) if digits.isdigit() else -1


def curves_svg(series: dict[str, dict[int, float]], weights: dict[str, float | None]) -> str:
    """One small SVG per series: each step faint, a moving average bold, a marker line the page moves."""
    if not series:
        return ""
    steps = sorted({s for values in series.values() for s in values})
    first, last = steps[0], steps[-1]
    window = max(1, len(steps) // 20)
    panels = []

    def x(step: float) -> float:
        return LEFT + (step - first) / max(last - first, 1) * (WIDTH - LEFT - RIGHT)

    for name, values in series.items():
        points = sorted(values.items())
        ys = [v for _, v in points if math.isfinite(v)]
        low, high = (min(ys), max(ys)) if ys else (0.0, 1.0)
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5
        smooth = moving_average([v for _, v in points], window)

        def y(value: float, low: float = low, high: float = high) -> float:
            return TOP + (high - value) / (high - low) * (HEIGHT - TOP - BOTTOM)

        raw = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points if math.isfinite(v))
        mean = " ".join(f"{x(s):.1f},{y(v):.1f}" for (s, _), v in zip(points, smooth) if math.isfinite(v))
        weight = weights.get(name)
        title = name + (f" (weight {weight:g})" if weight is not None else "")
        title = "total (weighted sum)" if name == "total" else title
        panels.append(
            f'<svg class="curve" data-series="{escape(name)}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
            f'height="{HEIGHT}" data-x0="{LEFT}" data-x1="{WIDTH - RIGHT}" data-s0="{first}" data-s1="{last}">'
            f'<text class="title" x="{LEFT}" y="14">{escape(title)}</text>'
            f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}"/>'
            f'<text class="tick" x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{high:.2f}</text>'
            f'<text class="tick" x="{LEFT - 4}" y="{HEIGHT - BOTTOM}" text-anchor="end">{low:.2f}</text>'
            f'<text class="tick" x="{LEFT}" y="{HEIGHT - 8}">{first}</text>'
            f'<text class="tick" x="{WIDTH - RIGHT}" y="{HEIGHT - 8}" text-anchor="end">step {last}</text>'
            f'<polyline class="raw" points="{raw}"/><polyline class="mean" points="{mean}"/>'
            f'<line class="step-marker" x1="-10" x2="-10" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/></svg>'
        )
    return "".join(panels)
