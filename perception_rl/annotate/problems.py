"""Problems in, records out: the pipeline's inputs (three formats) and the writer of training records.

    records     the package's own records (.jsonl / .json / .parquet; see perception_rl/data/records.py)
    geometry3k  Geometry3K's official release: <split>/<id>/data.json + img_diagram.png (+ logic_form.json),
                read by the benchmark adapter; the human-annotated diagram logic forms become annotations
    authors     the Perception-R1 authors' rows: `problem` (may hold "<image>"), `answer`, `images` (paths,
                bytes or {"bytes", "path"}), `visual_key_info` (a "<info1>..</info1>" string, or empty);
                .jsonl / .json / .parquet, an `id` column optional

A problem that cannot be used (unreadable line, no answer, no image, an image that is missing or does not
decode, a duplicate id) is reported as a `BadRecord` naming the file and line, and the rest proceed.
`write_records` copies every image into an `images/` folder beside the output (content-addressed names),
so the written file loads with `perception_rl.data.load_records` wherever the folder is moved.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from perception_rl.annotate.worklog import atomic_write
from perception_rl.data.records import (
    Record,
    RecordError,
    Skip,
    iter_raw_rows,
    load_records_with_skips,
    record_from_dict,
)

InputFormat = Literal["records", "geometry3k", "authors"]
_IMAGE_TOKEN = re.compile(r"[ \t]*<image>[ \t]*")


@dataclass(frozen=True)
class BadRecord:
    """An input item left out, where it is ("file:line") and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"

    def to_dict(self) -> dict[str, str]:
        return {"where": self.where, "reason": self.reason}


def read_problems(
    path: str | Path, input_format: InputFormat = "records", split: str = "train", images_outside_data_dir: bool = False
) -> tuple[list[Record], list[BadRecord]]:
    """Usable problems (each with an answer and at least one decodable image) and the bad items, in file order."""
    path = Path(path).expanduser()
    if input_format == "records":
        records, skips = load_records_with_skips(path, True, images_outside_data_dir, skip_invalid=True)
        bad = [BadRecord(s.where, s.reason) for s in skips]
    elif input_format == "geometry3k":
        from perception_rl.eval.benchmarks import load_benchmark

        items = load_benchmark("geometry3k", path, split, check_images=True, invalid_records="skip")
        records, bad = items.records, [BadRecord(s.source, s.reason) for s in items.skipped]
    elif input_format == "authors":
        records, bad = _authors_records(path, images_outside_data_dir)
    else:
        raise ValueError(f"input_format must be 'records', 'geometry3k' or 'authors', got {input_format!r}")
    usable = []
    for record in records:
        reason = _unusable(record)
        if reason:
            bad.append(BadRecord(record.source or record.id, reason))
        else:
            usable.append(record)
    return usable, bad


def _authors_records(path: Path, images_outside_data_dir: bool) -> tuple[list[Record], list[BadRecord]]:
    if not path.is_file():
        raise FileNotFoundError(f"authors' data file not found: {path}")
    skips: list[Skip] = []
    records, bad, seen = [], [], {}
    confine_to = None if images_outside_data_dir else path.parent
    for number, (where, raw) in enumerate(iter_raw_rows(path, skips)):
        try:
            if not isinstance(raw, dict):
                raise RecordError(f"{where}: a row must be an object, got {type(raw).__name__}")
            problem = raw.get("problem")
            row = {
                "id": raw.get("id") if raw.get("id") not in (None, "") else f"{path.stem}-{number}",
                "problem": _IMAGE_TOKEN.sub(" ", problem).strip() if isinstance(problem, str) else problem,
                "answer": raw.get("answer"), "images": raw.get("images") or raw.get("image") or [],
                "annotations": raw.get("visual_key_info") or None,
                "metadata": {"source_format": "authors"},
            }
            record = record_from_dict(row, path.parent, where, check_files=True, confine_to=confine_to)
            if record.id in seen:
                raise RecordError(f"{where}: field 'id': duplicate id {record.id!r} (first at {seen[record.id]})")
        except RecordError as err:
            bad.append(BadRecord(where, str(err).removeprefix(f"{where}: ")))
            continue
        seen[record.id] = where
        records.append(record)
    return records, [BadRecord(s.where, s.reason) for s in skips] + bad


def _unusable(record: Record) -> str | None:
    """Why a problem cannot be solved from its figure, or None."""
    if not str(record.answer).strip():
        return "field 'answer' is empty"
    if not record.images:
        return "field 'images': no image (the pipeline annotates problems that come with a figure)"
    for k, image in enumerate(record.images):
        try:
            _check_decodes(image_bytes(image))
        except Exception as err:  # noqa: BLE001 - missing file, truncated data, not an image at all
            return f"field 'images[{k}]': image unreadable ({type(err).__name__})"
    return None


def _check_decodes(data: bytes) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (512, 512))  # JPEGs decode at reduced scale: quick, and a truncated file still fails
        image.load()


def image_bytes(source: str | bytes) -> bytes:
    """The encoded image of a record entry (a path or bytes)."""
    return source if isinstance(source, bytes) else Path(source).read_bytes()


# ------------------------------------------------------------------------------------------------ writing
def write_records(records: list[Record], path: str | Path) -> Path:
    """Write records as .jsonl or .parquet (by suffix), images copied to `images/` beside it; atomic."""
    path = Path(path)
    if path.suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"records output must end in .jsonl or .parquet, got {path}")
    rows = [record_row(record, path.parent) for record in records]
    if path.suffix == ".jsonl":
        atomic_write(path, lambda tmp: tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8"))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pa.Table.from_pylist(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ValueError(f"{path}: records do not fit one parquet schema ({err}); write .jsonl instead") from None
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def record_row(record: Record, folder: Path) -> dict[str, Any]:
    """A record as a plain row, its images stored under `folder`/images/ and referred to relatively."""
    row = record.to_dict()
    row["images"] = [store_image(image_bytes(image), folder) for image in record.images]
    return {k: v for k, v in row.items() if v is not None}


def store_image(data: bytes, folder: Path) -> str:
    """Save image bytes once under images/<sha256 prefix>.<ext> (atomically) and return that relative path."""
    extension = "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpg" if data[:3] == b"\xff\xd8\xff" else "img"
    relative = f"images/{hashlib.sha256(data).hexdigest()[:20]}.{extension}"
    target = folder / relative
    if not target.is_file():  # content-addressed: an existing file already holds these bytes
        atomic_write(target, lambda tmp: tmp.write_bytes(data), durable=False)
    return relative


def convert(input: str | Path, input_format: InputFormat, output: str | Path, split: str = "train",
            images_outside_data_dir: bool = False) -> tuple[int, list[BadRecord]]:
    """Convert a Geometry3K release or the authors' rows (or re-validate records) into a record file."""
    records, bad = read_problems(input, input_format, split, images_outside_data_dir)
    write_records(records, output)
    return len(records), bad
