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


def _images(value: Any, base: Path, where: str, check_files: bool) -> list[str | bytes]:
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
            if check_files and not path.is_file():
                raise RecordError(f"{where}: field 'images[{k}]': file not found: {path}")
            images.append(str(path))
        else:
            raise RecordError(f"{where}: field 'images[{k}]' must be a path or bytes, got {type(item).__name__}")
    return images


def record_from_dict(raw: Any, base: Path, where: str, check_files: bool = True) -> Record:
    """Validate one raw record; `where` ("file:line") prefixes every error."""
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
        images=_images(raw.get("images") or [], base, where, check_files),
        choices=[str(c) for c in choices] if choices else None,
        annotations=parse_annotations(raw.get("annotations"), where),
        metadata=metadata,
        extra={k: v for k, v in raw.items() if k not in _KNOWN_FIELDS},
        source=where,
    )


def load_records(path: str | Path, check_files: bool = True) -> list[Record]:
    """Read and validate every record of a .jsonl/.json-lines or .parquet file. Duplicate ids are an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = [(f"{path}:row {i}", raw) for i, raw in enumerate(pq.read_table(path).to_pylist())]
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(data, list):
            raise RecordError(f"{path}: a .json data file must hold a list of records (use .jsonl for one per line)")
        rows = [(f"{path}:item {i}", raw) for i, raw in enumerate(data)]
    elif path.suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8-sig") as handle:  # -sig: tolerate a byte-order mark
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"{path}:{number}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise RecordError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
    else:
        raise RecordError(f"{path}: unsupported data file type {path.suffix!r}; use .jsonl, .json or .parquet")
    records = [record_from_dict(raw, path.parent, where, check_files) for where, raw in rows]
    seen: dict[str, str] = {}
    for record in records:
        if record.id in seen:
            raise RecordError(f"{record.source}: field 'id': duplicate id {record.id!r} (first at {seen[record.id]})")
        seen[record.id] = record.source
    if not records:
        raise RecordError(f"{path}: holds no records")
    return records
