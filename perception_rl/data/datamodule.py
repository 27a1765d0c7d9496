"""LightningDataModule over record files: validated records in, batches of `Sample`s out.

Batches are lists of `Sample` (record + RGB images + chat messages). Tokenisation happens in the rollout
engine with the policy's processor, so the data side needs no model and the processor lives in one place.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from perception_rl.data.images import load_image
from perception_rl.data.loader import EpochShuffleSampler, ResumableDataLoader, default_seed
from perception_rl.data.prompts import DEFAULT_FORMAT_INSTRUCTION, user_message
from perception_rl.data.records import Record, Skip, load_records_with_skips


@dataclass
class Sample:
    """One prompt: its record, its images (loaded and resized) and the chat messages to render."""

    record: Record
    images: list[Image.Image]
    messages: list[dict]
    # Under `image_ablation`: "blank" or "shuffled", and for "shuffled" the record whose images are shown.
    ablation: str = "none"
    shown: Record | None = None


ImageAblation = Literal["none", "blank", "shuffled"]
IMAGE_ABLATIONS = ("none", "blank", "shuffled")


def image_donors(records: list[Record], seed: int = 0) -> list[int]:
    """For each record, the index of the record whose images it shows under `shuffled`: a fixed random
    cycle through the records with images, so every one shows another's (records without images keep none).
    Another record's picture can still show the same facts by chance (small synthetic picture spaces)."""
    with_images = [i for i, r in enumerate(records) if r.images]
    if len(with_images) == 1:
        raise ValueError(f"data.image_ablation=shuffled needs two or more records with images, got one "
                         f"({records[with_images[0]].source})")
    order = list(with_images)
    random.Random(seed).shuffle(order)
    donors = list(range(len(records)))
    for position, index in enumerate(order):
        donors[index] = order[(position + 1) % len(order)]
    return donors


class RecordDataset(Dataset):
    """Records as `Sample`s; with `image_ablation` the images are replaced (a control: can a method gain
    reward without the right picture?), the record itself (answer, annotations) never is."""

    def __init__(
        self, records: list[Record], format_instruction: str, min_pixels: int, max_pixels: int,
        image_ablation: ImageAblation = "none",
    ):
        self.records = records
        self.format_instruction = format_instruction
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.image_ablation = image_ablation
        # By record id, so that a resumed evaluation (which keeps only the records still to do) keeps them.
        self.donors = ({r.id: records[d] for r, d in zip(records, image_donors(records))}
                       if image_ablation == "shuffled" else None)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        shown = self.donors.get(record.id, record) if self.donors is not None else record
        images = [load_image(src, self.min_pixels, self.max_pixels, shown.source) for src in shown.images]
        if self.image_ablation == "blank":
            images = [Image.new("RGB", image.size, "white") for image in images]
        return Sample(record, images, [user_message(record, self.format_instruction, len(images))],
                      self.image_ablation, shown if self.donors is not None else None)


def collate_samples(samples: list[Sample]) -> list[Sample]:
    return list(samples)


def _as_list(files: str | list[str] | None) -> list[str]:
    if files is None:
        return []
    return [files] if isinstance(files, str) else list(files)


