"""benchmarks/perception_demo/run.py, the paper's comparison in miniature, on one seed and a 50-step budget:
the script runs end to end, its results.json holds every comparison per seed and pooled, and the effect the
paper reports is already there (accuracy-only GRPO raises accuracy, not the stated perception; the perception
reward raises both). The full 5-seed comparison is run by hand (benchmarks/perception_demo/README.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

ARMS = ("accuracy_only", "perception_r1", "shuffled_images")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("perception_demo")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks/perception_demo/run.py"), "--out", str(out),
                             "--seeds", "0", "--steps", "50"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "report.md").read_text().count("| warm start (before RL) vs") == 3
    assert (out / "held_out.png").stat().st_size > 10_000
    return json.loads((out / "results.json").read_text())


def test_results_hold_every_comparison_per_seed_and_pooled(results):
    for scope in (results["mcnemar"]["per_seed"]["0"], results["mcnemar"]["pooled"]):
        assert set(scope) == {"warm_start vs accuracy_only", "warm_start vs perception_r1",
                              "accuracy_only vs perception_r1", "warm_start vs shuffled_images"}
        for tests in scope.values():
            for key in ("correct", "perception_correct"):
                test = tests[key]
                assert test["both"] + test["b"] + test["c"] + test["neither"] == test["items"] == 200
                assert 0 <= test["p"] <= 1
    # One seed: pooled is that seed's test.
    assert results["mcnemar"]["pooled"] == results["mcnemar"]["per_seed"]["0"]
    assert set(results["held_out"]) == {"warm_start", *(f"{arm}-seed0" for arm in ARMS)}


def test_the_warm_start_reaches_right_answers_through_wrong_perception(results):
    warm = results["held_out"]["warm_start"]
    assert 0.3 < warm["accuracy"] < 0.7
    assert warm["right_wrong_share"] >= 0.3, "the failure mode must be common before RL"
    assert warm["right_answer_wrong_perception"] == round(warm["right_wrong_share"] * warm["right_answers"])


def test_accuracy_only_raises_accuracy_and_the_perception_reward_raises_perception(results):
    pooled, held = results["mcnemar"]["pooled"], results["held_out"]
    acc, full = held["accuracy_only-seed0"], held["perception_r1-seed0"]
    assert pooled["warm_start vs accuracy_only"]["correct"]["c"] > pooled["warm_start vs accuracy_only"]["correct"]["b"]
    assert pooled["warm_start vs accuracy_only"]["correct"]["p"] < 1e-6
    versus = pooled["accuracy_only vs perception_r1"]["perception_correct"]
    assert versus["c"] > versus["b"] and versus["p"] < 0.01, versus
    assert full["right_wrong_share"] < acc["right_wrong_share"]
    # The control never sees the right picture: its held-out accuracy stays where the warm start was.
    control = held["shuffled_images-seed0"]
    assert abs(control["accuracy"] - results["held_out"]["warm_start"]["accuracy"]) < 0.1
