"""The record format (one training or evaluation item) and its loading from JSONL or parquet.

A record has `id`, `problem`, `answer`, `images` (paths relative to the data file, or bytes), and
optionally `choices`, `annotations` (list of strings, or the authors' tagged string
"<info1>...</info1><info2>...</info2>") and `metadata`. Any other field is kept in `extra`.
Invalid records fail loading with the file, line and field named.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TAGGED_ITEM = re.compile(r"<info(\d+)>(.*?)</info\1>", re.DOTALL)
_KNOWN_FIELDS = {"id", "problem", "answer", "images", "choices", "annotations", "metadata"}


class RecordError(ValueError):
    """A record that does not follow the format; the message names file, line and field."""


@dataclass
class Record:
    id: str
    problem: str
    answer: str
    images: list[str | bytes]
    choices: list[str] | None = None
    annotations: list[str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "file:line", for error messages downstream

    def to_dict(self) -> dict[str, Any]:
        """Every field as a plain dict (images left as given), for user reward functions."""
        out = {
            "id": self.id, "problem": self.problem, "answer": self.answer, "images": self.images,
            "choices": self.choices, "annotations": self.annotations, "metadata": self.metadata,
        }
        out.update(self.extra)
        return out


def parse_annotations(value: Any, where: str) -> list[str] | None:
    """Annotations as a list of strings; accepts a list, a tagged "<infoK>..</infoK>" string, or empty."""
    if value is None or value == "" or (isinstance(value, list) and not value):
        return None
    if isinstance(value, str):
        items = [text.strip() for _, text in _TAGGED_ITEM.findall(value)]
        if not items:
            raise RecordError(f"{where}: field 'annotations': a string must hold <info1>...</info1> items, got {value[:80]!r}")
        return [item for item in items if item] or None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()] or None
    raise RecordError(f"{where}: field 'annotations' must be a list of strings or a tagged string, got {type(value).__name__}")


def _images(value: Any, base: Path, where: str, check_files: bool, confine_to: Path | None) -> list[str | bytes]:
    if isinstance(value, (str, bytes, dict)):
        value = [value]
    if not isinstance(value, list):
        raise RecordError(f"{where}: field 'images' must be a list of paths or bytes, got {type(value).__name__}")
    images: list[str | bytes] = []
    for k, item in enumerate(value):
        if isinstance(item, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
            item = item.get("bytes") or item.get("path")
        if isinstance(item, (bytes, bytearray)):
            images.append(bytes(item))
        elif isinstance(item, str) and item:
            path = Path(item) if Path(item).is_absolute() else base / item
            if confine_to is not None and not path.resolve().is_relative_to(confine_to.resolve()):
                raise RecordError(
                    f"{where}: field 'images[{k}]': {item!r} points outside the data folder {confine_to}; "
                    "set data.images_outside_data_dir=true to allow it"
                )
            if check_files and not path.is_file():
                raise RecordError(f"{where}: field 'images[{k}]': file not found: {path}")
            images.append(str(path))
        else:
            raise RecordError(f"{where}: field 'images[{k}]' must be a path or bytes, got {type(item).__name__}")
    return images


def record_from_dict(
    raw: Any, base: Path, where: str, check_files: bool = True, confine_to: Path | None = None
) -> Record:
    """Validate one raw record; `where` ("file:line") prefixes every error.

    Relative image paths resolve against `base`; with `confine_to`, a path leading outside it is an error.
    """
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(raw).__name__}")
    for key in ("id", "problem", "answer"):
        if raw.get(key) is None:
            raise RecordError(f"{where}: field '{key}' is missing")
        if isinstance(raw[key], str) and not raw[key].strip():
            raise RecordError(f"{where}: field '{key}' is empty")
    if not isinstance(raw["problem"], str) or not raw["problem"].strip():
        raise RecordError(f"{where}: field 'problem' must be a non-empty string")
    if not isinstance(raw["answer"], (str, int, float)) or isinstance(raw["answer"], bool):
        raise RecordError(f"{where}: field 'answer' must be a string or number, got {type(raw['answer']).__name__}")
    choices = raw.get("choices")
    if choices is not None and (not isinstance(choices, list) or not all(isinstance(c, (str, int, float)) for c in choices)):
        raise RecordError(f"{where}: field 'choices' must be a list of strings")
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise RecordError(f"{where}: field 'metadata' must be an object, got {type(metadata).__name__}")
    return Record(
        id=str(raw["id"]),
        problem=raw["problem"],
        answer=str(raw["answer"]),
        images=_images(raw.get("images") or [], base, where, check_files, confine_to),
        choices=[str(c) for c in choices] if choices else None,
        annotations=parse_annotations(raw.get("annotations"), where),
        metadata=metadata,
        extra={k: v for k, v in raw.items() if k not in _KNOWN_FIELDS},
        source=where,
    )


@dataclass
class Skip:
    """A record left out (only when the user asked for skipping), and why."""

    where: str
    reason: str


def load_records(path: str | Path, check_files: bool = True, images_outside_data_dir: bool = False) -> list[Record]:
    """Read and validate every record of a .jsonl, .json (list) or .parquet file; the first invalid one raises."""
    records, _ = load_records_with_skips(path, check_files, images_outside_data_dir, skip_invalid=False)
    return records


def load_records_with_skips(
    path: str | Path, check_files: bool = True, images_outside_data_dir: bool = False, skip_invalid: bool = True
) -> tuple[list[Record], list[Skip]]:
    """Like `load_records`, but invalid records (and later duplicates of an id) are skipped and reported."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    confine_to = None if images_outside_data_dir else path.parent
    records: list[Record] = []
    skips: list[Skip] = []
    seen: dict[str, str] = {}
    for where, raw in iter_raw_rows(path, skips if skip_invalid else None):
        try:
            record = record_from_dict(raw, path.parent, where, check_files, confine_to)
            if record.id in seen:
                raise RecordError(f"{where}: field 'id': duplicate id {record.id!r} (first at {seen[record.id]})")
        except RecordError as err:
            if not skip_invalid:
                raise
            skips.append(Skip(where, str(err).removeprefix(f"{where}: ")))
            continue
        seen[record.id] = where
        records.append(record)
    if not records:
        raise RecordError(f"{path}: holds no records" + (f" it can use ({len(skips)} skipped)" if skips else ""))
    return records, skips


