"""Benchmark adapters: each benchmark's official release, read from a local path, as `Record`s.

One adapter per release format, all feeding the package's own record type, so evaluation reuses the
`RecordDataModule` path (prompt = question, lettered options, format instruction; paper.md §6):

    mathvista   data/testmini.json (keyed by pid) + images/, or HF AI4Math/MathVista data/testmini-*.parquet
    mathverse   testmini.json / testmini_text_only.json + images/, or HF AI4Math/MathVerse testmini.parquet
    mathvision  data/test.jsonl, data/testmini.jsonl + images/, or HF MathLLMs/MathVision data/test-*.parquet
    wemath      testmini.json + <n>steps/image/, or a parquet with the same columns
    geometry3k  <split>/<id>/data.json + img_diagram.png (+ logic_form.json), InterGPS's layout
    records     the package's own JSONL / JSON / parquet records

Benchmark-specific fields (precision, question_type, subject, level, problem_version, ...) go into
`Record.metadata`, where the answer checker and the grouped metrics find them. An item that cannot be used
(no gold answer, an image that is missing or unreadable, a duplicate id) is skipped with its reason and
reported, never dropped silently. A missing or malformed annotation file is an error naming the file and
the expected layout.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from perception_rl.data.records import Record, RecordError, record_from_dict

BenchmarkName = Literal["mathvista", "mathverse", "mathvision", "wemath", "geometry3k", "records"]
_IMAGE_TOKEN = re.compile(r"<image\d*>")
_INLINE_CHOICES_HEADER = re.compile(r"^\s*Choices?\s*[:：]?\s*$", re.IGNORECASE)
_INLINE_CHOICE = re.compile(r"^\s*\(?([A-Z])\)?\s*[:.：)]\s*(.*)$")
VISION_ONLY_PROBLEM = "Answer the question shown in the image."


class BenchmarkFormatError(ValueError):
    """The files at the given path are not the benchmark's release layout; the message says what was expected."""


class _Skip(Exception):
    """One item cannot be evaluated; the message is the reason reported for it."""


@dataclass(frozen=True)
class Skipped:
    """An item left out of the evaluation, and why."""

    id: str
    reason: str
    source: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "reason": self.reason, "source": self.source}


@dataclass
class BenchmarkItems:
    """What an adapter read: usable records in file order, skipped items, and the files read."""

    name: str
    split: str
    records: list[Record]
    skipped: list[Skipped] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ files
