"""Benchmark metrics: hand-worked values in one process, and the same values reduced over two real processes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from perception_rl.eval.metrics import (
    OTHER_GROUP,
    AnswerAccuracy,
    FormatCompliance,
    GroupedAccuracy,
    MeanResponseLength,
    PerceptionScore,
)

# Five items: (correct, follows format, tokens, perception score or NaN, subject, skills)
ITEMS = [
    (True, True, 10, 1.0, "algebra", ["arithmetic"]),
    (False, True, 20, math.nan, "algebra", ["arithmetic", "logic"]),
    (True, False, 30, 0.5, "geometry", []),
    (False, False, 40, math.nan, "geometry", ["logic"]),
    (True, True, 50, 0.0, "counting", ["arithmetic"]),
]
SUBJECTS = ["algebra", "geometry", "counting"]
SKILLS = ["arithmetic", "logic", "(none)"]


def make_metrics() -> dict:
    return {
        "accuracy": AnswerAccuracy(), "format": FormatCompliance(), "length": MeanResponseLength(),
        "perception": PerceptionScore(), "subject": GroupedAccuracy(SUBJECTS, "subject"),
        "skills": GroupedAccuracy(SKILLS, "skills"),
    }


def update(metrics: dict, items: list) -> None:
    if not items:
        return
    correct = torch.tensor([i[0] for i in items])
    metrics["accuracy"].update(correct)
    metrics["format"].update(torch.tensor([i[1] for i in items]))
    metrics["length"].update(torch.tensor([float(i[2]) for i in items]))
    metrics["perception"].update(torch.tensor([i[3] for i in items]))
    metrics["subject"].update([i[4] for i in items], correct)
    metrics["skills"].update([i[5] for i in items], correct)


def results(metrics: dict) -> dict:
    return {
        "accuracy": float(metrics["accuracy"].compute()), "format": float(metrics["format"].compute()),
        "length": float(metrics["length"].compute()), "perception": float(metrics["perception"].compute()),
        "subject": metrics["subject"].table(), "skills": metrics["skills"].table(),
    }


EXPECTED = {
    "accuracy": 3 / 5, "format": 3 / 5, "length": 30.0, "perception": 0.5,
    "subject": [
        {"value": "algebra", "items": 2, "correct": 1, "accuracy": 0.5},
        {"value": "counting", "items": 1, "correct": 1, "accuracy": 1.0},
        {"value": "geometry", "items": 2, "correct": 1, "accuracy": 0.5},
    ],
    # a list-valued field counts an item once per listed value; an empty list counts under "(none)"
    "skills": [
        {"value": "(none)", "items": 1, "correct": 1, "accuracy": 1.0},
        {"value": "arithmetic", "items": 3, "correct": 2, "accuracy": 2 / 3},
        {"value": "logic", "items": 2, "correct": 0, "accuracy": 0.0},
    ],
}


def assert_close(actual, expected):
    """Nested dicts and lists, floats compared with a tolerance."""
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected)
        for key in expected:
            assert_close(actual[key], expected[key])
    elif isinstance(expected, list):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_close(a, e)
    else:
        assert actual == pytest.approx(expected)


def test_metrics_in_one_process():
    metrics = make_metrics()
    update(metrics, ITEMS[:2])
    update(metrics, ITEMS[2:])  # accumulation across updates
    assert_close(results(metrics), EXPECTED)


@pytest.mark.filterwarnings("ignore:.*compute.*before.*update")
def test_empty_metrics_are_nan_and_unknown_groups_count_as_other():
    assert math.isnan(float(AnswerAccuracy().compute()))
    perception = PerceptionScore()
    perception.update(torch.tensor([math.nan, math.nan]))  # no annotated item: no score, not 0
    assert math.isnan(float(perception.compute()))
    grouped = GroupedAccuracy(["a"], "field")
    grouped.update(["a", "zzz"], torch.tensor([1, 0]))
    assert grouped.table() == [
        {"value": "a", "items": 1, "correct": 1, "accuracy": 1.0},
        {"value": OTHER_GROUP, "items": 1, "correct": 0, "accuracy": 0.0},
    ]
    with pytest.raises(ValueError, match="2 group labels for 1 items"):
        grouped.update(["a", "a"], torch.tensor([1]))


def test_group_vocabulary_sorts_naturally():
    assert GroupedAccuracy(["level 10", "level 2", "level 1"]).groups == ["level 1", "level 2", "level 10", OTHER_GROUP]


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        metrics = make_metrics()
        update(metrics, ITEMS[:3] if rank == 0 else ITEMS[3:])  # uneven shares: 3 items and 2
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results(metrics)))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_metrics_reduce_over_two_processes(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert_close(json.loads((tmp_path / f"rank{rank}.json").read_text()), EXPECTED)
