"""The perception judge's health in `perception-rl test`'s report: requests, failures by kind and per-item parse
outcomes reach summary.json and the printed table, so an abstaining judge never thins the perception score unseen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT
from judge_server import JudgeServer, ServerScript, user_text

from perception_rl.cli import main as cli_main

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
SMOKE = str(REPO_ROOT / "benchmarks" / "smoke_tiny_cpu.yaml")
# By the first fact of the request (the dots task has two facts per item): one reply of each kind.
REPLIES = [
    ("<verdict1>1</verdict1><verdict2>0</verdict2>", None, (2, 0, 0)),
    ("<verdict1>present</verdict1><verdict2>present</verdict2>", "unparsable", (0, 2, 0)),
    ("<verdict1>1</verdict1>", None, (1, 0, 1)),
    ("<verdict1>yes</verdict1><verdict2>1</verdict2>", None, (1, 1, 0)),
]


def test_the_test_report_counts_the_perception_judges_outcomes(tmp_path, tiny_model_dir, dots_dir, capsys):
    records = [json.loads(line) for line in (dots_dir / "test.jsonl").read_text().splitlines()]
    kinds = {}
    for record in records:  # items sharing their facts share their reply
        kinds.setdefault(tuple(record["annotations"]), len(kinds) % len(REPLIES))

    def respond(body: dict) -> str:
        text = user_text(body)
        return next(REPLIES[k][0] for facts, k in kinds.items() if f"[1] {facts[0]}\n[2] {facts[1]}" in text)

    with JudgeServer(ServerScript(respond=respond), lifetime_s=240) as server:
        extra = tmp_path / "judge.yaml"
        extra.write_text(yaml.safe_dump({"model": {"rewards": [
            {"class_path": "perception_rl.AccuracyReward", "init_args": {"weight": 0.9}},
            {"class_path": "perception_rl.PerceptionReward", "init_args": {"weight": 0.5, "judge": {
                "class_path": "perception_rl.OpenAIJudge", "init_args": {"base_url": server.url, "model": "judge",
                                                                         "cache_size": 0}}}},
        ]}}))
        root = tmp_path / "run"
        cli_main(["test", "--config", SMOKE, "--config", str(extra), "--data.benchmark=records",
                  f"--data.path={dots_dir / 'test.jsonl'}", f"--model.policy.model_path={tiny_model_dir}",
                  f"--trainer.default_root_dir={root}", "--data.eval_batch_size=2", "--trainer.enable_progress_bar=false"])
    summary = json.loads(next((root / "eval").glob("*/summary.json")).read_text())
    outcomes = [REPLIES[kinds[tuple(r["annotations"])]] for r in records]
    expected_items = [sum(o[2][j] for o in outcomes) for j in range(3)]
    failures = sum(o[1] is not None for o in outcomes)
    assert 0 < failures < len(records), "the fixture's items cover more than one kind of reply"
    assert summary["perception_judge"] == {
        "requests": len(records), "failures": failures, "failures_by_kind": {"unparsable": failures} if failures else {},
        "items": dict(zip(("answered", "unparsable", "missing"), expected_items)),
    }
    assert summary["perception_items"] == len(records) - failures, "abstained items leave the perception score"
    printed = capsys.readouterr().out
    assert f"| perception judge | {len(records)} requests, {failures} failed" in printed
    assert "items answered {}, unparsable {}, missing {}".format(*expected_items) in printed
    # Every gold fact stated, and right answers with wrong perception, counted over the scored rows only.
    rows = [json.loads(line) for line in Path(summary["predictions"]).read_text().splitlines()]
    scored = [r for r in rows if r["perception_correct"] is not None]
    assert len(scored) == summary["perception_items"]
    assert summary["perception_correct"] == sum(r["perception_correct"] for r in scored)
    assert summary["right_and_scored"] == sum(r["correct"] for r in scored)
    assert summary["right_answer_wrong_perception"] == sum(r["correct"] and not r["perception_correct"] for r in scored)
    assert "| every gold fact stated (%) | " in printed and f"({summary['perception_correct']}/{len(scored)}) |" in printed
    assert "| right answers with wrong perception (%) |" in printed