class RecordDataModule(L.LightningDataModule):
    """Train / validation / test sets from JSONL or parquet record files.

    Args:
        train_files: record files for training (.jsonl or .parquet).
        val_files: record files for validation; none disables validation.
        test_files: record files for `perception-rl test`; defaults to the validation files.
        batch_size: prompts per training step per device (each is sampled G times).
        eval_batch_size: prompts per validation/test step per device.
        num_workers: dataloader worker processes (image decoding).
        format_instruction: appended to every problem after a space; "" to append nothing.
        min_pixels: images smaller than this area are scaled up (aspect kept).
        max_pixels: images larger than this area are scaled down (aspect kept).
        shuffle: shuffle the training set each epoch.
        invalid_records: "error" stops at the first invalid record (file, line and field named); "skip" leaves
            invalid records out, counts them and writes them with their reasons to
            `<default_root_dir>/skipped_records.jsonl`.
        check_images: decode every image once while loading, so a corrupt or truncated image is found
            before training rather than in the middle of it.
        images_outside_data_dir: allow image paths that lead outside the data file's folder.
        image_ablation: a control for shortcut learning, on every split: `blank` shows a white canvas of each
            image's size, `shuffled` shows another record's images (a fixed random cycle over the split, so
            picture is never the item's own, though it may show the same facts by chance); `none` shows the
            real images.
    """

    def __init__(
        self,
        train_files: str | list[str] | None = None,
        val_files: str | list[str] | None = None,
        test_files: str | list[str] | None = None,
        batch_size: int = 2,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        format_instruction: str = DEFAULT_FORMAT_INSTRUCTION,
        min_pixels: int = 3136,
        max_pixels: int = 1806336,
        shuffle: bool = True,
        invalid_records: Literal["error", "skip"] = "error",
        check_images: bool = True,
        images_outside_data_dir: bool = False,
        image_ablation: ImageAblation = "none",
    ):
        super().__init__()
        if image_ablation not in IMAGE_ABLATIONS:
            raise ValueError(f"data.image_ablation must be one of {', '.join(IMAGE_ABLATIONS)}, got {image_ablation!r}")
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
        if min_pixels <= 0 or max_pixels < min_pixels:
            raise ValueError(f"data: need 0 < min_pixels <= max_pixels, got {min_pixels} and {max_pixels}")
        self.train_files = _as_list(train_files)
        self.val_files = _as_list(val_files)
        self.test_files = _as_list(test_files) or self.val_files
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.format_instruction = format_instruction
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.shuffle = shuffle
        self.invalid_records = invalid_records
        self.check_images = check_images
        self.images_outside_data_dir = images_outside_data_dir
        self.image_ablation = image_ablation
        self.datasets: dict[str, RecordDataset] = {}
        self.skipped: list[Skip] = []

    def setup(self, stage: str) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ())
        for split in wanted:
            files = getattr(self, f"{split}_files")
            if split == "train" and not files:
                raise ValueError("data.train_files: give at least one record file to fit on")
            if files and split not in self.datasets:
                self.datasets[split] = RecordDataset(
                    self._load(files), self.format_instruction, self.min_pixels, self.max_pixels, self.image_ablation
                )
        self._report_skips()

    def _load(self, files: list[str]) -> list[Record]:
        """Records of all files, validated (images decoded when check_images); invalid ones raise or are skipped."""
        skip = self.invalid_records == "skip"
        records: list[Record] = []
        for file in files:
            loaded, skips = load_records_with_skips(file, True, self.images_outside_data_dir, skip_invalid=skip)
            self.skipped.extend(skips)
            records.extend(loaded)
        if self.check_images:
            records = [r for r in records if self._images_readable(r, skip)]
        return records

    def _images_readable(self, record: Record, skip: bool) -> bool:
        try:
            for source in record.images:
                load_image(source, self.min_pixels, self.max_pixels, record.source)
        except ValueError as err:
            if not skip:
                raise
            self.skipped.append(Skip(record.source, str(err).removeprefix(f"{record.source}: ")))
            return False
        return True

    def _report_skips(self) -> None:
        if not self.skipped:
            return
        rank_zero_warn(f"data: skipped {len(self.skipped)} invalid records (invalid_records=skip); first: "
                       f"{self.skipped[0].where}: {self.skipped[0].reason}")
        if self.trainer is not None and self.trainer.is_global_zero:
            report = Path(self.trainer.default_root_dir) / "skipped_records.jsonl"
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text("".join(json.dumps({"where": s.where, "reason": s.reason}) + "\n" for s in self.skipped))

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise ValueError(f"data.{split}_files: no {split} files were given")
        return DataLoader(
            self.datasets[split], batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
            collate_fn=collate_samples, persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by (seed, epoch) and resumable mid-epoch (see `perception_rl.data.loader`)."""
        if "train" not in self.datasets:
            raise ValueError("data.train_files: no train files were given")
        dataset = self.datasets["train"]
        return ResumableDataLoader(
            dataset, batch_size=self.batch_size, sampler=EpochShuffleSampler(len(dataset), self.shuffle, default_seed()),
            num_workers=self.num_workers, collate_fn=collate_samples, persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", self.eval_batch_size, False) if "val" in self.datasets else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, False)
