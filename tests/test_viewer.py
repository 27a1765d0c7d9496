"""`perception-rl view` without a browser: what the page holds (flags, curves, embedded images), test rows that
carry their own images, the one-line error for a folder with nothing to view, and `--serve` on 127.0.0.1.
(The page in a real browser: tests/test_viewer_browser.py.)"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import urllib.request

import pytest
from PIL import Image

from conftest import REPO_ROOT
from helpers import PatchyJudge
from perception_rl import RolloutLog
from perception_rl.viewer import collect, write_page
from test_rollout_log import samples, scored_batch, step_end  # noqa: F401 - `samples` is a fixture


@pytest.fixture
def run_dir(tmp_path, samples):  # noqa: F811 - the imported fixture
    """Two logged steps of hand-written completions, scored for real, plus a CSV log of three steps."""
    log = RolloutLog(every_n_steps=1)
    answer = samples[0].record.answer
    right = f"<answer>\\boxed{{{answer}}}</answer>"
    completions = [right, f"There are 9 red dots. {right}", "no idea", "no idea",
                   "same", "same", "same", "same"]
    step_end(log, tmp_path, scored_batch(samples, completions, judge=PatchyJudge()), 1)
    step_end(log, tmp_path, scored_batch(samples, list(reversed(completions))), 2)
    log.flush()
    version = tmp_path / "logs" / "version_0"
    version.mkdir(parents=True)
    with (version / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "train/reward/total", "train/reward/accuracy/mean", "val/total"])
        writer.writerows([[0, 0.1, 0.0, ""], [1, 0.5, 0.25, ""], [1, "", "", 0.3], [2, 0.9, 0.5, ""]])
    return tmp_path


def test_the_pages_data_follows_the_rollout_files(run_dir):
    from perception_rl.rollout_log import read_step

    data = collect(run_dir)
    assert [s["step"] for s in data["steps"]] == [1, 2]
    for step in data["steps"]:
        rows = read_step(run_dir / "rollouts" / f"step_{step['step']:06d}.parquet")[0]
        responses = [r for g in step["groups"] for r in g["responses"]]
        assert len(responses) == len(rows) == 8 and [len(g["responses"]) for g in step["groups"]] == [4, 4]
        for row, response in zip(rows, responses):
            items = row["judge/visual/items"]
            assert ("right_answer_wrong_perception" in response["flags"]) == (
                row["reward/accuracy"] == 1.0 and row["judge/visual/failure"] is None and bool(items)
                and any(i != "correct" for i in items))
            assert ("judge_failed" in response["flags"]) == (row["judge/visual/failure"] is not None)
        zero = [g["flags"] == ["zero_advantage"] for g in step["groups"]]
        assert zero == [all(r["advantage"] == 0 for r in rows if r["group"] == g) for g in (0, 1)]
        assert zero[1], "the second group's four identical completions carry no signal"
        for group in step["groups"]:
            assert all(data["images"][key].startswith("data:image/png;base64,") for key in group["images"])
    assert len(data["images"]) == 2, "two pictures, each embedded once across steps and responses"
    assert 'data-series="total"' in data["curves_svg"] and 'data-series="accuracy"' in data["curves_svg"]
    assert 'data-s0="1" data-s1="3"' in data["curves_svg"], "steps done: the CSV's step + 1"


def test_test_rows_with_their_own_images(tmp_path):
    folder = tmp_path / "eval" / "mine"
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(folder / "a.png")
    rows = [{"id": "a", "prompt": "p", "response": "r", "correct": True, "perception": 0.5,
             "perception_correct": False, "truncated": False, "images": ["a.png"], "annotations": ["x", "y"],
             "perception_items": ["correct", "wrong"]},
            {"id": "b", "prompt": "q", "response": "s", "correct": False, "perception": None,
             "perception_correct": None, "truncated": True, "images": [str(folder / "a.png")]}]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluation = collect(tmp_path)["evaluations"][0]
    assert evaluation["name"] == "mine" and [i["id"] for i in evaluation["items"]] == ["a", "b"]
    assert evaluation["items"][0]["flags"] == ["correct", "right_answer_wrong_perception"]
    assert evaluation["items"][1]["flags"] == ["wrong", "perception_unknown", "truncated"]
    assert evaluation["items"][0]["images"] == evaluation["items"][1]["images"], "one picture, embedded once"
    # The run folder, its eval/ folder and the evaluation itself all find the same rows.
    for where in (tmp_path / "eval", folder):
        assert [i["id"] for i in collect(where)["evaluations"][0]["items"]] == ["a", "b"]


def test_rows_without_images_or_config_still_give_a_page(tmp_path, capsys):
    (tmp_path / "predictions.jsonl").write_text(json.dumps({"id": "a", "response": "r", "correct": False}) + "\n")
    page = write_page(tmp_path)
    assert page == tmp_path / "view.html" and "view-data" in page.read_text()
    assert "items are shown without images" in capsys.readouterr().err


def test_a_summary_with_nan_scores_gives_a_page(tmp_path):
    """`perception-rl test` writes NaN for a score no item had (no annotations): the page shows it as empty."""
    (tmp_path / "predictions.jsonl").write_text(json.dumps({"id": "a", "response": "r", "correct": False}) + "\n")
    (tmp_path / "summary.json").write_text('{"accuracy": 0.0, "perception": NaN, "groups": {"x": [{"accuracy": NaN}]}}')
    page = write_page(tmp_path).read_text()
    assert '"perception": null' in page and "NaN" not in page


def run_view(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "tests")}
    return subprocess.run([sys.executable, "-m", "perception_rl.cli", "view", *args], capture_output=True, text=True,
                          env=env, check=False, **kwargs)


def test_a_folder_with_nothing_to_view_ends_with_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    result = run_view(str(tmp_path), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith(f"perception-rl: error: {tmp_path}: nothing to view; expected training rollouts")
    assert "predictions.jsonl" in first
    missing = run_view(str(tmp_path / "absent"), timeout=120)
    assert missing.returncode == 2 and f"{tmp_path / 'absent'}: no such folder" in missing.stderr


def test_serve_answers_on_localhost(run_dir):
    command = [sys.executable, "-m", "perception_rl.cli", "view", str(run_dir), "--serve", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == str(run_dir / "view.html")
        line = process.stdout.readline().strip()
        assert line.startswith("serving http://127.0.0.1:"), line
        url = line.split()[1]
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200 and b'id="view-data"' in response.read()
    finally:
        process.terminate()
        process.wait(timeout=30)