def iter_raw_rows(path: Path, skips: list[Skip] | None):
    """(location, raw object) pairs; unreadable lines raise, or are recorded in `skips` when given."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from ((f"{path}:row {i}", raw) for i, raw in enumerate(pq.read_table(path).to_pylist()))
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_bytes().decode("utf-8-sig"))
        except UnicodeDecodeError as err:
            raise RecordError(f"{path}: not UTF-8 text (byte {err.start})") from None
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(data, list):
            raise RecordError(f"{path}: a .json data file must hold a list of records (use .jsonl for one per line)")
        yield from ((f"{path}:item {i}", raw) for i, raw in enumerate(data))
    elif path.suffix == ".jsonl":
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                where = f"{path}:{number}"
                try:
                    text = line.decode("utf-8-sig" if number == 1 else "utf-8")  # -sig: tolerate a byte-order mark
                    if not text.strip():
                        continue
                    yield where, json.loads(text)
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    reason = (
                        f"not UTF-8 text (byte {err.start})" if isinstance(err, UnicodeDecodeError)
                        else f"not valid JSON ({err.msg} at column {err.colno})"
                    )
                    if skips is None:
                        raise RecordError(f"{where}: {reason}") from None
                    skips.append(Skip(where, reason))
    else:
        raise RecordError(f"{path}: unsupported data file type {path.suffix!r}; use .jsonl, .json or .parquet")
