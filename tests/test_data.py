"""Tests of records, images, prompts and the datamodule (perception_rl/data/); the synthetic task is in test_synthetic.py."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from perception_rl.data import (
    RecordDataModule,
    RecordError,
    Sample,
    load_records,
)
from perception_rl.data.images import load_image, resize_to_pixel_bounds
from perception_rl.data.prompts import user_message
from perception_rl.data.records import Record, parse_annotations

DEV_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dev"


def write_png(path: Path, size=(8, 6), colour=(200, 10, 10), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def png_bytes(size=(8, 6), colour=(10, 200, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [(row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def good_row(id: str = "a", **changes) -> dict:
    row = {"id": id, "problem": "<image>Find x.", "answer": "3", "images": []}
    row.update(changes)
    return row


# ---------------------------------------------------------------------------------------------- JSONL


def test_jsonl_with_relative_image_paths(tmp_path):
    image = write_png(tmp_path / "data" / "img" / "a.png")
    other = write_png(tmp_path / "elsewhere" / "b.png")
    path = write_jsonl(
        tmp_path / "data" / "train.jsonl",
        [
            {"id": 7, "problem": "Find x.", "answer": 3, "images": ["img/a.png", str(other)], "choices": [1, "2"],
             "metadata": {"split": "train"}, "source_url": "http://example"},
            "   ",  # blank line: skipped, but line numbers keep counting
            {"id": "b", "problem": "Find y.", "answer": "0.5", "images": "img/a.png"},
        ],
    )
    with pytest.raises(RecordError, match=r"train\.jsonl:1: field 'images\[1\]': .* points outside the data folder"):
        load_records(path)  # confined to the data folder unless allowed
    first, second = load_records(path, images_outside_data_dir=True)
    assert first.id == "7" and first.answer == "3"  # numbers become strings
    assert first.images == [str(image), str(other)]  # relative to the data file; absolute kept
    assert first.choices == ["1", "2"]
    assert first.metadata == {"split": "train"}
    assert first.extra == {"source_url": "http://example"}
    assert first.to_dict()["source_url"] == "http://example"
    assert first.annotations is None
    assert first.source == f"{path}:1"
    assert second.images == [str(image)]  # a single string is one image
    assert second.source == f"{path}:3"
    assert second.choices is None and second.metadata == {}


def test_jsonl_hf_style_image_dict_with_path(tmp_path):
    image = write_png(tmp_path / "img" / "a.png")
    path = write_jsonl(tmp_path / "d.jsonl", [good_row(images=[{"bytes": None, "path": "img/a.png"}])])
    assert load_records(path)[0].images == [str(image)]


@pytest.mark.parametrize(
    "value, expected",
    [
        (["GE = 10", " GE is perpendicular to DF at E ", ""], ["GE = 10", "GE is perpendicular to DF at E"]),
        ("<info1>GE = 10</info1><info2>GE is perpendicular\nto DF at E</info2>",
         ["GE = 10", "GE is perpendicular\nto DF at E"]),
        ("<info1> a </info1>\n<info2></info2><info3>c</info3>", ["a", "c"]),
        ("", None),
        ([], None),
        (None, None),
        ("<info1> </info1>", None),
    ],
)
def test_annotations_list_and_tagged_string(tmp_path, value, expected):
    path = write_jsonl(tmp_path / "d.jsonl", [good_row(annotations=value)])
    assert load_records(path)[0].annotations == expected


def test_annotations_mismatched_tags_or_plain_string_raise():
    with pytest.raises(RecordError, match="f.jsonl:4: field 'annotations'"):
        parse_annotations("<info1>a</info2>", "f.jsonl:4")
    with pytest.raises(RecordError, match="field 'annotations'"):
        parse_annotations("GE = 10", "f.jsonl:4")


# ---------------------------------------------------------------------------------------------- parquet


def test_parquet_with_image_bytes_and_hf_dicts(tmp_path):
    raw_a, raw_b = png_bytes((8, 6)), png_bytes((5, 9), (1, 2, 3))
    table = pa.table({
        "id": ["p0", "p1"],
        "problem": ["Find x.", "Find y."],
        "answer": ["3", "B"],
        "images": pa.array([[raw_a], [raw_b]], type=pa.list_(pa.binary())),
        "choices": pa.array([None, ["1", "2"]], type=pa.list_(pa.string())),
        "annotations": ["<info1>x = 3</info1>", None],
    })
    path = tmp_path / "train.parquet"
    pq.write_table(table, path)
    first, second = load_records(path)
    assert first.images == [raw_a] and second.images == [raw_b]
    assert first.choices is None and second.choices == ["1", "2"]
    assert first.annotations == ["x = 3"] and second.annotations is None
    assert first.source == f"{path}:row 0" and second.source == f"{path}:row 1"
    image = load_image(second.images[0], min_pixels=1, max_pixels=10_000)
    assert image.mode == "RGB" and image.size == (5, 9) and image.getpixel((0, 0)) == (1, 2, 3)


def test_parquet_hf_datasets_image_structs(tmp_path):
    # The HF `Image` feature stores {"bytes": ..., "path": ...}; bytes win, a path alone is a file.
    raw = png_bytes()
    image_file = write_png(tmp_path / "img" / "c.png")
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "id": ["h0", "h1"],
        "problem": ["Find x.", "Find y."],
        "answer": ["3", "4"],
        "images": pa.array([[{"bytes": raw, "path": "ignored.png"}], [{"bytes": None, "path": "img/c.png"}]],
                           type=pa.list_(struct)),
    })
    path = tmp_path / "hf.parquet"
    pq.write_table(table, path)
    first, second = load_records(path)
    assert first.images == [raw]
    assert second.images == [str(image_file)]


def test_parquet_error_names_row(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "problem": ["x", "y"], "answer": ["1", None]}), path)
    with pytest.raises(RecordError, match=r"bad\.parquet:row 1: field 'answer' is missing"):
        load_records(path)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "bad_line, fragment",
    [
        ({"id": "b", "problem": "Find x."}, "field 'answer' is missing"),
        ({"problem": "Find x.", "answer": "1"}, "field 'id' is missing"),
        ({"id": "b", "problem": 5, "answer": "1"}, "field 'problem' must be a non-empty string"),
        ({"id": "b", "problem": "  ", "answer": "1"}, "field 'problem' is empty"),
        ({"id": "b", "problem": "x", "answer": True}, "field 'answer' must be a string or number"),
        ('{"id": "b", "problem": "x", "answer": 1', "not valid JSON"),
        ([1, 2], "must be a JSON object, got list"),
        (good_row("b", images=["missing.png"]), "field 'images[0]': file not found"),
        (good_row("b", images=[3]), "field 'images[0]' must be a path or bytes"),
        (good_row("b", images={"bytes": None, "path": None}), "field 'images[0]' must be a path or bytes"),
        (good_row("b", images=7), "field 'images' must be a list"),
        (good_row("b", annotations={"a": 1}),
         "field 'annotations' must be a list of strings or a tagged string, got dict"),
        (good_row("b", annotations=["ok", 3]), "field 'annotations' must be a list of strings"),
        (good_row("b", choices="A, B"), "field 'choices' must be a list of strings"),
        (good_row("b", metadata=["x"]), "field 'metadata' must be an object"),
        (good_row("a"), "field 'id': duplicate id 'a' (first at "),
    ],
)
def test_invalid_record_errors_name_file_line_and_field(tmp_path, bad_line, fragment):
    path = write_jsonl(tmp_path / "train.jsonl", [good_row("a"), bad_line])
    with pytest.raises(RecordError) as info:
        load_records(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: ")  # the second line is the bad one
    assert fragment in message


def test_duplicate_id_points_at_both_lines(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [good_row("a"), good_row("b"), good_row("a")])
    with pytest.raises(RecordError, match=rf"t\.jsonl:3: field 'id': duplicate id 'a' \(first at .*t\.jsonl:1\)"):
        load_records(path)


def test_missing_image_allowed_when_not_checking_files(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [good_row(images=["nope.png"])])
    assert load_records(path, check_files=False)[0].images == [str(tmp_path / "nope.png")]


def test_file_level_errors(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("id,problem\n")
    with pytest.raises(RecordError, match=r"t\.csv: unsupported data file type '\.csv'"):
        load_records(csv)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(RecordError, match=r"empty\.jsonl: holds no records"):
        load_records(empty)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n\n")
    with pytest.raises(RecordError, match="holds no records"):
        load_records(blank)
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        load_records(tmp_path / "absent.jsonl")


# ---------------------------------------------------------------------------------------------- images


def test_resize_inside_bounds_is_untouched():
    image = Image.new("RGB", (100, 50))
    assert resize_to_pixel_bounds(image, 3136, 1806336) is image


def test_resize_too_small_scales_up_keeping_aspect():
    # 10 x 20 = 200 px < 3136: scale sqrt(3136/200) = 3.9598; 39.6 -> 40, 79.2 -> 80 (rounded up);
    # 40 * 80 = 3200 >= 3136, aspect 1:2 kept.
    out = resize_to_pixel_bounds(Image.new("RGB", (10, 20)), 3136, 1806336)
    assert out.size == (40, 80)
    # 7 x 7 = 49: scale exactly 8 -> 56 x 56 = 3136, on the bound.
    assert resize_to_pixel_bounds(Image.new("RGB", (7, 7)), 3136, 1806336).size == (56, 56)


def test_resize_too_large_scales_down_keeping_aspect():
    # 300 x 100 = 30000 > 10000: scale sqrt(1/3) = 0.57735; 173.2 -> 173, 57.7 -> 57 (rounded down);
    # 173 * 57 = 9861 <= 10000; aspect 3.035 vs 3.
    out = resize_to_pixel_bounds(Image.new("RGB", (300, 100)), 1000, 10000)
    assert out.size == (173, 57)


@pytest.mark.parametrize("size", [(3, 500), (640, 480), (4000, 30), (1, 1), (1200, 1700)])
def test_resize_lands_inside_bounds(size):
    low, high = 3136, 200_000
    out = resize_to_pixel_bounds(Image.new("L", size), low, high)
    assert low <= out.width * out.height <= high
    assert abs(out.width / out.height - size[0] / size[1]) <= 0.05 * size[0] / size[1] + 1 / out.height


def test_load_image_converts_cmyk_palette_and_grey_to_rgb(tmp_path):
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (60, 60), (0, 255, 255, 0)).save(cmyk)  # cyan 0, magenta+yellow full = red
    palette = Image.new("P", (60, 60))
    palette.putpalette([0, 0, 255] + [0] * 765)  # index 0 = blue
    palette.save(tmp_path / "p.png")
    write_png(tmp_path / "grey.png", (60, 60), 128, mode="L")
    red = load_image(str(cmyk), 1, 10**6)
    assert red.mode == "RGB"
    r, g, b = red.getpixel((30, 30))
    assert r > 200 and g < 60 and b < 60
    blue = load_image(str(tmp_path / "p.png"), 1, 10**6)
    assert blue.mode == "RGB" and blue.getpixel((0, 0)) == (0, 0, 255)
    grey = load_image(str(tmp_path / "grey.png"), 1, 10**6)
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (128, 128, 128)
    # the pixel bounds apply after conversion: 60 x 60 = 3600 -> up to 7200 gives 85 x 85 (84.85 rounded up)
    assert load_image(str(cmyk), 7200, 10**6).size == (85, 85)


def test_load_image_transparent_background_becomes_white(tmp_path):
    image = Image.new("RGBA", (60, 60), (0, 0, 0, 0))  # fully transparent "black"
    for x in range(60):
        image.putpixel((x, 30), (0, 0, 0, 255))  # an opaque black line
    image.save(tmp_path / "diagram.png")
    out = load_image(str(tmp_path / "diagram.png"), 1, 10**6)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((0, 30)) == (0, 0, 0)


def test_load_image_errors_name_the_source(tmp_path):
    with pytest.raises(ValueError, match="rec.jsonl:3: cannot read image image bytes"):
        load_image(b"not a png", 1, 100, "rec.jsonl:3")
    with pytest.raises(ValueError, match="rec.jsonl:4: cannot read image .*gone.png"):
        load_image(str(tmp_path / "gone.png"), 1, 100, "rec.jsonl:4")


# ---------------------------------------------------------------------------------------------- prompts


def test_user_message_with_choices_and_instruction():
    record = Record(id="a", problem="<image>Find x. ", answer="B", images=[], choices=["12", "13"])
    message = user_message(record, "Think first.", num_images=1)
    assert message == {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "Find x.\nChoices:\nA. 12\nB. 13\nThink first."}],
    }


def test_user_message_without_choices_or_instruction():
    record = Record(id="a", problem="How many circles?", answer="3", images=[])
    message = user_message(record, "", num_images=2)
    assert message["content"] == [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "How many circles?"}]
    assert user_message(record, "Box it.", 0)["content"] == [{"type": "text", "text": "How many circles? Box it."}]


# ---------------------------------------------------------------------------------------------- datamodule


def test_datamodule_fit_yields_lists_of_samples(tmp_path):
    write_png(tmp_path / "img" / "a.png", (10, 20))
    rows = [good_row(f"r{i}", images=["img/a.png"], answer=str(i)) for i in range(3)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    val = write_jsonl(tmp_path / "val.jsonl", rows[:1])
    dm = RecordDataModule(train_files=str(train), val_files=[str(val)], batch_size=2, eval_batch_size=4,
                          format_instruction="Box it.", shuffle=False)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert [len(b) for b in batches] == [2, 1]
    assert all(isinstance(s, Sample) for b in batches for s in b)
    assert [s.record.id for b in batches for s in b] == ["r0", "r1", "r2"]
    sample = batches[0][0]
    assert len(sample.images) == 1 and sample.images[0].mode == "RGB"
    assert sample.images[0].size == (40, 80)  # 10 x 20 scaled up into min_pixels 3136 (see resize test)
    text = {"type": "text", "text": "Find x. Box it."}
    assert sample.messages == [{"role": "user", "content": [{"type": "image"}, text]}]
    val_batches = list(dm.val_dataloader())
    assert len(val_batches) == 1 and val_batches[0][0].record.id == "r0"
    dm.setup("test")  # test files default to the validation files
    assert [s.record.id for b in dm.test_dataloader() for s in b] == ["r0"]


def test_datamodule_without_val_and_errors(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [good_row()])
    dm = RecordDataModule(train_files=str(train))
    dm.setup("fit")
    assert dm.val_dataloader() == []
    with pytest.raises(ValueError, match="test_files"):
        dm.test_dataloader()
    with pytest.raises(ValueError, match="train_files"):
        RecordDataModule().setup("fit")
    with pytest.raises(ValueError, match="batch_size"):
        RecordDataModule(train_files=str(train), batch_size=0)
    with pytest.raises(ValueError, match="min_pixels"):
        RecordDataModule(train_files=str(train), min_pixels=100, max_pixels=10)


# (the synthetic dots task is tested in test_synthetic.py)


# ---------------------------------------------------------------------------------------------- dev set

DEV_IDS = ["geometry3k-train-11", "geometry3k-train-12", "dynamath-208-v1", "dynamath-475-v1"]


def _dev_rows() -> list[dict]:
    if not (DEV_DIR / "dev.jsonl").is_file():
        pytest.skip(f"dev set not found at {DEV_DIR}")
    rows = {}
    with (DEV_DIR / "dev.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            rows[row["id"]] = row
    missing = [i for i in DEV_IDS if i not in rows]
    if missing:
        pytest.skip(f"dev set lacks {missing}")
    return [rows[i] for i in DEV_IDS]


def _to_record(row: dict, image) -> dict:
    return {"id": row["id"], "problem": row["question"], "answer": row["answer"], "choices": row["choices"],
            "images": [image], "metadata": {"answer_type": row["answer_type"]}}


@pytest.mark.filterwarnings("ignore:Palette images with Transparency")
def test_dev_set_rows_load_as_records(tmp_path):
    from perception_rl.rewards.answers import is_correct

    rows = _dev_rows()
    # JSONL with absolute paths into the shared folder (nothing is copied)
    path = write_jsonl(tmp_path / "dev.jsonl", [_to_record(r, str(DEV_DIR / r["image"])) for r in rows])
    records = load_records(path, images_outside_data_dir=True)
    assert [r.id for r in records] == DEV_IDS
    assert records[0].choices == ["30", "40", "60", "80"] and records[0].answer == "D"
    dm = RecordDataModule(train_files=str(path), batch_size=len(rows), shuffle=False, images_outside_data_dir=True)
    dm.setup("fit")
    (batch,) = list(dm.train_dataloader())
    for sample, row in zip(batch, rows):
        (image,) = sample.images
        assert image.mode == "RGB"
        assert 3136 <= image.width * image.height <= 1806336
        text = sample.messages[0]["content"][-1]["text"]
        assert text.startswith(row["question"].replace("<image>", "").strip())
        if row["choices"]:
            assert "\nChoices:\nA. " + str(row["choices"][0]) in text
        if row.get("answer_value") is not None:  # the gold option text is judged equal to the gold letter
            assert is_correct(row["answer_value"], sample.record.answer, sample.record.choices)
    # parquet with the image bytes inlined
    table = pa.Table.from_pylist([_to_record(r, (DEV_DIR / r["image"]).read_bytes()) for r in rows[:2]])
    pq.write_table(table, tmp_path / "dev.parquet")
    from_parquet = load_records(tmp_path / "dev.parquet")
    assert [r.id for r in from_parquet] == DEV_IDS[:2]
    assert from_parquet[0].images[0] == (DEV_DIR / rows[0]["image"]).read_bytes()
    assert load_image(from_parquet[0].images[0], 3136, 1806336).mode == "RGB"