def read_rows(file: Path) -> list[tuple[str, dict[str, Any]]]:
    """("file:position", row) for a .json (list, or object of objects), .jsonl or .parquet annotation file."""
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(file)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise BenchmarkFormatError(f"{file}: not a readable parquet file ({err})") from None
        return [(f"{file}:row {i}", row) for i, row in enumerate(table.to_pylist())]
    if file.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(file.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if line.strip():
                rows.append((f"{file}:{number}", _json(line, f"{file}:{number}")))
        return rows
    data = _json(file.read_text(encoding="utf-8-sig"), str(file))
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        return [(f"{file}:{key}", {"_key": key, **value}) for key, value in data.items()]  # MathVista: keyed by pid
    if isinstance(data, list):
        return [(f"{file}:item {i}", row) for i, row in enumerate(data)]
    raise BenchmarkFormatError(f"{file}: expected a JSON list of items or an object of items, got {type(data).__name__}")


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BenchmarkFormatError(f"{where}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None


def _annotation_files(path: Path, stems: tuple[str, ...], layout: str, name: str) -> list[Path]:
    """The annotation file(s) for a split: `path` itself if a file, else the first layout found under it."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{name}: path not found: {path}. Expected: {layout}")
    tried = []
    for folder in (path, path / "data"):
        for stem in stems:
            # Parquet first: Hugging Face releases embed the images there, while a JSON beside it may expect an
            # image archive that was never unzipped.
            for pattern in (f"{stem}.parquet", f"{stem}-*.parquet", f"{stem}.json", f"{stem}.jsonl"):
                found = sorted(folder.glob(pattern))
                tried.append(str(folder / pattern))
                if found:
                    return found
    raise BenchmarkFormatError(f"{name}: no annotation file under {path} (looked for {', '.join(tried)}). Expected: {layout}")


class _Images:
    """Resolves an item's image (a relative path, bytes, or a Hugging Face Image dict) and checks it decodes."""

    def __init__(self, bases: list[Path], check: bool):
        self.bases = list(dict.fromkeys(b for b in bases))
        self.check = check

    def __call__(self, value: Any) -> str | bytes:
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, dict):  # {"bytes": ..., "path": ...}
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            self._open(io.BytesIO(value), "embedded image bytes")
            return bytes(value)
        if not isinstance(value, str) or not value.strip():
            raise _Skip("no image given")
        candidates = [Path(value)] if Path(value).is_absolute() else [base / value for base in self.bases]
        for candidate in candidates:
            if candidate.is_file():
                self._open(candidate, str(candidate))
                return str(candidate)
        raise _Skip(f"image not found: {value} (looked in {', '.join(str(b) for b in self.bases)})")

    def _open(self, source: Any, label: str) -> None:
        if not self.check:
            return
        from PIL import Image

        try:  # decode (JPEGs at reduced scale, which is quick): a truncated file fails here, not mid-run
            with Image.open(source) as image:
                image.draft("RGB", (512, 512))
                image.load()
        except Exception as err:  # noqa: BLE001 - PIL raises many types for a bad file
            raise _Skip(f"image unreadable: {label} ({type(err).__name__})") from None


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    return "" if value is None else str(value).strip()


def _gold(row: dict, key: str = "answer") -> str:
    answer = _text(row, key)
    if not answer:
        raise _Skip("no gold answer (this split's answers may not be public)")
    return answer


def _record(id: str, problem: str, answer: str, images: list, where: str, **kwargs) -> Record:
    if not problem.strip() and not images:
        raise _Skip("neither question text nor image")
    return Record(id=id, problem=problem.strip() or VISION_ONLY_PROBLEM, answer=answer, images=images, source=where, **kwargs)


def _letters_ok(options: list[str]) -> list[str] | None:
    options = [o.strip() for o in options]
    return options if len(options) >= 2 and all(options) else None


# ------------------------------------------------------------------------------------------------ adapters
def _mathvista(row: dict, where: str, image: _Images) -> Record:
    choices = [str(c) for c in row.get("choices") or []] or None
    source = row.get("decoded_image") or row.get("image")
    metadata = {k: row.get(k) for k in ("question_type", "answer_type", "precision", "unit") if row.get(k) is not None}
    if metadata.get("precision") is not None:  # a float in the parquet release; NaN there means none
        metadata["precision"] = int(metadata["precision"]) if metadata["precision"] == metadata["precision"] else None
    metadata.update(row.get("metadata") or {})
    pid = _text(row, "pid") or _text(row, "_key")
    return _record(pid, _text(row, "question"), _gold(row), [image(source)], where, choices=choices, metadata=metadata)


def split_inline_choices(question: str) -> tuple[str, list[str] | None]:
    """Split "stem\\nChoices:\\nA:40°\\nB:60°" into the stem and ["40°", "60°"]; (question, None) if no such block."""
    lines = question.splitlines()
    for start in range(len(lines) - 1, -1, -1):
        if _INLINE_CHOICES_HEADER.match(lines[start]):
            options = []
            for line in lines[start + 1 :]:
                match = _INLINE_CHOICE.match(line)
                if not match or match.group(1) != chr(ord("A") + len(options)):
                    break
                options.append(match.group(2))
            if _letters_ok(options) and start + 1 + len(options) == len(lines):
                return "\n".join(lines[:start]).strip(), options
    return question, None


def _mathverse(row: dict, where: str, image: _Images) -> Record:
    question, choices = _text(row, "question"), None
    if "choice" in _text(row, "question_type").lower():
        question, choices = split_inline_choices(question)
    source = row.get("image")
    images = [] if source in (None, "") else [image(source)]  # the Text Only version has no image
    info = row.get("metadata") or {}
    metadata = {
        "problem_version": _text(row, "problem_version"), "problem_index": _text(row, "problem_index"),
        "question_type": _text(row, "question_type"), **{k: info[k] for k in ("subject", "subfield", "source", "split") if k in info},
    }
    return _record(_text(row, "sample_index"), question, _gold(row), images, where, choices=choices, metadata=metadata)


def _mathvision(row: dict, where: str, image: _Images) -> Record:
    question = re.sub(r"[ \t]*<image\d*>[ \t]*", " ", _text(row, "question"))  # the image goes first in the prompt
    question = re.sub(r" *\n *", "\n", re.sub(r"[ \t]{2,}", " ", question))
    question = re.sub(r"\n{3,}", "\n\n", question).strip()
    choices = _letters_ok([str(o) for o in row.get("options") or []])
    source = row.get("decoded_image") or row.get("image")
    metadata = {"level": _text(row, "level"), "subject": _text(row, "subject")}
    return _record(_text(row, "id"), question, _gold(row), [image(source)], where, choices=choices, metadata=metadata)


def split_option_string(options: str) -> list[str] | None:
    """WeMath's "A. 300;B. 400; C. 3000" as ["300", "400", "3000"]; letters must run A, B, C, ... in order.

    The next letter's marker is searched for after the previous one and must open a non-empty option, so an
    option text that itself holds ";E." is not cut there.
    """
    starts, position = [], 0
    for letter in "ABCDEFGHIJ":
        match = re.compile(rf"(?:^|;)\s*{letter}\s*[.:：]\s*(?![;\s]*$)(?!;)").search(options, position)
        if not match:
            break
        starts.append((match.start(), match.end()))
        position = match.end()
    texts = [options[end : (starts[k + 1][0] if k + 1 < len(starts) else len(options))] for k, (_, end) in enumerate(starts)]
    return _letters_ok([t.strip().rstrip(";").strip() for t in texts])


def _wemath(row: dict, where: str, image: _Images) -> Record:
    key = _text(row, "key")
    prefix, _, part = key.partition("_")
    # S1/S2/S3 of the WeMath paper: a sub-question is one step; "<n>steps_multi" is the composite n-step problem.
    steps = {"2": "two-step", "3": "three-step"}.get(prefix[:1], prefix) if part == "multi" else "one-step"
    number = row.get("question number")
    item_id = str(number) if number not in (None, "") else f"{_text(row, 'ID')}/{key}"
    options = _text(row, "option")
    choices = split_option_string(options) if options else None
    question = _text(row, "question") if choices or not options else f"{_text(row, 'question')}\n{options}"
    source = row.get("image_path") if row.get("image_path") not in (None, "") else row.get("image")
    metadata = {"ID": _text(row, "ID"), "key": key, "steps": steps, "knowledge concept": _text(row, "knowledge concept")}
    return _record(item_id, question, _gold(row), [image(source)], where, choices=choices, metadata=metadata)


def _geometry3k(row: dict, where: str, image: _Images) -> Record:
    folder = Path(row["_dir"])
    choices = _letters_ok([str(c) for c in row.get("choices") or []])
    answer = _gold(row)
    metadata = {k: row[k] for k in ("problem_type_graph", "problem_type_goal", "annotat_text", "data_type") if k in row}
    if choices and len(answer) == 1 and "A" <= answer <= chr(ord("A") + len(choices) - 1):
        metadata["answer_value"] = choices[ord(answer) - ord("A")]
    logic = folder / "logic_form.json"
    annotations = None
    if logic.is_file():  # InterGPS's human-annotated diagram facts serve as visual annotations
        annotations = [str(f) for f in (_json(logic.read_text(encoding="utf-8"), str(logic)).get("diagram_logic_form") or [])] or None
    item_id = str(row.get("id") if row.get("id") is not None else folder.name)
    return _record(
        item_id, _text(row, "problem_text"), answer, [image("img_diagram.png")], where,
        choices=choices, annotations=annotations, metadata=metadata,
    )


def _geometry3k_rows(path: Path, split: str, layout: str) -> tuple[list[tuple[str, dict]], list[Skipped], list[str]]:
    root = path / split if (path / split).is_dir() else path
    if not root.is_dir():
        raise FileNotFoundError(f"geometry3k: path not found: {path}. Expected: {layout}")
    rows, skipped = [], []
    for folder in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)):
        data = folder / "data.json"
        if data.is_file():
            raw = _json(data.read_text(encoding="utf-8-sig"), str(data))
            rows.append((str(data), {**raw, "_dir": str(folder)}))
        elif folder.name.isdigit():
            skipped.append(Skipped(folder.name, "problem folder has no data.json", str(folder)))
    if not rows:
        raise BenchmarkFormatError(f"geometry3k: no <id>/data.json problem folders under {root}. Expected: {layout}")
    return rows, skipped, [str(root)]


