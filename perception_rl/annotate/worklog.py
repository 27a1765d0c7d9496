"""Crash-safe files: the append-only work log of finished requests, and atomic whole-file writes.

A `WorkLog` is a JSONL file with one line per finished request, keyed by the request's digest. Each line
is written and flushed to the operating system as soon as its reply arrives, so a process killed at any
moment loses at most the requests still in flight; a rerun reads the log and sends only what is missing.
A line cut short by the kill is dropped on reading (and cut off the file), so that request runs again.
Every other output (stage files, records, summary, report) is replaced atomically: written to a temporary
file beside it, synced, then renamed over the old one, so readers see the old or the new file, never half.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


def digest(*parts: bytes | str) -> str:
    """sha256 hex digest of the parts, each length-prefixed so that ("ab", "c") and ("a", "bc") differ."""
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)
    return hasher.hexdigest()


class WorkLog:
    """Finished requests of one stage, by key; `append` persists a row before returning.

    Args:
        path: the JSONL file (created with its folder on first append).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: dict[str, dict[str, Any]] = {}
        self.torn_lines = 0  # a last line cut short by a crash, dropped
        self.bad_lines = 0  # lines that are not a JSON object with a "key"
        self._handle: BinaryIO | None = None
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # the process died mid-line: cut the torn tail so the next append starts clean
            self.torn_lines = 1
            with self.path.open("r+b") as handle:
                handle.truncate(end)
        for line in data[:end].splitlines():
            try:
                row = json.loads(line)
                self.rows[str(row["key"])] = row
            except (ValueError, KeyError, TypeError):
                self.bad_lines += 1

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.rows.get(key)

    def append(self, row: dict[str, Any]) -> None:
        """Write one row (it must carry "key") and flush it to the OS: it survives a kill of this process."""
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("ab")
        self._handle.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
        self._handle.flush()
        self.rows[str(row["key"])] = row

    def close(self) -> None:
        if self._handle is not None:
            os.fsync(self._handle.fileno())  # survives a power cut too, once the stage is over
            self._handle.close()
            self._handle = None

    def __enter__(self) -> WorkLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def exclusive(folder: str | Path) -> Iterator[None]:
    """Hold the folder's lock file: two processes appending to one work log would send requests twice.
    The operating system releases the lock when the process ends, however it ends."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{folder} is in use by another `perception-rl annotate` process; "
                               "wait for it to finish or choose another output_dir") from None
        yield


def atomic_write(path: str | Path, write: Callable[[Path], None], durable: bool = True) -> Path:
    """Call `write(tmp_path)`, then rename the file onto `path` (same folder, so the rename is atomic).

    `durable` syncs the file to disk before the rename, so even a power cut cannot leave an empty file behind
    the new name; without it the write is still atomic for a killed process (and much faster for many files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        if durable:
            with tmp.open("rb") as written:
                os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return atomic_text(path, lines)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file this package wrote (stage files); a missing file is an error naming the stage to run."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it first (see `perception-rl annotate --help`)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
