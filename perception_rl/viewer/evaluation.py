"""The test side of the page: the rows of a `perception-rl test` folder (predictions.jsonl), one card per item.

A row's images and annotations come from the row when it holds them (`images`: paths, `annotations`,
`perception_items`: one verdict per annotation, `judge_failure`, `judge_reply`); otherwise from the test set
itself, rebuilt from the evaluation's saved config (`<eval>/../logs/version_N/config.yaml`, its `data:`),
so the picture shown is the one the model was given (resized, and replaced under `data.image_ablation`).
Relative paths in that config are read from the current folder, as `perception-rl test` read them.

Item filters: correct, wrong, right answer with wrong perception (perception_correct false), perception
unknown (no annotations, or the judge abstained), judge failed, truncated.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from perception_rl.eval.results import PREDICTIONS, SHARD_GLOB, finished_rows, read_json
from perception_rl.viewer.images import ImageStore

ITEM_FILTERS = {
    "correct": "correct",
    "wrong": "wrong",
    "right_answer_wrong_perception": "right answer, wrong perception",
    "perception_unknown": "perception unknown",
    "judge_failed": "judge failed",
    "truncated": "truncated",
}


def evaluation_folders(run_dir: Path) -> list[Path]:
    """`run_dir` itself when it holds test rows, else its `<name>/` folders that do (`run_dir` is an eval
    folder), else its `eval/<name>/` ones (`run_dir` is a run)."""
    if _holds_rows(run_dir):
        return [run_dir]
    for parent in (run_dir, run_dir / "eval"):
        found = [folder for folder in sorted(parent.glob("*")) if folder.is_dir() and _holds_rows(folder)]
        if found:
            return found
    return []


def _holds_rows(folder: Path) -> bool:
    return (folder / PREDICTIONS).is_file() or any(folder.glob(SHARD_GLOB))


def load_evaluation(folder: Path, images: ImageStore) -> dict[str, Any]:
    """{name, folder, summary, items} of one test folder (rows in benchmark order when merged)."""
    rows = list(finished_rows(folder)[0].values())
    samples = _test_set(folder) if not all(_has_paths(row) for row in rows) else {}
    items = []
    for row in rows:
        sample = samples.get(str(row["id"]))
        if _has_paths(row):
            keys = [images.add_file(_resolve(folder, p)) for p in row["images"] if isinstance(p, str)]
        else:
            keys = [images.add_image(image) for image in sample.images] if sample is not None else []
        record = sample.record if sample is not None else None
        annotations = row.get("annotations") or (record.annotations if record is not None else None) or []
        item = {
            "id": str(row["id"]),
            "problem": row.get("problem") or (record.problem if record is not None else row.get("prompt")),
            "response": row.get("response", ""), "extracted": row.get("extracted"), "gold": row.get("gold"),
            "correct": bool(row.get("correct")), "perception": row.get("perception"),
            "perception_correct": row.get("perception_correct"), "truncated": bool(row.get("truncated")),
            "tokens": row.get("response_tokens"), "images": [k for k in keys if k is not None],
            "annotations": annotations, "items": row.get("perception_items"),
            "judge_failure": row.get("judge_failure"), "judge_reply": row.get("judge_reply"),
        }
        item["flags"] = item_flags(item)
        items.append(item)
    return {"name": folder.name, "folder": str(folder), "summary": read_json(folder / "summary.json") or {},
            "items": items}


def _has_paths(row: dict[str, Any]) -> bool:
    """Whether the row names every image it showed by path (rows of images given as bytes, of blank images, or
    from before rows carried images need the test set rebuilt)."""
    images = row.get("images")
    return bool(images) and all(isinstance(p, str) for p in images)


def item_flags(item: dict[str, Any]) -> list[str]:
    """The item filters (see the module docstring) this item passes."""
    flags = ["correct" if item["correct"] else "wrong"]
    if item["correct"] and item["perception_correct"] is False:
        flags.append("right_answer_wrong_perception")
    if item["perception_correct"] is None:
        flags.append("perception_unknown")
    if item["judge_failure"]:
        flags.append("judge_failed")
    if item["truncated"]:
        flags.append("truncated")
    return flags


def _resolve(folder: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else folder / path


def _test_set(folder: Path) -> dict[str, Any]:
    """id -> Sample (record + the images as given to the model) of the test set the rows came from; {} (with a
    note) when its config cannot be found or loaded."""
    configs = sorted((folder.parent / "logs").glob("version_*/config.yaml"), key=lambda p: p.stat().st_mtime)
    if not configs:
        _note(f"{folder}: no saved test config in {folder.parent / 'logs'}; items are shown without images")
        return {}
    try:
        dataset = _rebuild_test_set(yaml.safe_load(configs[-1].read_text(encoding="utf-8")).get("data"))
        return {str(dataset.records[i].id): dataset[i] for i in range(len(dataset))}
    except Exception as err:  # noqa: BLE001 - the page is still useful without pictures
        _note(f"{folder}: the test set of {configs[-1]} could not be loaded ({err}); items are shown without images")
        return {}


def _rebuild_test_set(data_config: dict | None):
    import lightning as L
    from jsonargparse import ArgumentParser

    if not data_config:
        raise ValueError("the config has no data section")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    datamodule = parser.instantiate_classes(parser.parse_object({"data": data_config})).data
    if hasattr(datamodule, "check_images"):
        datamodule.check_images = False  # decoded anyway when shown
    datamodule.setup("test")
    return datamodule.datasets["test"]


def _note(message: str) -> None:
    print(f"perception-rl view: note: {message}", file=sys.stderr)
