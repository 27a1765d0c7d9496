"""Records, images, prompts and the LightningDataModules."""

from perception_rl.data.datamodule import RecordDataModule, RecordDataset, Sample
from perception_rl.data.prompts import DEFAULT_FORMAT_INSTRUCTION
from perception_rl.data.records import Record, RecordError, load_records
from perception_rl.data.synthetic import ShapesDataModule, write_shapes_dataset

__all__ = [
    "DEFAULT_FORMAT_INSTRUCTION", "Record", "RecordDataModule", "RecordDataset", "RecordError", "Sample",
    "ShapesDataModule", "load_records", "write_shapes_dataset",
]
