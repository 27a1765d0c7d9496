"""The annotate pipeline over the 10 real Geometry3K items of ../shared/data/dev (skipped when absent).

The items are laid out as Geometry3K's official release (train/<id>/data.json, img_diagram.png,
logic_form.json) and read by the pipeline's geometry3k input. Their human-annotated diagram logic forms
serve as reference annotations: the scripted solver states them in words (recognising each problem by its
real diagram's bytes), boxes the gold option for most problems (an option's text for one, a wrong option
for two), and the scripted extractor lists the stated facts back. The checks: the real answer checking
keeps the right solutions, the records hold every reference fact, and the judge agreement check scores a
solution against its own annotations near 1 and against another problem's near 0.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from pathlib import Path

import yaml
from judge_server import JudgeServer, ServerScript

from perception_rl.annotate.cli import main
from perception_rl.data import load_records

WRONG_ALWAYS = {"14", "17"}  # every sample boxes a wrong option
WRONG_FIRST = {"13"}  # the first sample is wrong, the second right
BOX_OPTION_TEXT = {"15"}  # boxes the option's text ("5 \sqrt { 3 }") instead of its letter
_REWRITES = [
    (r"Line\((\w+),\s*(\w+)\)", r"\1\2"), (r"Angle\((\w+),\s*(\w+),\s*(\w+)\)", r"angle \1\2\3"),
    (r"Arc\((\w+),\s*(\w+)\)", r"arc \1\2"), (r"Circle\((\w+),\s*\w+\)", r"circle \1"),
    (r"(?:LengthOf|MeasureOf)\(([^()]*)\)", r"\1"), (r"^Equals\(([^,]*),\s*(.*)\)$", r"\1 = \2"),
    (r"^PointLiesOn(?:Line|Circle)\((\w+),\s*(.*)\)$", r"\1 lies on \2"),
    (r"^Perpendicular\((\w+),\s*(\w+)\)$", r"\1 is perpendicular to \2"), (r"^Parallel\((\w+),\s*(\w+)\)$", r"\1 is parallel to \2"),
]


def in_words(logic_form: str) -> str:
    """"Perpendicular(Line(A, C), Line(B, C))" -> "AC is perpendicular to BC"."""
    text = logic_form.strip()
    for pattern, replacement in _REWRITES:
        text = re.sub(pattern, replacement, text)
    return text


def write_release(dev: Path, root: Path) -> dict[str, dict]:
    """The dev set's Geometry3K items as the official layout; returns the dev rows by folder id."""
    rows = {}
    for line in (dev / "dev.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["source"] != "Geometry3K":
            continue
        folder = root / "train" / row["id"].rsplit("-", 1)[1]
        folder.mkdir(parents=True)
        meta = row["metadata"]
        data = {"problem_text": row["question"], "choices": row["choices"], "answer": row["answer"], "id": int(folder.name),
                "problem_type_graph": meta["problem_type_graph"], "problem_type_goal": meta["problem_type_goal"],
                "annotat_text": meta["annotat_text"], "data_type": "train"}
        (folder / "data.json").write_text(json.dumps(data))
        (folder / "logic_form.json").write_text(json.dumps({"text_logic_form": meta["text_logic_form"],
                                                            "diagram_logic_form": meta["diagram_logic_form"]}))
        shutil.copyfile(dev / row["image"], folder / "img_diagram.png")
        rows[folder.name] = row
    return rows


class ScriptedModels:
    """The solver and the extractor, answering from the real items' logic forms."""

    def __init__(self, rows: dict[str, dict], root: Path):
        self.rows = rows
        self.by_image = {hashlib.sha256((root / "train" / k / "img_diagram.png").read_bytes()).hexdigest(): k for k in rows}

    def facts(self, item: str) -> list[str]:
        return [in_words(form) for form in self.rows[item]["metadata"]["diagram_logic_form"] if form.strip()]

    def __call__(self, body: dict) -> str:
        content = body["messages"][-1]["content"]
        if isinstance(content, list):
            url = next(part["image_url"]["url"] for part in content if part["type"] == "image_url")
            item = self.by_image[hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest()]
            return self.solution(item, body["seed"])
        item = re.search(r"\[solution (\d+) s\d\]", content).group(1)
        facts = self.facts(item)
        return "<facts>\n" + "".join(f"- {fact}\n" for fact in [*facts, facts[0]]) + "</facts>"

    def solution(self, item: str, sample: int) -> str:
        row = self.rows[item]
        gold = row["answer"]
        if item in WRONG_ALWAYS or (item in WRONG_FIRST and sample == 0):
            boxed = "A" if gold != "A" else "B"
        else:
            boxed = row["answer_value"] if item in BOX_OPTION_TEXT else gold
        stated = "\n".join(f"{fact}." for fact in self.facts(item))
        return f"<think>[solution {item} s{sample}] Reading the figure:\n{stated}\nSo the answer follows.</think>\n" \
               f"<answer>\\boxed{{{boxed}}}</answer>"


def test_geometry3k_dev_items_end_to_end(dev_data, tmp_path):
    rows = write_release(dev_data, tmp_path / "geometry3k")
    assert len(rows) == 10
    models = ScriptedModels(rows, tmp_path / "geometry3k")
    server = JudgeServer(ServerScript(respond=models), lifetime_s=120).start()
    try:
        model = {"base_url": server.url, "model": "scripted", "max_concurrency": 4, "request_timeout": 5.0, "progress_every_s": 0}
        config = {"input": str(tmp_path / "geometry3k"), "input_format": "geometry3k", "split": "train",
                  "output_dir": str(tmp_path / "out"), "solve": {"samples": 2, "model": {**model, "temperature": 1.0}},
                  "extract": {"model": model, "max_items": 64}}
        (tmp_path / "annotate.yaml").write_text(yaml.safe_dump(config))
        main(["run", "--config", str(tmp_path / "annotate.yaml")])
        main(["agree", "--config", str(tmp_path / "annotate.yaml"), "--judge", "perception_rl.RuleJudge"])
        main(["report", "--config", str(tmp_path / "annotate.yaml"), "--samples", "3"])
    finally:
        server.stop()

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["input"]["problems"] == 10 and summary["input"]["bad"] == 0
    assert summary["filter"]["kept"] == 20 - 2 * len(WRONG_ALWAYS) - len(WRONG_FIRST)
    assert summary["extract"]["dropped_problems_by_reason"] == {"no_correct_solution": len(WRONG_ALWAYS)}
    records = load_records(tmp_path / "out" / "records.jsonl")
    assert sorted(r.id for r in records) == sorted(set(rows) - WRONG_ALWAYS)
    for record in records:
        reference = [form for form in rows[record.id]["metadata"]["diagram_logic_form"]]
        assert record.metadata["reference_annotations"] == reference and record.metadata["benchmark"] == "geometry3k"
        assert record.annotations == models.facts(record.id), "every reference fact, once, in order"
        assert record.choices == rows[record.id]["choices"] and record.answer == rows[record.id]["answer"]

    agreement = json.loads((tmp_path / "out" / "agreement.json").read_text())
    assert agreement["records"] == 8 and agreement["failures"] == 0
    assert agreement["own_mean"] >= 0.95 and agreement["other_mean"] <= 0.2, agreement
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Input's own annotations" in report and "### no_correct_solution" in report