@dataclass(frozen=True)
class _Spec:
    splits: tuple[str, ...]
    required: tuple[str, ...]
    layout: str
    convert: Callable[[dict, str, _Images], Record] | None
    group_by: tuple[str, ...] = ()
    stems: dict[str, tuple[str, ...]] = field(default_factory=dict)


SPECS: dict[str, _Spec] = {
    "mathvista": _Spec(
        ("testmini", "test"), ("question", "answer"),
        "MathVista's release: data/testmini.json (an object keyed by pid; github.com/lupantech/MathVista) with "
        "images/<pid>.jpg beside it, or the Hugging Face AI4Math/MathVista files data/testmini-*.parquet",
        _mathvista, ("task", "skills"),
    ),
    "mathverse": _Spec(
        ("testmini", "testmini_text_only"), ("sample_index", "question", "answer"),
        "MathVerse's release (huggingface.co/datasets/AI4Math/MathVerse): testmini.json and images/ unzipped "
        "from images.zip (images/images_version_*/...), or testmini.parquet with embedded images",
        _mathverse, ("problem_version", "subject"),
        {"testmini_text_only": ("testmini_text_only", "testmini_text-only")},
    ),
    "mathvision": _Spec(
        ("test", "testmini"), ("id", "question", "answer"),
        "MATH-Vision's release (github.com/mathllm/MATH-V): data/test.jsonl or data/testmini.jsonl with "
        "images/<id>.jpg, or the Hugging Face MathLLMs/MathVision files data/test-*.parquet",
        _mathvision, ("subject", "level"),
    ),
    "wemath": _Spec(
        ("testmini",), ("question", "option", "answer"),
        "WeMath's release (github.com/We-Math/We-Math, huggingface.co/datasets/We-Math/We-Math): testmini.json "
        "with image_path relative to it (2steps/image/1-1.png, ...), or testmini.parquet",
        _wemath, ("steps",),
    ),
    "geometry3k": _Spec(
        ("test", "val", "train"), ("problem_text", "answer"),
        "Geometry3K's release (lupantech/InterGPS, data/geometry3k): <split>/<id>/data.json with "
        "img_diagram.png (and logic_form.json) in each problem folder; give the folder holding train/val/test",
        _geometry3k, ("problem_type_goal",),
    ),
    "records": _Spec(
        ("test",), ("id", "problem", "answer"), "a perception-rl record file (.jsonl, .json or .parquet; see data/records.py)",
        None,
    ),
}


