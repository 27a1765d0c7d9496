"""`perception-rl test` end to end on the tiny model: rows, summary, table, skips, resume, and two processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT
from eval_layouts import mathvista_item, write_mathvista
from test_cli import run_cli

from perception_rl.cli import main as cli_main

# In-process runs of the CLI (faster than subprocesses) see pytest's own argv beside `args`; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
SMOKE = str(REPO_ROOT / "benchmarks" / "smoke_tiny_cpu.yaml")
# Nine usable items over two tasks (one with a list of skills per item), plus one whose image is missing.
ITEMS = [
    mathvista_item(str(k), f"How many shapes are in picture {k}?", str(k), answer_type="integer",
                   task="counting" if k % 3 else "geometry", skills=["arithmetic"] + (["logic"] if k % 2 else []))
    for k in range(1, 10)
] + [mathvista_item("10", "Which one is largest?", "80", choices=["30", "40", "60", "80"])]


@pytest.fixture
def release(tmp_path) -> Path:
    root = write_mathvista(tmp_path / "MathVista", ITEMS)
    (root / "data" / "images" / "10.jpg").unlink()
    return root


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_test_writes_rows_summary_and_resumes(release, tmp_path, tiny_model_dir, capsys):
    root = tmp_path / "run"
    args = ["test", "--config", SMOKE, "--data.benchmark", "mathvista", f"--data.path={release}",
            f"--model.policy.model_path={tiny_model_dir}", f"--trainer.default_root_dir={root}", "--data.eval_batch_size=2",
            "--trainer.enable_progress_bar=false"]
    cli_main([*args, "--trainer.limit_test_batches=2"])  # stops after 4 of 9 items, like an interrupted run
    out = root / "eval" / "mathvista-testmini"
    first = rows_of(out / "predictions.jsonl")
    assert [r["id"] for r in first] == ["1", "2", "3", "4"]
    assert json.loads((out / "summary.json").read_text())["not_evaluated"] == 5

    # Simulate a kill mid-write: two finished rows sit in a process's file, the next row is cut off.
    kept = [{**r, "response": f"SENTINEL {r['id']}"} for r in first]
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept[:2]))
    cut = json.dumps({**kept[0], "id": "5"})[:40]
    (out / "predictions.rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept[2:]) + cut)
    capsys.readouterr()
    cli_main(args)
    printed = capsys.readouterr().out
    assert "| items | 10 (9 evaluated, 1 skipped) |" in printed and "### accuracy by task" in printed

    rows = rows_of(out / "predictions.jsonl")
    assert [r["id"] for r in rows] == [str(k) for k in range(1, 10)], "every item once, in benchmark order"
    assert [r["response"] for r in rows[:4]] == [f"SENTINEL {k}" for k in range(1, 5)], "finished items are not redone"
    assert not list(out.glob("predictions.rank*.jsonl"))
    row = rows[5]
    for key in ("prompt", "response", "extracted", "gold", "correct", "task", "skills", "response_tokens", "metadata"):
        assert key in row
    assert row["gold"] == "6" and row["task"] == "geometry" and "How many shapes are in picture 6?" in row["prompt"]

    summary = json.loads((out / "summary.json").read_text())
    assert (summary["items"], summary["evaluated"], summary["skipped"], summary["resumed_items"]) == (10, 9, 1, 4)
    assert summary["skipped_reasons"] == {"image not found": 1}
    assert json.loads((out / "skipped.jsonl").read_text())["id"] == "10"
    assert {g["value"]: g["items"] for g in summary["groups"]["task"]} == {"counting": 6, "geometry": 3}
    assert {g["value"]: g["items"] for g in summary["groups"]["skills"]} == {"arithmetic": 9, "logic": 5}
    assert (out / "summary.md").read_text().startswith("## mathvista-testmini - ")

    capsys.readouterr()
    cli_main(args)  # everything done: nothing is generated, the outputs are written again from the rows
    assert rows_of(out / "predictions.jsonl") == rows and "| items | 10 (9 evaluated, 1 skipped) |" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["resumed_items"] == 9

    with pytest.raises(RuntimeError, match="different evaluation.*max_new_tokens"):  # never mix two evaluations
        cli_main([*args, "--model.evaluation.max_new_tokens=8"])


@pytest.mark.slow
def test_two_processes_resume_write_each_item_once_and_agree_with_the_rows(release, tmp_path, tiny_model_dir):
    """One process stops after 8 items; ddp on gloo resumes the last one over 2 processes (the second process
    sees only the sampler's repeat of it); an LLM stage with known verdicts makes accuracy non-trivial."""
    extra = tmp_path / "ddp.yaml"
    extra.write_text(yaml.safe_dump({
        "trainer": {"devices": 2, "strategy": "ddp", "enable_progress_bar": False},
        "model": {"evaluation": {"class_path": "perception_rl.BenchmarkEvaluation", "init_args": {
            "max_new_tokens": 8,
            "answer_judge": {"class_path": "perception_rl.AnswerJudge", "init_args": {
                "judge": {"class_path": "eval_layouts.EvenAnswerJudge"}, "recheck": "all"}},
        }}},
    }))
    root = tmp_path / "ddp"
    args = ["test", "--config", SMOKE, "--config", str(extra), "--data.benchmark=mathvista", f"--data.path={release}",
            f"--model.policy.model_path={tiny_model_dir}", f"--trainer.default_root_dir={root}", "--data.eval_batch_size=2"]
    cli_main([*args, "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.limit_test_batches=4"])
    out = root / "eval" / "mathvista-testmini"
    assert [r["id"] for r in rows_of(out / "predictions.jsonl")] == [str(k) for k in range(1, 9)]
    run_cli(*args)
    rows = rows_of(out / "predictions.jsonl")
    assert sorted(int(r["id"]) for r in rows) == list(range(1, 10)), "no item lost, none written twice"
    assert all(r["judged_by"] == "llm" and r["correct"] == (int(r["gold"]) % 2 == 0) for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluated"] == 9 and summary["correct"] == 4 and summary["accuracy"] == pytest.approx(4 / 9)
    assert summary["resumed_items"] == 8 and summary["llm_judged"] == 9 and summary["judge_requests"] == 1
    by_task = {g["value"]: (g["items"], g["correct"]) for g in summary["groups"]["task"]}
    expected = {t: (sum(r["task"] == t for r in rows), sum(r["task"] == t and r["correct"] for r in rows)) for t in by_task}
    assert by_task == expected == {"counting": (6, 3), "geometry": (3, 1)}
