"""Answer accuracy: 1 when the response's final answer equals the gold answer, else 0 (paper.md §2)."""

from __future__ import annotations

import torch

from perception_rl.rewards.answers import grade
from perception_rl.rewards.base import Reward, RewardOutput
from perception_rl.rollout.types import Rollouts


class AccuracyReward(Reward):
    """1.0 if the boxed / answer-tag content matches the record's `answer` (math-verify, option letters), else 0.0.

    Args:
        weight: multiplier in the summed reward (0.9 in the paper).
        name: key used in logs.
    """

    default_name = "accuracy"

    def __init__(self, weight: float = 0.9, name: str | None = None):
        super().__init__(weight, name)

    def score(self, rollouts: Rollouts) -> RewardOutput:
        scores, answered = [], 0
        for i, completion in enumerate(rollouts.completions):
            record = rollouts.record_of(i)
            result = grade(completion, record.answer, record.choices, record.metadata.get("precision"))
            answered += result.extracted is not None
            scores.append(float(result.correct))
        return RewardOutput(torch.tensor(scores), counters={"answered_fraction": answered / max(len(scores), 1)})