def reason_kind(reason: str) -> str:
    """A skip reason without its item-specific detail ("image not found: 12.jpg (...)" -> "image not found")."""
    return reason.split(":")[0].split(" (")[0]


def default_group_by(name: str) -> list[str]:
    """The fields a benchmark's results are usually broken down by."""
    return list(SPECS[name].group_by)


def load_benchmark(
    name: BenchmarkName, path: str | Path, split: str | None = None, check_images: bool = True,
    invalid_records: Literal["skip", "error"] = "skip",
) -> BenchmarkItems:
    """Read one split of a benchmark's release into records, skipping (and reporting) unusable items."""
    if name not in SPECS:
        raise ValueError(f"data.benchmark must be one of {list(get_args(BenchmarkName))}, got {name!r}")
    spec, path = SPECS[name], Path(path).expanduser()
    split = split or spec.splits[0]
    if name not in ("records",) and split not in spec.splits:
        raise ValueError(f"data.split: {name} has splits {list(spec.splits)}, got {split!r}")
    if name == "geometry3k":
        rows, skipped, files = _geometry3k_rows(path, split, spec.layout)
    else:
        found = _annotation_files(path, spec.stems.get(split, (split,)), spec.layout, name)
        rows = [row for file in found for row in read_rows(file)]
        skipped, files = [], [str(f) for f in found]
    if not rows:
        raise BenchmarkFormatError(f"{name}: {', '.join(files)} holds no items. Expected: {spec.layout}")
    _check_fields(name, rows[0], spec)
    items = BenchmarkItems(name, split, [], skipped, files)
    seen: dict[str, str] = {}
    for where, row in rows:
        try:
            record = _convert(name, spec, row, where, Path(files[0]), path, check_images)
            if record.id in seen:
                raise _Skip(f"duplicate id {record.id!r} (first at {seen[record.id]})")
        except (_Skip, RecordError) as reason:
            if invalid_records == "error":
                raise BenchmarkFormatError(f"{where}: {reason}") from None
            items.skipped.append(Skipped(_item_id(row), str(reason), where))
            continue
        seen[record.id] = where
        items.records.append(record)
    if not items.records:
        reasons = sorted({s.reason.split(":")[0] for s in items.skipped})
        raise BenchmarkFormatError(
            f"{name}: no usable item in {', '.join(files)}: all {len(items.skipped)} skipped ({'; '.join(reasons)}; first: "
            f"{items.skipped[0].reason}). Unzip the release's image archive where the annotation file expects it. "
            f"Expected: {spec.layout}"
        )
    return items


