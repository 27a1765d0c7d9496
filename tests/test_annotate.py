"""`perception-rl annotate` against a scripted OpenAI-compatible server on 127.0.0.1 (tests/judge_server.py).

The fake model answers by request content: a solve request (it carries the image) gets a chain of thought
naming the problem's two figure facts and a right or wrong boxed answer, chosen per problem and sample
(the seed field); an extraction request gets a <facts> list with a duplicate and a fact the problem text
states, or an empty list, or prose. So every stage's counts and drop reasons are known in advance.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT
from eval_layouts import png, put_image, write_geometry3k_problem, write_parquet
from judge_server import JudgeServer, ServerScript

from perception_rl.annotate import WorkLog, clean_items, parse_facts
from perception_rl.annotate.cli import main, pipeline_parser
from perception_rl.annotate.worklog import digest, exclusive
from perception_rl.data import load_records

WRONG = {2: (0, 1), 3: (0,)}  # problem -> samples that answer wrong (p2 never right, p3 right on its second try)
NO_FACTS, PROSE = 4, 5  # problems whose extraction reply is an empty list / unparsable prose


def facts_of(i: int) -> list[str]:
    return [f"AB = {i + 3}", f"CD = {2 * i + 11}"]


def respond(body: dict) -> str:
    content = body["messages"][-1]["content"]
    if isinstance(content, list):  # a solve request: image parts, then the text
        text = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        i, k = int(re.search(r"figure (\d+)", text).group(1)), body.get("seed", 0)
        answer = 99 if k in WRONG.get(i, ()) else 10 + i
        return f"<think>[solution p{i} s{k}] From the figure: {facts_of(i)[0]}, {facts_of(i)[1]}.</think>\n<answer>\\boxed{{{answer}}}</answer>"
    i = int(re.search(r"\[solution p(\d+) s\d+\]", content).group(1))
    if i == NO_FACTS:
        return "<facts></facts>"
    if i == PROSE:
        return "The solution reads some lengths from the figure."
    first, second = facts_of(i)
    return f"<facts>\n- {first}\n- {second}\n- ${first.replace(' ', '')}$.\n- figure {i}\n</facts>"


def write_problems(root: Path, count: int = 6, extra_lines: list[str] = ()) -> Path:
    lines = []
    for i in range(count):
        put_image(root / "img" / f"{i}.png", png(colour=(30 * i, 90, 200)))
        lines.append(json.dumps({"id": f"p{i}", "problem": f"In figure {i}, find x.", "answer": str(10 + i),
                                 "images": [f"img/{i}.png"]}))
    (root / "problems.jsonl").write_text("\n".join([*lines, *extra_lines]) + "\n")
    return root / "problems.jsonl"


def write_config(root: Path, server: JudgeServer, **overrides) -> Path:
    model = {"base_url": server.url, "model": "fake", "max_concurrency": 4, "request_timeout": 5.0, "max_retries": 1,
             "backoff_base": 0.01, "backoff_max": 0.05, "progress_every_s": 0}
    config = {"input": str(root / "problems.jsonl"), "output_dir": str(root / "out"),
              "solve": {"samples": 2, "model": {**model, "temperature": 1.0}}, "extract": {"model": model}}
    for key, value in overrides.items():
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    (root / "annotate.yaml").write_text(yaml.safe_dump(config))
    return root / "annotate.yaml"


@pytest.fixture
def server():
    started = JudgeServer(ServerScript(respond=respond), lifetime_s=120, max_requests=2000).start()
    yield started
    started.stop()


def run(*argv: str) -> int:
    try:
        main(list(argv))
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


def expected_records() -> dict[str, list[str]]:
    return {f"p{i}": facts_of(i) for i in (0, 1, 3)}


# ------------------------------------------------------------------------------------------------ chained run
def test_chained_run_writes_records_that_load_and_a_rerun_sends_nothing(tmp_path, server):
    write_problems(tmp_path)
    config = write_config(tmp_path, server)
    assert run("run", "--config", str(config)) == 0
    records = load_records(tmp_path / "out" / "records.jsonl")
    assert {r.id: r.annotations for r in records} == expected_records()
    p3 = next(r for r in records if r.id == "p3")
    assert len(p3.metadata["annotation_source"]["solutions"]) == 1 and p3.images[0].endswith(".png")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["solve"]["requests"] == 12 and summary["solve"]["this_run"]["sent"] == 12
    assert summary["filter"] | {"wall_s": 0} == {"solutions": 12, "kept": 9, "dropped_by_reason": {"wrong_answer": 3},
                                                "problems_with_kept_solution": 5, "problems_without": 1, "wall_s": 0}
    extract = summary["extract"]
    assert extract["requests"] == 5 and extract["annotated_problems"] == 3
    assert extract["dropped_problems_by_reason"] == {"no_correct_solution": 1, "no_visual_facts": 1, "unparsable_reply": 1}
    assert extract["dropped_items_by_reason"] == {"duplicate": 3, "stated_in_problem": 3} and extract["items_kept"] == 6
    assert summary["tokens"]["solve"]["tokens_in"] > 0 and summary["tokens"]["extract"]["tokens_out"] > 0
    assert summary["write"]["records"] == 3 and summary["pending_requests"] == 0
    assert server.requests == 17 and len(set(server.digests)) == 17

    assert run("run", "--config", str(config)) == 0
    assert server.requests == 17, "a rerun answers every request from the work logs"
    assert {r.id: r.annotations for r in load_records(tmp_path / "out" / "records.jsonl")} == expected_records()


def test_solve_request_sends_the_image_inline_and_one_seed_per_sample(tmp_path, server):
    write_problems(tmp_path, count=1)
    assert run("solve", "--config", str(write_config(tmp_path, server, **{"solve.samples": 3}))) == 0
    bodies = server.bodies
    assert sorted(b["seed"] for b in bodies) == [0, 1, 2] and {b["temperature"] for b in bodies} == {1.0}
    parts = bodies[0]["messages"][-1]["content"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,") and "\\boxed{}" in parts[-1]["text"]
    assert not (tmp_path / "out" / "graded.jsonl").exists(), "one stage ran, alone"


def test_stages_run_alone_and_a_new_extraction_prompt_makes_new_requests_only_there(tmp_path, server):
    write_problems(tmp_path)
    config = str(write_config(tmp_path, server))
    with pytest.raises(FileNotFoundError, match="solutions.jsonl"):
        main(["filter", "--config", config])
    for stage in ("solve", "filter", "extract", "write"):
        assert run(stage, "--config", config) == 0
    sent = server.requests
    custom = tmp_path / "my-extract.yaml"
    template = yaml.safe_load((REPO_ROOT / "perception_rl/annotate/prompts/extract-v1.yaml").read_text())
    custom.write_text(yaml.safe_dump({**template, "name": "mine", "system": "List figure facts.\n{examples}"}))
    assert run("extract", "--config", config, "--extract.prompt", str(custom)) == 0
    assert server.requests == sent + 5, "only the extraction requests are new"
    assert server.bodies[-1]["messages"][0]["content"].startswith("List figure facts.")
    assert run("write", "--config", config, "--extract.prompt", str(custom)) == 0
    records = load_records(tmp_path / "out" / "records.jsonl")
    assert {r.metadata["annotation_source"]["prompt"].split("@")[0] for r in records} == {"mine-v1"}


def test_parquet_output_loads_in_training(tmp_path, server):
    write_problems(tmp_path)
    assert run("run", "--config", str(write_config(tmp_path, server, output_format="parquet"))) == 0
    records = load_records(tmp_path / "out" / "records.parquet")
    assert {r.id: r.annotations for r in records} == expected_records()


# ------------------------------------------------------------------------------------------------ failures and bad input
def test_failed_requests_are_counted_and_only_they_are_sent_again(tmp_path, server):
    write_problems(tmp_path)
    config = str(write_config(tmp_path, server))
    server.script.fault_rate, server.script.faults, server.script.sticky_faults = 0.4, ("http400",), True
    assert run("run", "--config", config) == 1, "unanswered requests: exit status 1"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    solve, extract = summary["solve"], summary["extract"]
    assert solve["this_run"]["failed"] > 0 and solve["pending"] == solve["this_run"]["failed"] == len(solve["failed_requests"])
    assert solve["this_run"]["failures_by_kind"] == {"http_error": solve["this_run"]["failed"]}
    assert summary["pending_requests"] == solve["pending"] + extract["pending"]
    failed = solve["this_run"]["failed"] + extract["this_run"]["failed"]
    server.script.fault_rate = 0.0
    before = server.requests
    assert run("run", "--config", config) == 0
    resent = server.digests[before:]
    assert len([d for d in resent if d in server.digests[:before]]) == failed, "only the failed requests again"
    assert {r.id: r.annotations for r in load_records(tmp_path / "out" / "records.jsonl")} == expected_records()


def test_bad_records_are_reported_with_file_and_line_and_the_rest_proceed(tmp_path, server, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bad = [
        json.dumps({"id": "no-answer", "problem": "In figure 7, find x.", "images": ["img/0.png"]}),
        json.dumps({"id": "no-image-file", "problem": "In figure 8, find x.", "answer": "1", "images": ["img/missing.png"]}),
        "{not json",
        json.dumps({"id": "no-image", "problem": "In figure 9, find x.", "answer": "1", "images": []}),
        json.dumps({"id": "broken-image", "problem": "In figure 9, find x.", "answer": "1", "images": ["img/broken.png"]}),
    ]
    path = write_problems(tmp_path, count=2, extra_lines=bad)
    assert run("run", "--config", str(write_config(tmp_path, server))) == 0
    err = capsys.readouterr().err
    for line, reason in [(3, "field 'answer' is missing"), (4, "field 'images[0]': file not found"), (5, "not valid JSON"),
                         (6, "field 'images': no image"), (7, "field 'images[0]': image unreadable")]:
        assert f"bad record {path}:{line}: {reason}" in err, (line, reason, err)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["input"]["problems"] == 2 and summary["input"]["bad"] == 5
    assert [b["where"] for b in summary["input"]["bad_records"]] == [f"{path}:{n}" for n in (3, 4, 5, 6, 7)]
    assert [r.id for r in load_records(tmp_path / "out" / "records.jsonl")] == ["p0", "p1"]


def test_existing_solutions_file_skips_the_solver(tmp_path, server, capsys):
    write_problems(tmp_path, count=2)
    solutions = tmp_path / "solutions.jsonl"
    solutions.write_text("\n".join([
        json.dumps({"id": "p0", "solutions": [respond_for(0, 0, 99), respond_for(0, 1, 10)]}),
        json.dumps({"id": "p1", "solution": respond_for(1, 0, 11)}),
        json.dumps({"id": "p7", "solution": "x"}),
        "{oops",
    ]) + "\n")
    config = write_config(tmp_path, server, **{"solve.model": None, "solve.solutions": str(solutions)})
    assert run("run", "--config", str(config)) == 0
    assert server.requests == 2 and all(isinstance(b["messages"][-1]["content"], str) for b in server.bodies)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [b["where"] for b in summary["solve"]["bad_lines"]] == [f"{solutions}:3", f"{solutions}:4"]
    assert summary["filter"]["kept"] == 2
    assert {r.id: r.annotations for r in load_records(tmp_path / "out" / "records.jsonl")} == {f"p{i}": facts_of(i) for i in (0, 1)}


def respond_for(i: int, k: int, answer: int) -> str:
    return f"<think>[solution p{i} s{k}] From the figure: {facts_of(i)[0]}, {facts_of(i)[1]}.</think>\n<answer>\\boxed{{{answer}}}</answer>"


def test_api_key_comes_from_the_named_environment_variable(tmp_path, server, monkeypatch):
    write_problems(tmp_path, count=1)
    config = str(write_config(tmp_path, server, **{"solve.model.api_key_env": "ANNOTATE_TEST_KEY"}))
    with pytest.raises(ValueError, match="model.api_key_env.*ANNOTATE_TEST_KEY"):
        main(["solve", "--config", config])
    monkeypatch.setenv("ANNOTATE_TEST_KEY", "sk-annotate")
    assert run("solve", "--config", config) == 0
    assert set(server.authorizations) == {"Bearer sk-annotate"}
    assert "sk-annotate" not in (tmp_path / "out" / "summary.json").read_text() + config


# ------------------------------------------------------------------------------------------------ kill and resume
def test_killed_midway_then_rerun_repeats_no_finished_request(tmp_path):
    """SIGKILL the command while requests are in flight; the rerun sends only what was not yet logged."""
    server = JudgeServer(ServerScript(respond=respond, latency_s=0.15), lifetime_s=120).start()
    try:
        write_problems(tmp_path, count=8)
        config = write_config(tmp_path, server, **{"solve.model.max_concurrency": 2, "extract.model.max_concurrency": 2})
        command = [sys.executable, "-m", "perception_rl.cli", "annotate", "run", "--config", str(config)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        log = tmp_path / "out" / "log" / "solve.jsonl"
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while not (log.is_file() and log.read_bytes().count(b"\n") >= 5) and process.poll() is None:
            assert time.monotonic() < deadline, "the first run never logged 5 solutions"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        received = len(server.digests)
        logged = {json.loads(line)["request"] for line in log.read_text().splitlines() if line.endswith("}")}
        assert 5 <= len(logged) < 16 and not (tmp_path / "out" / "records.jsonl").exists(), "killed midway"

        result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        rerun = server.digests[received:]
        assert not logged & set(rerun), "a request logged before the kill was sent again"
        repeated = set(rerun) & set(server.digests[:received])
        assert len(repeated) <= 2, "only the requests in flight at the kill (concurrency 2) may repeat"
        assert len(set(server.digests)) == 16 + 7, "every request answered once overall (8 x 2 solve, 7 extract)"
        records = load_records(tmp_path / "out" / "records.jsonl")
        assert {r.id: r.annotations for r in records} == {f"p{i}": facts_of(i) for i in (0, 1, 3, 6, 7)}
    finally:
        server.stop()


def test_a_second_process_on_the_same_output_dir_is_refused(tmp_path, server):
    write_problems(tmp_path, count=1)
    config = str(write_config(tmp_path, server))
    with exclusive(tmp_path / "out"), pytest.raises(RuntimeError, match="in use by another"):
        main(["solve", "--config", config])
    assert server.requests == 0 and run("solve", "--config", config) == 0


def test_work_log_drops_a_torn_last_line_and_appends_after_it(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps({"key": "a", "text": "x"}) + "\n" + '{"key": "b", "te')
    log = WorkLog(path)
    assert "a" in log and "b" not in log and log.torn_lines == 1
    log.append({"key": "c", "text": "y"})
    log.close()
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "c"]
    assert digest("ab", "c") != digest("a", "bc")


# ------------------------------------------------------------------------------------------------ parsing and cleaning
@pytest.mark.parametrize("reply, expected", [
    ("<facts>\n- AB = 5\n* BC = 7\n1. Angle A is 30 degrees\n2) D lies on BC\n</facts>",
     ["AB = 5", "BC = 7", "Angle A is 30 degrees", "D lies on BC"]),
    ("<think>maybe <facts>- wrong</facts></think><facts>\n- right\n</facts>", ["right"]),
    ("<facts>\nNone\n</facts>", []),
    ("<facts></facts>", []),
    ("<facts>\n- cut off at the end", ["cut off at the end"]),
    ("<info1>AB = 5</info1><info2>C is a right angle</info2>", ["AB = 5", "C is a right angle"]),
    ("I could not find any facts.", None),
])
def test_parse_facts(reply, expected):
    assert parse_facts(reply) == expected


def test_clean_items_normalises_deduplicates_and_counts_drops():
    items = ["AB = 5", "$AB=5$.", "'CD = 7'", "AD = 27", "AB = 50", "  ", "x" * 300, "E lies on BC", "F", "G", "angle 1 = 30°",
             "Angle 1 = 30 degrees"]
    kept, dropped = clean_items(items, "If AD = 27 and AB = 50, find BC.", max_items=4, max_chars=200)
    assert kept == ["AB = 5", "CD = 7", "E lies on BC", "F"]
    assert dropped == {"duplicate": 2, "stated_in_problem": 2, "empty": 1, "too_long": 1, "over_max_items": 2}


# ------------------------------------------------------------------------------------------------ converters
def test_convert_geometry3k_release_into_records(tmp_path):
    write_geometry3k_problem(tmp_path / "g3k", "train", 5, "Find x.", ["3", "4", "5", "6"], "B",
                             ["Perpendicular(Line(A, B), Line(B, C))", "Equals(LengthOf(Line(A, B)), 4)"])
    write_geometry3k_problem(tmp_path / "g3k", "train", 6, "Find y.", ["1", "2", "3", "4"], "C")
    (tmp_path / "g3k" / "train" / "6" / "img_diagram.png").unlink()
    assert run("convert", "--from", "geometry3k", "--input", str(tmp_path / "g3k"), "--split", "train",
               "--output", str(tmp_path / "out" / "g3k.jsonl")) == 0
    records = load_records(tmp_path / "out" / "g3k.jsonl")
    assert [r.id for r in records] == ["5"] and records[0].choices == ["3", "4", "5", "6"] and records[0].answer == "B"
    assert records[0].annotations == ["Perpendicular(Line(A, B), Line(B, C))", "Equals(LengthOf(Line(A, B)), 4)"]
    assert Path(records[0].images[0]).parent == (tmp_path / "out" / "images").resolve()


def test_convert_the_authors_record_shape(tmp_path, capsys):
    put_image(tmp_path / "data" / "a.png", png((10, 200, 10)))
    rows = [
        {"problem": "<image>Find x.", "answer": "5", "images": [{"bytes": png(), "path": None}],
         "visual_key_info": "<info1>AB = 5</info1><info2>Angle C is a right angle</info2>"},
        {"problem": "<image>Find y.", "answer": None, "images": [{"bytes": png(), "path": None}], "visual_key_info": ""},
        {"problem": "Find z. <image>", "answer": "7", "images": [{"bytes": None, "path": "a.png"}], "visual_key_info": ""},
    ]
    source = write_parquet(tmp_path / "data" / "train.parquet", rows)
    assert run("convert", "--from", "authors", "--input", str(source), "--output", str(tmp_path / "out" / "r.jsonl")) == 0
    assert f"{source}:row 1: field 'answer' is missing" in capsys.readouterr().err
    records = load_records(tmp_path / "out" / "r.jsonl")
    assert [(r.id, r.problem, r.annotations) for r in records] == [
        ("train-0", "Find x.", ["AB = 5", "Angle C is a right angle"]), ("train-2", "Find z.", None)]


# ------------------------------------------------------------------------------------------------ quality tools
def test_report_and_agreement_check(tmp_path, server):
    write_problems(tmp_path)
    config = str(write_config(tmp_path, server))
    assert run("run", "--config", config) == 0
    assert run("report", "--config", config, "--samples", "2") == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.count("\n### p") == 2 and '<img src="images/' in report and "<th>Kept solution</th>" in report
    assert "<li>AB = " in report and "&lt;answer&gt;\\boxed{" in report
    for reason in ("no_correct_solution", "no_visual_facts", "unparsable_reply"):
        assert f"### {reason}" in report
    assert "sample 0: '99' (wrong_answer)" in report
    judge_config = tmp_path / "rules.yaml"
    judge_config.write_text(yaml.safe_dump({"judge": {"class_path": "perception_rl.RuleJudge"}}))
    assert run("agree", "--config", config, "--judge_config", str(judge_config)) == 0
    result = json.loads((tmp_path / "out" / "agreement.json").read_text())
    assert result["records"] == 3 and result["own_mean"] == 1.0 and result["other_mean"] == 0.0
    rows = [json.loads(line) for line in (tmp_path / "out" / "agreement.jsonl").read_text().splitlines()]
    assert all(row["id"] != row["other_id"] for row in rows)


def test_shipped_configs_parse_and_open_with_their_command():
    configs = sorted((REPO_ROOT / "configs" / "annotate").glob("*.yaml"))
    assert configs
    for config in configs:
        assert config.read_text().startswith("# perception-rl annotate "), config
        parser = pipeline_parser("run")
        cfg = parser.parse_args(["--config", str(config)])
        init = parser.instantiate(cfg)
        assert init.solve.model is not None and init.extract.model is not None
