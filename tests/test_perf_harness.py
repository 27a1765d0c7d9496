"""benchmarks/perf/run.py keeps working: a two-step run of perception-rl's side and the raw floor on the small
case writes per-stage figures (the timed comparison with TRL is run by hand, see benchmarks/perf/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_harness_measures_ours_and_the_floor(tmp_path, dev_data):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks/perf/run.py"), "--cases", "0.22M", "--sides", "ours", "floor",
         "--runs", "1", "--steps", "3", "--first-timed-step", "2", "--quiet-wait", "0", "--max-foreign", "1.0",
         "--data", str(dev_data), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    case = json.loads((tmp_path / "results.json").read_text())["aggregate"]["0.22M"]
    for side in ("ours", "floor"):
        assert case[side]["step_s"] > 0 and case[side]["peak_rss_mib"] > 0
        assert case[side]["stages_s"]["rollout_decode"] > 0 and case[side]["stages_s"]["loss_backward"] > 0
    # the shared prefix: each prompt is prefilled once per group, not G times
    assert case["ours"]["work"]["prefill_tokens"] < case["floor"]["work"]["prefill_tokens"]
    assert (tmp_path / "results.md").read_text().count("|") > 10
