"""Benchmark adapters on small fixture releases written in each benchmark's official layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_layouts import (
    mathverse_item,
    mathvision_item,
    mathvista_item,
    wemath_item,
    write_geometry3k_problem,
    write_mathverse,
    write_mathvision,
    write_mathvista,
    write_mathvista_parquet,
    write_parquet,
    write_wemath,
)

from perception_rl.data.prompts import DEFAULT_FORMAT_INSTRUCTION
from perception_rl.eval.benchmarks import (
    VISION_ONLY_PROBLEM,
    BenchmarkFormatError,
    load_benchmark,
    split_inline_choices,
    split_option_string,
)
from perception_rl.eval.datamodule import BenchmarkDataModule

MATHVISTA = [
    mathvista_item("1", "Find $m\\angle H$", "97", choices=["97", "102", "107", "122"]),
    mathvista_item("2", "By what distance is the spring compressed?", "1.2", precision=1.0, answer_type="float",
                   task="textbook question answering", skills=["scientific reasoning", "arithmetic reasoning"]),
]


def by_id(items):
    return {r.id: r for r in items.records}


# ------------------------------------------------------------------------------------------------ MathVista
def test_mathvista_github_layout(tmp_path):
    write_mathvista(tmp_path / "MathVista", [*MATHVISTA, mathvista_item("3", "How many?", "4", answer_type="integer")])
    (tmp_path / "MathVista" / "data" / "images" / "3.jpg").unlink()  # a missing image is a reported skip
    items = load_benchmark("mathvista", tmp_path / "MathVista")
    records = by_id(items)
    assert list(records) == ["1", "2"] and items.split == "testmini"
    assert records["1"].choices == ["97", "102", "107", "122"] and records["1"].answer == "97"
    assert records["2"].metadata["precision"] == 1 and records["2"].metadata["task"] == "textbook question answering"
    assert records["2"].metadata["skills"] == ["scientific reasoning", "arithmetic reasoning"]
    assert Path(records["1"].images[0]).is_file()
    assert [(s.id, s.reason.split(":")[0]) for s in items.skipped] == [("3", "image not found")]


def test_mathvista_hugging_face_parquet(tmp_path):
    write_mathvista_parquet(tmp_path / "hf", MATHVISTA)
    records = by_id(load_benchmark("mathvista", tmp_path / "hf", "testmini"))
    assert isinstance(records["1"].images[0], bytes)  # decoded_image embedded in the parquet
    assert records["2"].metadata["precision"] == 1 and isinstance(records["2"].metadata["precision"], int)


def test_a_split_with_no_usable_item_is_an_error_with_the_reasons(tmp_path):
    items = [mathvista_item("9", "What is it?", "")]
    write_mathvista(tmp_path, items)
    (tmp_path / "data" / "testmini.json").rename(tmp_path / "data" / "test.json")
    with pytest.raises(BenchmarkFormatError, match="no usable item.*all 1 skipped \\(no gold answer"):
        load_benchmark("mathvista", tmp_path, "test")


# ------------------------------------------------------------------------------------------------ MathVerse
def test_mathverse_versions_inline_choices_and_vision_only(tmp_path):
    question = "In triangle ABC, angle A = 80.0, then angle CED is ()\nChoices:\nA:40°\nB:60°\nC:120°\nD:140°"
    items = [
        mathverse_item("1", "1", "Text Dominant", question, "D", "images_version_1-4/image_1.png"),
        mathverse_item("2", "1", "Vision Only", "", "D", "images_version_6/image_1.png"),
        mathverse_item("3", "2", "Text Lite", "Find L.", "14", "images_version_1-4/image_2.png",
                       question_type="free-form", subject="Solid Geometry"),
    ]
    write_mathverse(tmp_path / "MathVerse", items)
    records = by_id(load_benchmark("mathverse", tmp_path / "MathVerse"))
    assert records["1"].problem == "In triangle ABC, angle A = 80.0, then angle CED is ()"
    assert records["1"].choices == ["40°", "60°", "120°", "140°"]
    assert records["2"].problem == VISION_ONLY_PROBLEM and records["2"].choices is None
    assert [records[i].metadata["problem_version"] for i in "123"] == ["Text Dominant", "Vision Only", "Text Lite"]
    assert records["3"].metadata["subject"] == "Solid Geometry" and records["3"].choices is None


def test_mathverse_text_only_split_has_no_image(tmp_path):
    item = mathverse_item("1", "1", "Text Only", "What is 2 + 3?", "5", "", question_type="free-form")
    write_mathverse(tmp_path, [item], name="testmini_text_only.json")
    record = load_benchmark("mathverse", tmp_path, "testmini_text_only").records[0]
    assert record.images == [] and record.metadata["problem_version"] == "Text Only"


# ------------------------------------------------------------------------------------------------ MATH-Vision
def test_mathvision_jsonl_layout_letters_options_and_drops_image_tokens(tmp_path):
    items = [
        mathvision_item("4", "How many different digits can you find in this picture?\n<image1>", "6", level=1, subject="counting"),
        mathvision_item("27", "In which order will she go past the shapes?\n<image1>", "A",
                        options=["$\\Delta, \\square$", "$\\square, \\Delta$"], level=5, subject="topology"),
        mathvision_item("33", "The ant <image1> walks from home <image2> along the arrows.", "A", options=list("ABCDE")),
    ]
    write_mathvision(tmp_path / "MATH-V", items, "testmini")
    records = by_id(load_benchmark("mathvision", tmp_path / "MATH-V", "testmini"))
    assert records["4"].problem == "How many different digits can you find in this picture?" and records["4"].choices is None
    assert records["27"].choices == ["$\\Delta, \\square$", "$\\square, \\Delta$"]
    assert records["33"].problem == "The ant walks from home along the arrows."
    assert (records["4"].metadata["level"], records["4"].metadata["subject"]) == ("1", "counting")
    with pytest.raises(BenchmarkFormatError, match="test.jsonl"):  # only testmini was written
        load_benchmark("mathvision", tmp_path / "MATH-V", "test")


def test_mathvision_parquet_shards(tmp_path):
    rows = [{**mathvision_item(str(i), f"Question {i}?", str(i)), "decoded_image": {"bytes": _png(), "path": None}} for i in range(3)]
    write_parquet(tmp_path / "data" / "test-00000-of-00002.parquet", rows[:2])
    write_parquet(tmp_path / "data" / "test-00001-of-00002.parquet", rows[2:])
    loaded = load_benchmark("mathvision", tmp_path)
    assert [r.id for r in loaded.records] == ["0", "1", "2"] and len(loaded.files) == 2


def _png() -> bytes:
    from eval_layouts import png

    return png()


# ------------------------------------------------------------------------------------------------ WeMath
def test_wemath_options_steps_and_repeated_ids(tmp_path):
    items = [
        wemath_item(1, "2steps_1", "2steps_1", "The radius is ( ) cm.", "A. 1 cm;B. 1.5 cm;C. 3.14 cm;D. 6.28 cm; E. No correct answer", "A", "2steps/image/1-1.png"),
        wemath_item(2, "2steps_1", "2steps_2", "The circumference is ( ).", "A. 10 cm;B. 15 cm;C. 31.4 cm; D. No correct answer", "C", "2steps/image/1-2.png"),
        wemath_item(3, "2steps_1", "2steps_multi", "Both?", "A. F;    B. D;    C. B;    D. I; E. No correct answer", "D", "2steps/image/1-multi.png"),
    ]
    write_wemath(tmp_path / "We-Math", items)
    records = by_id(load_benchmark("wemath", tmp_path / "We-Math"))
    assert list(records) == ["1", "2", "3"], "the WeMath ID repeats across sub-questions; the question number does not"
    assert records["1"].choices == ["1 cm", "1.5 cm", "3.14 cm", "6.28 cm", "No correct answer"]
    assert records["3"].choices == ["F", "D", "B", "I", "No correct answer"]
    assert [records[i].metadata["steps"] for i in "123"] == ["one-step", "one-step", "two-step"]
    assert records["2"].metadata["knowledge concept"] == "Circumference of Circles"


@pytest.mark.parametrize(
    "options, expected",
    [
        ("A. 300, 400;B. 400, 300; C. No correct answer", ["300, 400", "400, 300", "No correct answer"]),
        # an option text holding ";E." and ";C." is not cut there
        ("A. angle AB;E.; B. angle AB;C.; C. none.; D. unknown", ["angle AB;E.", "angle AB;C.", "none.", "unknown"]),
        ("A. 15π;B. 10π", ["15π", "10π"]),
        ("no options here", None),
    ],
)
def test_split_option_string(options, expected):
    assert split_option_string(options) == expected


def test_split_inline_choices_needs_a_trailing_lettered_block():
    assert split_inline_choices("Which value?\nChoice:\nA.5 cm\nB.5 m") == ("Which value?", ["5 cm", "5 m"])
    assert split_inline_choices("Find L.") == ("Find L.", None)
    assert split_inline_choices("Choices:\nA:1\nC:2")[1] is None  # letters must run A, B, ...


# ------------------------------------------------------------------------------------------------ Geometry3K
def test_geometry3k_problem_folders(tmp_path):
    write_geometry3k_problem(tmp_path, "test", 2402, "Find x.", ["3", "4", "5", "6"], "B", ["Perpendicular(Line(A, B), Line(B, C))"])
    write_geometry3k_problem(tmp_path, "test", 2401, "Find y.", ["1", "2", "3", "4"], "C")
    (tmp_path / "test" / "2403").mkdir()  # a problem folder without its data.json
    items = load_benchmark("geometry3k", tmp_path)  # the folder holding train/val/test
    assert [r.id for r in items.records] == ["2401", "2402"]
    second = items.records[1]
    assert second.annotations == ["Perpendicular(Line(A, B), Line(B, C))"] and items.records[0].annotations is None
    assert second.metadata["answer_value"] == "4" and second.metadata["problem_type_goal"] == ["Angle"]
    assert [(s.id, s.reason) for s in items.skipped] == [("2403", "problem folder has no data.json")]
    assert [r.id for r in load_benchmark("geometry3k", tmp_path / "test").records] == ["2401", "2402"]


# ------------------------------------------------------------------------------------------------ own records
def test_own_records_skip_invalid_items_with_the_reason(tmp_path):
    (tmp_path / "img.png").write_bytes(_png())
    rows = [
        {"id": "a", "problem": "2 + 2?", "answer": "4", "images": ["img.png"], "metadata": {"level": "easy"}},
        {"id": "b", "problem": "", "answer": "1", "images": []},
        {"id": "c", "problem": "x?", "answer": "2", "images": ["missing.png"]},
        {"id": "a", "problem": "again", "answer": "4", "images": []},
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_benchmark("records", path)
    assert [r.id for r in items.records] == ["a"]
    reasons = [(s.id, s.reason) for s in items.skipped]
    assert [i for i, _ in reasons] == ["b", "c", "a"]
    for (_, reason), expected in zip(reasons, ["field 'problem' is empty", "file not found", "duplicate id 'a'"]):
        assert expected in reason
    with pytest.raises(BenchmarkFormatError, match="field 'problem' is empty"):
        load_benchmark("records", path, invalid_records="error")


# ------------------------------------------------------------------------------------------------ bad releases
def test_missing_release_names_the_expected_layout(tmp_path):
    with pytest.raises(BenchmarkFormatError) as err:
        load_benchmark("mathvista", tmp_path)
    assert "testmini.json" in str(err.value) and "images/<pid>.jpg" in str(err.value)
    with pytest.raises(FileNotFoundError, match="WeMath's release"):
        load_benchmark("wemath", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="splits"):
        load_benchmark("wemath", tmp_path, "test")


def test_malformed_or_foreign_annotation_files_fail_with_file_and_position(tmp_path):
    (tmp_path / "testmini.json").write_text('{"1": {"question": "q",}}')
    with pytest.raises(BenchmarkFormatError, match=r"testmini.json: not valid JSON .* line 1"):
        load_benchmark("mathvista", tmp_path)
    write_mathvision(tmp_path / "mv", [mathvision_item("1", "q", "1")], "testmini")
    with pytest.raises(BenchmarkFormatError, match=r"need field\(s\) \['sample_index'\].*MathVerse's release"):
        load_benchmark("mathverse", tmp_path / "mv" / "data" / "testmini.jsonl")


def test_unreadable_image_is_skipped(tmp_path):
    write_mathvista(tmp_path, MATHVISTA, image_bytes={"2": b"not an image"})
    items = load_benchmark("mathvista", tmp_path)
    assert [r.id for r in items.records] == ["1"] and items.skipped[0].reason.startswith("image unreadable")


# ------------------------------------------------------------------------------------------------ prompts
def test_datamodule_prompts_follow_the_paper_protocol(tmp_path):
    write_mathvista(tmp_path, MATHVISTA)
    datamodule = BenchmarkDataModule("mathvista", str(tmp_path), limit=1, max_pixels=12544)
    datamodule.setup("test")
    assert datamodule.eval_name == "mathvista-testmini" and datamodule.default_group_by == ["task", "skills"]
    sample = datamodule.datasets["test"][0]
    text = sample.messages[0]["content"][-1]["text"]
    assert text == f"Find $m\\angle H$\nChoices:\nA. 97\nB. 102\nC. 107\nD. 122\n{DEFAULT_FORMAT_INSTRUCTION}"
    assert sample.messages[0]["content"][0] == {"type": "image"} and len(datamodule.datasets["test"]) == 1
    with pytest.raises(ValueError, match="perception-rl test"):
        datamodule.setup("fit")


def test_dev_items_as_a_mathvista_release(dev_data, tmp_path):
    from eval_layouts import mathvista_from_dev

    root, items = mathvista_from_dev(dev_data, tmp_path / "MathVista")
    loaded = load_benchmark("mathvista", root)
    assert len(loaded.records) == len(items) == 200 and not loaded.skipped
    geometry = by_id(loaded)["geometry3k-train-11"]
    assert geometry.choices == ["30", "40", "60", "80"] and geometry.answer == "80"


def test_truncated_image_is_skipped_before_the_run(tmp_path):
    from eval_layouts import png

    write_mathvista(tmp_path, MATHVISTA, image_bytes={"2": png(size=(64, 64))[:60]})  # header intact, data cut
    items = load_benchmark("mathvista", tmp_path)
    assert [r.id for r in items.records] == ["1"] and items.skipped[0].reason.startswith("image unreadable")


_BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
BENCHMARK_CONFIGS = sorted(
    [c for name in ("mathvista", "mathverse", "mathvision", "wemath", "geometry3k") for c in (_BENCHMARKS / name).glob("*.yaml")]
    + [_BENCHMARKS / "smoke_tiny_cpu.yaml"]
)


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize("config", BENCHMARK_CONFIGS, ids=[c.parent.name + "/" + c.name for c in BENCHMARK_CONFIGS])
def test_every_benchmark_config_parses(config, capsys):
    import yaml

    from perception_rl.cli import main as cli_main

    assert any("perception-rl test" in line for line in config.read_text().splitlines()[:4]), "open with the command"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["test", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["class_path"].endswith("BenchmarkDataModule")
    assert printed["model"]["evaluation"]["class_path"].endswith("BenchmarkEvaluation") and printed["model"]["rewards"]
