"""`perception-rl compare`: the exact McNemar test on the paper's counts, pairing, groups and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy.stats import binom

from perception_rl.cli import main as cli_main
from perception_rl.eval.compare import mcnemar, mcnemar_p_value

# paper.md §1 and §6: perception of 50 MathVista geometry responses, discordant counts and reported p-values.
PAPER = [(2, 10, 0.0386), (1, 5, 0.2188), (2, 4, 0.6875)]


@pytest.mark.parametrize("b, c, reported", PAPER)
def test_paper_p_values(b, c, reported):
    p = mcnemar_p_value(b, c)
    assert p == pytest.approx(reported, abs=5e-5)
    assert p == pytest.approx(min(1.0, 2 * binom.cdf(min(b, c), b + c, 0.5)))  # the binomial form, written out
    assert mcnemar_p_value(c, b) == p  # symmetric


def test_degenerate_counts():
    assert mcnemar_p_value(0, 0) == 1.0
    assert mcnemar_p_value(5, 5) == 1.0
    with pytest.raises(ValueError):
        mcnemar_p_value(-1, 2)


def test_two_by_two_table():
    result = mcnemar([True, True, False, False, True], [True, False, True, False, False])
    assert (result.both, result.b, result.c, result.neither, result.n) == (1, 2, 1, 1, 5)


def write_rows(path: Path, outcomes: dict[str, bool], version: dict[str, str] | None = None) -> Path:
    rows = [{"id": i, "correct": ok, "metadata": {"problem_version": (version or {}).get(i, "all")}} for i, ok in outcomes.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def paper_runs(tmp_path: Path, b: int, c: int, concordant: int = 38) -> tuple[Path, Path]:
    """Two runs over the same ids with exactly b and c discordant items."""
    a, bb = {}, {}
    for k in range(b):
        a[f"b{k}"], bb[f"b{k}"] = True, False
    for k in range(c):
        a[f"c{k}"], bb[f"c{k}"] = False, True
    for k in range(concordant):
        a[f"s{k}"] = bb[f"s{k}"] = k % 2 == 0
    return write_rows(tmp_path / "a.jsonl", a), write_rows(tmp_path / "b.jsonl", bb)


@pytest.mark.parametrize("b, c, reported", PAPER)
def test_cli_reproduces_the_paper(tmp_path, capsys, b, c, reported):
    a, bb = paper_runs(tmp_path, b, c)
    cli_main(["compare", str(a), str(bb), "--key", "correct", "--json", str(tmp_path / "out.json")])
    out = capsys.readouterr().out
    assert f"b = {b} (A true, B false), c = {c} (A false, B true)" in out
    assert f"exact McNemar p = {reported:.3g}" in out or f"p = {mcnemar_p_value(b, c):.4g}" in out
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["overall"]["p_value"] == pytest.approx(reported, abs=5e-5) and saved["overall"]["n"] == b + c + 38


def test_cli_reports_mismatched_ids_and_groups(tmp_path, capsys):
    versions = {"1": "Text Lite", "2": "Text Lite", "3": "Vision Only", "4": "Vision Only"}
    a = write_rows(tmp_path / "a.jsonl", {"1": True, "2": True, "3": False, "4": True, "only-a": True}, versions)
    b = write_rows(tmp_path / "b.jsonl", {"1": False, "2": True, "3": True, "4": True, "only-b": False}, versions)
    cli_main(["compare", str(a), str(b), "--by", "problem_version"])
    out = capsys.readouterr().out
    assert "paired 4 items by id on 'correct'; ids only in A: 1, only in B: 1" in out
    assert "only in A (not compared): only-a" in out and "only in B (not compared): only-b" in out
    assert "| Text Lite | 2 | 1 | 1 | 0 | 0 | 1 |" in out
    assert "| Vision Only | 2 | 1 | 0 | 1 | 0 | 1 |" in out
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["compare", str(a), str(b), "--strict"])
    assert exit_info.value.code == 1


def test_cli_rejects_bad_rows(tmp_path, capsys):
    good = write_rows(tmp_path / "good.jsonl", {"1": True})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "correct": 0.7}\n')
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["compare", str(good), str(bad)])
    assert exit_info.value.code == 2
    assert "bad.jsonl:1: field 'correct' must be a binary outcome" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["compare", str(good), str(good), "--key", "format_ok"])
    assert "row has no field 'format_ok'" in capsys.readouterr().err
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "1", "correct": true}\n{"id": "1", "correct": false}\n')
    with pytest.raises(SystemExit):
        cli_main(["compare", str(good), str(dup)])
    assert "dup.jsonl:2: duplicate id '1'" in capsys.readouterr().err
