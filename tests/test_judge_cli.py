"""`perception-rl judge`: scores a JSONL of (annotations, response) pairs, writes per-item verdicts, prints a summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import yaml
from judge_server import JudgeServer, ServerScript

from perception_rl.data.records import RecordError
from perception_rl.judge.cli import judge_spec, main

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_pairs(path: Path, count: int) -> dict[str, str]:
    """Pairs whose responses carry a case id; returns the scripted reply per id."""
    replies = {}
    with path.open("w") as handle:
        for k in range(count):
            values = [(k >> j) & 1 for j in range(1 + k % 3)]
            replies[f"case-{k:03d}"] = "".join(f"<verdict{j + 1}>{v}</verdict{j + 1}>" for j, v in enumerate(values))
            annotations = [f"Fact {j}." for j in range(len(values))]
            handle.write(json.dumps({"id": f"p{k}", "annotations": annotations, "response": f"case-{k:03d} text"}) + "\n")
    return replies


def test_judge_command_against_a_faulty_server(tmp_path):
    """The console command end to end: 30% faults (500s, hangs, unparsable), bounded time, failures by kind."""
    pairs = tmp_path / "pairs.jsonl"
    replies = write_pairs(pairs, 40)
    config = tmp_path / "judge.yaml"
    config.write_text(yaml.safe_dump({"judge": {"class_path": "perception_rl.OpenAIJudge", "init_args": {
        "model": "judge", "max_concurrency": 16, "request_timeout": 0.5, "max_retries": 1,
        "backoff_base": 0.01, "backoff_max": 0.05, "batch_timeout": 10.0,
    }}}))
    script = ServerScript(replies=replies, fault_rate=0.3, faults=("http500", "hang", "unparsable"), sticky_faults=True, seed=2)
    with JudgeServer(script, lifetime_s=120) as server:
        start = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "perception_rl.cli", "judge", "--config", str(config), "--input", str(pairs),
             f"--judge.init_args.base_url={server.url}", "--summary_json", str(tmp_path / "summary.json")],
            capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "pairs.verdicts.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"p{k}" for k in range(40)]
    failed = [r for r in rows if r["failure"]]
    assert 0 < len(failed) < 40 and {r["failure"] for r in failed} <= {"http_error", "timeout", "unparsable"}
    for k, row in enumerate(rows):
        if not row["failure"]:
            values = [(k >> j) & 1 for j in range(1 + k % 3)]
            assert row["verdicts"] == values and row["score"] == sum(values) / len(values), row
            assert row["prompt"].startswith("perception-v1@")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failures"] == len(failed) and sum(summary["failures_by_kind"].values()) == len(failed)
    for line in ("mean score:", "failures:", "timeout", "http_error", "unparsable", "p50", "p95", "pairs/s"):
        assert line in result.stdout, line
    assert elapsed < 30, "import time plus at most two 0.5 s attempts per request"


def test_in_process_with_the_demo_config_reports_agreement(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"annotations": ["There are 2 circles.", "There is 1 square."], "response": "2 circles and 1 square",
                    "expected": [1, 1]}) + "\n"
        + json.dumps({"annotations": "<info1>There is 1 square.</info1>", "response": "3 squares", "expected": [1]}) + "\n"
        + json.dumps({"annotations": [], "response": "no facts"}) + "\n"
    )
    main(["--config", str(REPO_ROOT / "configs" / "demo.yaml"), "--input", str(pairs), "--output", str(tmp_path / "out.jsonl")])
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["score"] for r in rows] == [1.0, 0.0, 0.0] and rows[1]["verdicts"] == [0.0]
    assert "RuleJudge" in out and "mean score: 0.500" in out and "item agreement with 'expected': 0.667" in out


def test_every_judge_config_yields_a_judge_spec():
    configs = sorted((REPO_ROOT / "configs" / "judges").glob("*.yaml")) + [REPO_ROOT / "configs" / "demo.yaml"]
    assert len(configs) >= 3
    for config in configs:
        assert judge_spec(str(config))["class_path"].startswith("perception_rl.")


def test_bad_input_names_file_line_and_field(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"annotations": ["a"], "response": "x"}) + "\n" + json.dumps({"annotations": ["a"]}) + "\n")
    with pytest.raises(RecordError, match=r"pairs.jsonl:2: field 'response'"):
        main(["--config", str(REPO_ROOT / "configs" / "demo.yaml"), "--input", str(pairs)])


def test_a_config_without_a_judge_is_refused(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  rewards: []\n")
    with pytest.raises(ValueError, match="no `judge:` section"):
        judge_spec(str(config))


# ---------------------------------------------------------------------------------------------- issue 12: the audit command
def closed_port() -> int:
    """A port that nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_no_server_fails_the_command_and_says_where_and_why(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, 4)
    url = f"http://127.0.0.1:{closed_port()}/v1"
    result = subprocess.run(
        [sys.executable, "-m", "perception_rl.cli", "judge", "--config", str(REPO_ROOT / "configs" / "judges" / "openai_local.yaml"),
         "--input", str(pairs), f"--judge.init_args.base_url={url}", "--judge.init_args.max_retries=0"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode != 0, result.stdout
    last = (result.stdout + result.stderr).strip().splitlines()[-3:]
    text = "\n".join(last)
    assert f"cannot connect to {url}" in text and "is the server running?" in text, text
    assert "configs/judges/openai_local.yaml" in text and "no judge request succeeded" in text, text
    assert "connection_error" in text, "the first error's kind"


def test_a_judge_that_answers_in_words_fails_the_command(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, 3)
    script = ServerScript(default_reply="<verdict1>present</verdict1><verdict2>present</verdict2>")
    with JudgeServer(script, lifetime_s=60) as server:
        with pytest.raises(SystemExit) as exit_info:
            main(["--judge", json.dumps({"class_path": "perception_rl.OpenAIJudge", "init_args": {
                "base_url": server.url, "model": "judge", "max_retries": 0}}), "--input", str(pairs)])
    assert exit_info.value.code not in (0, None)
    out = capsys.readouterr().out
    assert "unparsable 3" in out and "items: answered 0" in out
    assert "no verdict" in out.strip().splitlines()[-1], out


def test_summary_counts_item_outcomes(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, 3)  # 1, 2 and 3 facts
    replies = {"case-000": "<verdict1>1</verdict1>", "case-001": "<verdict1>yes</verdict1><verdict2>1</verdict2>",
               "case-002": "<verdict1>1</verdict1>"}
    with JudgeServer(ServerScript(replies=replies), lifetime_s=60) as server:
        main(["--judge", json.dumps({"class_path": "perception_rl.OpenAIJudge", "init_args": {"base_url": server.url,
              "model": "judge"}}), "--input", str(pairs), "--summary_json", str(tmp_path / "s.json")])
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["items"] == {"answered": 3, "unparsable": 1, "missing": 2}
    assert "items: answered 3, unparsable 1, missing 2" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "pairs.verdicts.jsonl").read_text().splitlines()]
    assert [(r["answered"], r["unparsable"], r["missing"]) for r in rows] == [(1, 0, 0), (1, 1, 0), (1, 0, 2)]