def _check_fields(name: str, row: Any, spec: _Spec) -> None:
    """The first item must carry the benchmark's fields; otherwise this is not its release (fail, don't skip all)."""
    where, raw = row
    missing = [k for k in spec.required if not isinstance(raw, dict) or k not in raw]
    if missing:
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise BenchmarkFormatError(f"{where}: {name} items need field(s) {missing}; found {found}. Expected: {spec.layout}")


def _convert(name: str, spec: _Spec, row: dict, where: str, file: Path, root: Path, check_images: bool) -> Record:
    if spec.convert is None:  # the package's own records: their own validation, images inside the file's folder
        return record_from_dict(row, file.parent, where, check_files=check_images, confine_to=file.parent)
    if name == "geometry3k":
        bases = [Path(row["_dir"])]
    else:  # images sit beside the annotation file, in images/ there, or one level up (data/ + images/)
        folder = file.parent
        bases = [folder, folder / "images", folder.parent, folder.parent / "images", root, root / "images"]
    record = spec.convert(row, where, _Images(bases, check_images))
    record.metadata = {"benchmark": name, **record.metadata}
    return record


def _item_id(row: Any) -> str:
    if not isinstance(row, dict):
        return "?"
    for key in ("id", "pid", "sample_index", "question number", "ID", "_key"):
        if row.get(key) not in (None, ""):
            return str(row[key])
    return Path(str(row.get("_dir", "?"))).name
