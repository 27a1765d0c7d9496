"""`RewardCurve` (perception_rl/callbacks.py): what it records, writes and prints, with and without matplotlib."""

from __future__ import annotations

import builtins
import math
from types import SimpleNamespace

import pytest
import torch

from perception_rl.callbacks import RewardCurve, moving_average, tenths


def test_tenths_and_moving_average_by_hand():
    assert tenths([1.0] * 10 + [3.0] * 80 + [5.0] * 10) == (1.0, 5.0)
    assert tenths([2.0, 4.0]) == (2.0, 4.0)  # fewer than ten values: one each
    assert all(math.isnan(v) for v in tenths([]))
    assert moving_average([1.0, 3.0, math.nan, 5.0], window=2) == [1.0, 2.0, 3.0, 5.0]


def fake_trainer(tmp_path, metrics: dict, step: int):
    return SimpleNamespace(callback_metrics={k: torch.tensor(v) for k, v in metrics.items()}, global_step=step,
                           is_global_zero=True, default_root_dir=str(tmp_path))


def record(curve: RewardCurve, tmp_path, steps: int) -> None:
    for step in range(1, steps + 1):
        metrics = {"train/reward/total": step / steps, "train/reward/accuracy/mean": 0.5,
                   "train/reward/visual/judge/requests": 8.0, "val/total": 9.0}
        if step > 2:  # a component that appears late is padded with NaN before it
            metrics["train/reward/visual/mean"] = 1.0
        curve.on_train_batch_end(fake_trainer(tmp_path, metrics, step), None, None, None, step)


def test_records_each_component_and_writes_csv_png_and_summary(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    curve = RewardCurve()
    record(curve, tmp_path, 20)
    assert list(curve.series) == ["total", "accuracy", "visual"], "only reward means and the total"
    assert math.isnan(curve.series["visual"][0]) and curve.series["visual"][2] == 1.0
    curve.on_fit_end(fake_trainer(tmp_path, {}, 20), None)
    rows = (tmp_path / "reward_curve.csv").read_text().splitlines()
    assert rows[0] == "step,total,accuracy,visual" and len(rows) == 21
    assert (tmp_path / "reward_curve.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "first tenth of steps 0.075, last tenth 0.975" in out and "reward_curve.png" in out


def test_without_matplotlib_it_warns_and_still_writes_the_csv(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    curve = RewardCurve()
    record(curve, tmp_path, 5)
    with pytest.warns(UserWarning, match="matplotlib"):
        curve.on_fit_end(fake_trainer(tmp_path, {}, 5), None)
    assert (tmp_path / "reward_curve.csv").is_file() and not (tmp_path / "reward_curve.png").exists()


def test_history_survives_a_checkpoint_round_trip(tmp_path):
    curve = RewardCurve()
    record(curve, tmp_path, 4)
    resumed = RewardCurve()
    resumed.load_state_dict(curve.state_dict())
    assert resumed.steps == curve.steps and resumed.series.keys() == curve.series.keys()
    assert all(a == b or (math.isnan(a) and math.isnan(b))
               for name in curve.series for a, b in zip(resumed.series[name], curve.series[name], strict=True))
    with pytest.raises(ValueError, match="window"):
        RewardCurve(window=0)


def test_a_modules_step_metrics_win_over_stale_logged_values(tmp_path):
    """A component without a score this step (NaN) is recorded as NaN, not as the last logged value."""
    curve = RewardCurve()
    stale = {"train/reward/total": 0.9, "train/reward/visual/mean": 0.8}  # what Lightning still holds
    for step, visual in ((1, 0.5), (2, math.nan)):
        module = SimpleNamespace(step_metrics={"train/reward/total": 0.1 * step, "train/reward/visual/mean": visual})
        curve.on_train_batch_end(fake_trainer(tmp_path, stale, step), module, None, None, step)
    assert curve.series["total"] == pytest.approx([0.1, 0.2])
    assert curve.series["visual"][0] == 0.5 and math.isnan(curve.series["visual"][1])


def test_a_filename_in_a_subfolder_keeps_png_and_csv_together(tmp_path):
    pytest.importorskip("matplotlib")
    curve = RewardCurve(filename="plots/curve.png")
    record(curve, tmp_path, 3)
    curve.on_fit_end(fake_trainer(tmp_path, {}, 3), None)
    assert (tmp_path / "plots" / "curve.png").is_file() and (tmp_path / "plots" / "curve.csv").is_file()
