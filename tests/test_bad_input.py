"""Bad input: every kind gets a clear error naming file, line and field, or (opted in) a counted, reported skip.

Plus a property-based fuzz of the record loader and the answer parser: no crash other than the documented errors.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from perception_rl.data import RecordDataModule, RecordError
from perception_rl.data.images import load_image
from perception_rl.data.records import record_from_dict
from perception_rl.rewards.answers import extract_answer, is_correct


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def good(i: int, image: str = "img/ok.png") -> dict:
    return {"id": f"ok{i}", "problem": "How many?", "answer": "3", "images": [image]}


@pytest.fixture
def bad_data(tmp_path) -> tuple[Path, dict[str, str]]:
    """A JSONL file with good records and one record of each bad kind; returns it and the expected reasons."""
    img = tmp_path / "img"
    img.mkdir()
    Image.new("RGB", (40, 40), "red").save(img / "ok.png")
    Image.new("CMYK", (40, 40)).save(img / "cmyk.jpg")
    Image.new("P", (40, 40)).save(img / "palette.png")
    Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)).save(img / "deep.png")
    full = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    (img / "truncated.png").write_bytes(full[: len(full) // 2])
    (img / "garbage.png").write_bytes(b"\x89PNG not really")
    (tmp_path.parent / "secret.png").write_bytes(png_bytes(Image.new("RGB", (8, 8))))
    lines = [
        json.dumps(good(1)),
        json.dumps(good(2, "img/cmyk.jpg")),
        json.dumps(good(3, "img/palette.png")),
        json.dumps(good(4, "img/deep.png")),
        json.dumps(good(5, "img/truncated.png")),                       # line 5
        json.dumps(good(6, "img/garbage.png")),                         # line 6
        json.dumps(good(7, "img/missing.png")),                         # line 7
        json.dumps(good(8, "../secret.png")),                           # line 8
        json.dumps({"id": "x9", "problem": "", "answer": "1", "images": []}),          # line 9
        json.dumps({"id": "x10", "problem": "p", "images": []}),                      # line 10
        json.dumps(good(1)),                                            # line 11: duplicate id
        json.dumps({"id": "x12", "problem": ["p"], "answer": "1"}),     # line 12
        '{"id": "x13", "problem": "caf\xe9"}'.encode("latin-1").decode("latin-1"),  # placeholder, replaced below
        json.dumps({"id": "x14", "problem": "p", "answer": "1", "annotations": 5}),   # line 14
        "{not json",                                                    # line 15
    ]
    path = tmp_path / "train.jsonl"
    encoded = [line.encode("utf-8") for line in lines]
    encoded[12] = b'{"id": "x13", "problem": "caf\xe9", "answer": "1"}'     # line 13: latin-1 byte, not UTF-8
    path.write_bytes(b"\n".join(encoded) + b"\n")
    expected = {
        ":5": "cannot read image", ":6": "cannot read image", ":7": "file not found", ":8": "outside the data folder",
        ":9": "field 'problem' is empty", ":10": "field 'answer' is missing", ":11": "duplicate id",
        ":12": "field 'problem' must be a non-empty string", ":13": "not UTF-8", ":14": "field 'annotations'",
        ":15": "not valid JSON",
    }
    return path, expected


def test_skip_mode_reports_every_bad_record_and_keeps_the_rest(bad_data, tmp_path):
    path, expected = bad_data
    data = RecordDataModule(str(path), invalid_records="skip", max_pixels=12544)
    data.setup("fit")
    assert [r.id for r in data.datasets["train"].records] == ["ok1", "ok2", "ok3", "ok4"], "nothing good is lost"
    reasons = {s.where.removeprefix(str(path)): s.reason for s in data.skipped}
    assert reasons.keys() == expected.keys()
    for line, fragment in expected.items():
        assert fragment in reasons[line], (line, reasons[line])
    images = [data.datasets["train"][i].images[0] for i in range(4)]
    assert all(im.mode == "RGB" for im in images)
    assert images[3].getpixel((0, 0)) == (156, 156, 156), "16-bit grey scaled by its depth, not clipped to white"


def test_skip_report_is_written_under_the_run_folder(bad_data, tmp_path):
    import lightning as L

    path, expected = bad_data
    data = RecordDataModule(str(path), invalid_records="skip", max_pixels=12544)
    data.trainer = L.Trainer(default_root_dir=tmp_path / "run", logger=False, accelerator="cpu")
    data.setup("fit")
    rows = [json.loads(line) for line in (tmp_path / "run" / "skipped_records.jsonl").read_text().splitlines()]
    assert len(rows) == len(expected) and all(set(r) == {"where", "reason"} for r in rows)


def test_error_mode_stops_at_the_first_bad_record_with_its_location(bad_data, tmp_path):
    path, _ = bad_data
    # Records are validated first (line 7's missing file), then their images decoded (line 5's truncated PNG).
    with pytest.raises(RecordError, match=rf"{path}:7: field 'images\[0\]': file not found"):
        RecordDataModule(str(path), max_pixels=12544).setup("fit")
    first_five = tmp_path / "first_five.jsonl"
    first_five.write_bytes(b"\n".join(path.read_bytes().split(b"\n")[:5]))
    with pytest.raises(ValueError, match=rf"{first_five}:5: cannot read image .*truncated\.png"):
        RecordDataModule(str(first_five), max_pixels=12544).setup("fit")
    RecordDataModule(str(first_five), check_images=False, max_pixels=12544).setup("fit")  # decoding was the check


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # so a 100x100 image counts as a bomb (> 2x the limit)
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"rec:1: cannot read image .*big\.png.*decompression bomb"):
        load_image(str(tmp_path / "big.png"), 1, 10**6, "rec:1")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
FIELDS = st.sampled_from(["id", "problem", "answer", "images", "choices", "annotations", "metadata", "other"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.dictionaries(FIELDS, JSON_VALUES, max_size=7) | JSON_VALUES)
def test_record_validation_never_crashes_otherwise(raw, tmp_path):
    try:
        record = record_from_dict(raw, tmp_path, "fuzz:1", check_files=True, confine_to=tmp_path)
    except RecordError as err:
        assert str(err).startswith("fuzz:1: ")
    else:
        assert record.problem.strip() and isinstance(record.answer, str) and record.id


@settings(max_examples=200, deadline=None)
@given(
    response=st.text(alphabet=st.sampled_from(list("<>/answerthink{}\\boxed()0123456789.ABCD -,$^")), max_size=60),
    gold=st.sampled_from(["3", "\\frac{1}{2}", "B", "x^2", "0.25", "(1, 2)"]),
    choices=st.sampled_from([None, ["1", "2", "3", "4"]]),
)
def test_answer_parsing_never_crashes(response, gold, choices):
    predicted = extract_answer(response)
    assert predicted is None or isinstance(predicted, str)
    assert isinstance(is_correct(predicted, gold, choices), bool)
