"""`BenchmarkDataModule`: a benchmark's official release as the test set of `perception-rl test`.

    perception-rl test --config benchmarks/mathvista/testmini.yaml --data.path /data/MathVista

The adapters in `perception_rl.eval.benchmarks` turn the release into records; everything after that
(image loading and resizing, the prompt with lettered options and the format instruction, batching) is
`RecordDataModule`'s. Skipped items are kept in `skipped` and reported by the evaluation.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from lightning.pytorch.utilities import rank_zero_info

from perception_rl.data.datamodule import ImageAblation, RecordDataModule, RecordDataset
from perception_rl.data.prompts import DEFAULT_FORMAT_INSTRUCTION
from perception_rl.eval.benchmarks import SPECS, BenchmarkName, Skipped, default_group_by, load_benchmark, reason_kind


class BenchmarkDataModule(RecordDataModule):
    """One split of a benchmark, read from its official release on local disk, as the test set.

    Args:
        benchmark: the release format: mathvista, mathverse, mathvision, wemath, geometry3k, or records (the
            package's own JSONL/parquet records).
        path: the release's folder (or its annotation file itself); see benchmarks/<name>/README.md.
        split: e.g. testmini or test; None takes the benchmark's main one (testmini; test for MATH-Vision and Geometry3K).
        limit: evaluate only the first N usable items (smoke runs); None evaluates all.
        invalid_records: "skip" an unusable item (no gold answer, missing or unreadable image, duplicate id) and
            report it (in the evaluation's skipped.jsonl and summary), or "error" on the first one.
        check_images: decode every image while loading (a few ms each), so a missing, truncated or corrupt
            image is a reported skip rather than a crash in the middle of the run.
        eval_batch_size: prompts per test step per device.
        num_workers: dataloader worker processes (image decoding).
        format_instruction: appended to every question (the paper's protocol); "" appends nothing.
        min_pixels: images smaller than this area are scaled up (aspect kept).
        max_pixels: images larger than this area are scaled down (aspect kept).
        image_ablation: `blank` or `shuffled` images instead of the real ones (a control: how much of a score
            does not need the right picture?); see `RecordDataModule`.
    """

    def __init__(
        self,
        benchmark: BenchmarkName,
        path: str,
        split: str | None = None,
        limit: int | None = None,
        invalid_records: Literal["skip", "error"] = "skip",
        check_images: bool = True,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        format_instruction: str = DEFAULT_FORMAT_INSTRUCTION,
        min_pixels: int = 3136,
        max_pixels: int = 1806336,
        image_ablation: ImageAblation = "none",
    ):
        super().__init__(
            eval_batch_size=eval_batch_size, num_workers=num_workers, format_instruction=format_instruction,
            min_pixels=min_pixels, max_pixels=max_pixels, shuffle=False, image_ablation=image_ablation,
        )
        if benchmark not in SPECS:
            raise ValueError(f"data.benchmark must be one of {sorted(SPECS)}, got {benchmark!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"data.limit must be >= 1 (or null for all items), got {limit}")
        self.benchmark = benchmark
        self.path = path
        self.split = split or SPECS[benchmark].splits[0]
        self.limit = limit
        self.invalid_records = invalid_records
        self.check_images = check_images
        self.skipped: list[Skipped] = []  # the parent's Skip has `where`; these also carry the item's id
        self.source_files: list[str] = []

    @property
    def eval_name(self) -> str:
        """Names the output folder and the summary: "<benchmark>-<split>"."""
        return f"{self.benchmark}-{self.split}"

    @property
    def default_group_by(self) -> list[str]:
        return default_group_by(self.benchmark)

    def setup(self, stage: str) -> None:
        if stage not in ("test", "validate", "predict"):
            raise ValueError(f"BenchmarkDataModule is a test set (use `perception-rl test`); stage {stage!r} needs train files")
        if "test" in self.datasets:
            return
        items = load_benchmark(self.benchmark, self.path, self.split, self.check_images, self.invalid_records)
        records = items.records[: self.limit] if self.limit else items.records
        self.skipped, self.source_files = items.skipped, items.files
        reasons = Counter(reason_kind(s.reason) for s in self.skipped)
        rank_zero_info(
            f"{self.eval_name}: {len(records)} items from {', '.join(items.files)}"
            + (f" (first {self.limit} of {len(items.records)})" if self.limit and len(items.records) > self.limit else "")
            + (f"; {len(self.skipped)} skipped: {dict(reasons)}" if self.skipped else "")
        )
        dataset = RecordDataset(records, self.format_instruction, self.min_pixels, self.max_pixels, self.image_ablation)
        self.datasets.update(test=dataset, val=dataset)

    def val_dataloader(self):
        return self._loader("val", self.eval_batch_size, False)

