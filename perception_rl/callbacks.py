"""`RewardCurve`: a Lightning callback that plots the reward components over training steps.

At every training step it keeps the logged reward means (`train/reward/<name>/mean` of each reward and
`train/reward/total`; kept in checkpoints, so a resumed run plots its whole history). When fit ends it
writes `<default_root_dir>/reward_curve.png` (raw values faint, a moving average on top, one panel per
component) and `reward_curve.csv` (the values plotted), and prints the mean total reward of the first and
the last tenth of the steps. matplotlib is optional: without it the CSV and the summary are still
written and the plot is skipped with a warning.

    trainer:
      callbacks:
        - class_path: perception_rl.RewardCurve
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from pathlib import Path

import lightning as L

_MEAN = re.compile(r"^train/reward/(?P<name>[^/]+)/mean$")
TOTAL = "train/reward/total"


def tenths(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last tenth of `values` (at least one value each); NaNs ignored."""
    if not values:
        return math.nan, math.nan
    k = max(1, len(values) // 10)
    return _nanmean(values[:k]), _nanmean(values[-k:])


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (NaNs ignored)."""
    return [_nanmean(values[max(0, i + 1 - window) : i + 1]) for i in range(len(values))]


class RewardCurve(L.Callback):
    """Record the reward components every training step; plot them when fit ends.

    Args:
        filename: PNG written under `trainer.default_root_dir` (a CSV of the same name sits beside it).
            Under several processes the curve is process 0's, like the CSV log.
        window: moving-average window in steps; None picks a twentieth of the steps (at least 1).
    """

    def __init__(self, filename: str = "reward_curve.png", window: int | None = None):
        if window is not None and window < 1:
            raise ValueError(f"RewardCurve.window must be >= 1 (or null), got {window}")
        self.filename = filename
        self.window = window
        self.steps: list[int] = []
        self.series: dict[str, list[float]] = {}
        self.weights: dict[str, float] = {}  # each reward's weight in the total, for the plot's titles

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.weights = {r.name: float(r.weight) for r in getattr(pl_module, "rewards", []) if hasattr(r, "weight")}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        # GRPOModule hands over this step's values, NaN included; another module's logged values are used
        # as Lightning keeps them (a value not logged this step then repeats the previous one).
        metrics = getattr(pl_module, "step_metrics", None) or trainer.callback_metrics
        values = {TOTAL: metrics.get(TOTAL)}
        for key, value in metrics.items():
            match = _MEAN.match(key)
            if match:
                values[match["name"]] = value
        if values[TOTAL] is None:
            return
        self.steps.append(trainer.global_step)
        for key, value in values.items():
            column = self.series.setdefault("total" if key == TOTAL else key, [math.nan] * (len(self.steps) - 1))
            column.append(float(value) if value is not None else math.nan)
        for column in self.series.values():  # a component missing this step
            column.extend([math.nan] * (len(self.steps) - len(column)))

    def state_dict(self) -> dict:
        """Saved in checkpoints, so a resumed run plots its whole history."""
        return {"steps": list(self.steps), "series": {k: list(v) for k, v in self.series.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps = list(state_dict.get("steps", []))
        self.series = {k: list(v) for k, v in state_dict.get("series", {}).items()}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.steps:
            return
        png = Path(trainer.default_root_dir) / self.filename
        png.parent.mkdir(parents=True, exist_ok=True)
        self.write_csv(png.with_suffix(".csv"))
        first, last = tenths(self.series["total"])
        print(f"reward: first tenth of steps {first:.3f}, last tenth {last:.3f} (mean total reward over "
              f"{max(1, len(self.steps) // 10)} of {len(self.steps)} steps each)", flush=True)
        path = self.plot(png)
        if path is not None:
            print(f"reward curve: {path}", flush=True)

    def write_csv(self, path: Path) -> None:
        names = list(self.series)
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", *names])
            for i, step in enumerate(self.steps):
                writer.writerow([step, *(self.series[n][i] for n in names)])

    def plot(self, path: Path) -> Path | None:
        """Write the PNG; None (with a warning) when matplotlib is not installed."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            warnings.warn("RewardCurve: matplotlib is not installed, so no plot was written (pip install matplotlib)")
            return None
        window = self.window or max(1, len(self.steps) // 20)
        names = ["total", *[n for n in self.series if n != "total"]]
        figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
        for axis, name in zip(axes[0], names):
            values = self.series[name]
            axis.plot(self.steps, values, color="tab:blue", alpha=0.25, linewidth=0.8, label="each step")
            axis.plot(self.steps, moving_average(values, window), color="tab:blue", linewidth=1.8,
                      label=f"mean of the last {window} step{'s' if window > 1 else ''}")
            weight = self.weights.get(name)
            axis.set_title("total (weighted sum)" if name == "total" else
                           f"{name}: mean score" + (f", weight {weight:g}" if weight is not None else ""))
            axis.set_xlabel("step")
            axis.grid(alpha=0.3)
        axes[0][0].set_ylabel("reward")
        axes[0][0].legend(loc="best", fontsize="small", frameon=False)
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path
