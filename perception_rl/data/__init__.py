"""Records, images, prompts and the LightningDataModules."""

from perception_rl.data.datamodule import RecordDataModule, RecordDataset, Sample
from perception_rl.data.prompts import DEFAULT_FORMAT_INSTRUCTION
from perception_rl.data.records import Record, RecordError, load_records
from perception_rl.data.synthetic import DotsDataModule, write_dots_dataset

__all__ = [
    "DEFAULT_FORMAT_INSTRUCTION", "DotsDataModule", "Record", "RecordDataModule", "RecordDataset", "RecordError",
    "Sample", "load_records", "write_dots_dataset",
]
