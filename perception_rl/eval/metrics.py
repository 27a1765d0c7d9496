"""Benchmark metrics as torchmetrics `Metric`s: sum states, reduced across processes by summation.

    AnswerAccuracy       share of items answered correctly
    FormatCompliance     share of responses in the strict think/answer/boxed layout
    MeanResponseLength   mean completion length in tokens
    PerceptionScore      mean perception-reward score over items that carry annotations
    GroupedAccuracy      accuracy per value of one field (subject, problem version, level, ...)

Every state is a sum, so each process may see any share of the items and the reduced result is the same as
one process seeing them all. Grouped accuracy counts into a vector indexed by a fixed, sorted vocabulary of
the field's values, built from the whole item set before evaluation starts; every process builds the same
vocabulary from the same records, so the vectors line up when they are summed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torchmetrics import Metric

OTHER_GROUP = "(other)"
NO_VALUE = "(none)"


class _Ratio(Metric):
    """numerator / denominator, both sums (float64: exact counts far beyond any benchmark's size)."""

    full_state_update = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("numerator", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("denominator", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def compute(self) -> torch.Tensor:
        return self.numerator / self.denominator if self.denominator > 0 else torch.tensor(math.nan, dtype=torch.float64)

    def _add(self, values: torch.Tensor) -> None:
        values = torch.as_tensor(values, dtype=torch.float64, device=self.numerator.device).flatten()
        self.numerator += values.sum()
        self.denominator += values.numel()


class AnswerAccuracy(_Ratio):
    """Share of items whose answer is correct. `update(correct)`: bool or 0/1 values, one per item."""

    higher_is_better = True

    def update(self, correct: torch.Tensor) -> None:
        self._add(correct)


class FormatCompliance(_Ratio):
    """Share of responses that follow the strict format. `update(follows)`: one bool per response."""

    higher_is_better = True

    def update(self, follows: torch.Tensor) -> None:
        self._add(follows)


class MeanResponseLength(_Ratio):
    """Mean response length in tokens. `update(lengths)`: one length per response."""

    def update(self, lengths: torch.Tensor) -> None:
        self._add(lengths)


class PerceptionScore(_Ratio):
    """Mean perception score over items with annotations. `update(scores)`: NaN marks an item without any."""

    higher_is_better = True

    def update(self, scores: torch.Tensor) -> None:
        scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
        self._add(scores[~torch.isnan(scores)])


class GroupedAccuracy(Metric):
    """Accuracy per value of one field, over a fixed vocabulary of values.

    `update(groups, correct)`: one group label per item; an item whose field holds a list (MathVista's
    skills) counts once in each listed group. Labels outside the vocabulary count under "(other)".
    `compute()` returns {"correct": [G], "total": [G], "accuracy": [G]} in `self.groups` order.

    Args:
        groups: every value the field takes over the item set (any order; kept sorted).
        field: the field's name, for tables and logs.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, groups: Iterable[str], field: str = "group", **kwargs: Any):
        super().__init__(**kwargs)
        self.field = field
        self.groups = [*sorted(set(groups) - {OTHER_GROUP}, key=natural_key), OTHER_GROUP]
        self._index = {g: i for i, g in enumerate(self.groups)}
        self.add_state("correct", torch.zeros(len(self.groups), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(len(self.groups), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, groups: Sequence[Any], correct: torch.Tensor) -> None:
        correct = torch.as_tensor(correct, dtype=torch.float64).flatten()
        if len(groups) != len(correct):
            raise ValueError(f"GroupedAccuracy({self.field}): {len(groups)} group labels for {len(correct)} items")
        index, hits = [], []
        for value, hit in zip(groups, correct.tolist()):
            for label in group_labels(value):
                index.append(self._index.get(label, self._index[OTHER_GROUP]))
                hits.append(hit)
        index_t = torch.tensor(index, dtype=torch.long, device=self.total.device)
        self.total.index_add_(0, index_t, torch.ones(len(index), dtype=torch.float64, device=self.total.device))
        self.correct.index_add_(0, index_t, torch.tensor(hits, dtype=torch.float64, device=self.total.device))

    def compute(self) -> dict[str, torch.Tensor]:
        accuracy = torch.where(self.total > 0, self.correct / self.total.clamp(min=1), torch.full_like(self.total, math.nan))
        return {"correct": self.correct.clone(), "total": self.total.clone(), "accuracy": accuracy}

    def table(self) -> list[dict[str, Any]]:
        """One row per group that has items: value, items, correct, accuracy (after `compute`'s reduction)."""
        result = self.compute()
        rows = []
        for k, group in enumerate(self.groups):
            total = int(result["total"][k])
            if total:
                rows.append({"value": group, "items": total, "correct": int(result["correct"][k]),
                             "accuracy": float(result["accuracy"][k])})
        return rows


def group_labels(value: Any) -> list[str]:
    """The group label(s) of one field value: a list counts in each of its elements; None in "(none)"."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value] or [NO_VALUE]
    return [NO_VALUE if value is None or value == "" else str(value)]


def natural_key(text: str) -> list:
    """Sort "level 2" before "level 10"."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", text) if part]
