"""A training DataLoader that resumes mid-epoch exactly where an interrupted run stopped.

Its order depends only on (seed, epoch), never on the global RNG, and it reports through
`state_dict()` how many batches of the current epoch were consumed. Lightning saves that in every
checkpoint and hands it back through `load_state_dict()` before iterating, so a resumed run skips the
consumed batches and sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class EpochShuffleSampler(Sampler[int]):
    """A permutation seeded by (seed, epoch) (identity when `shuffle` is off); Lightning sets the epoch."""

    def __init__(self, size: int, shuffle: bool, seed: int):
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.size))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


def default_seed() -> int:
    """The seed given to `seed_everything` (LightningCLI's `seed_everything`), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class ResumableDataLoader(DataLoader):
    """DataLoader with a position: batches handed out in the current epoch, saved and restored by Lightning.

    Lightning fetches ahead only from loaders without a length; this one has a length, so every batch it
    has handed out has been trained on when a checkpoint is taken.
    """

    def __init__(self, *args, **kwargs):
        # A private generator for worker seeds: creating an iterator must not draw from the global RNG,
        # whose state a resumed run restores exactly.
        kwargs.setdefault("generator", torch.Generator().manual_seed(default_seed()))
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._skip = 0

    def __iter__(self):
        skip, self._skip = self._skip, 0
        self._yielded = 0
        for index, batch in enumerate(super().__iter__()):
            self._yielded = index + 1
            if index >= skip:
                yield batch

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        consumed = int(state.get("consumed", 0))
        # A checkpoint at the end of an epoch resumes at the start of the next one.
        self._skip = consumed if consumed < len(self) else 0
