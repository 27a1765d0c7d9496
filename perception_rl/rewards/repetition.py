"""Word n-gram repetition penalty (paper.md §2): discourages padding a response with repeated descriptions."""

from __future__ import annotations

import torch

from perception_rl.rewards.base import Reward, RewardOutput
from perception_rl.rollout.types import Rollouts


def repetition_penalty(text: str, ngram_size: int = 20, max_penalty: float = -2.0) -> float:
    """`max_penalty * (1 - unique/total)` over lower-cased whitespace-word n-grams; 0 for shorter texts."""
    words = text.lower().split()
    if len(words) < ngram_size:
        return 0.0
    ngrams = [tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
    return max_penalty * (1.0 - len(set(ngrams)) / len(ngrams))


class RepetitionPenalty(Reward):
    """Penalty in [max_penalty, 0] growing with the share of repeated word n-grams.

    Args:
        ngram_size: n of the word n-grams (20 in the paper).
        max_penalty: penalty of a response made only of repeats (-2.0 in the paper).
        weight: multiplier in the summed reward (1.0: the penalty carries its own scale).
        name: key used in logs.
    """

    default_name = "repetition"

    def __init__(self, ngram_size: int = 20, max_penalty: float = -2.0, weight: float = 1.0, name: str | None = None):
        if ngram_size < 1 or max_penalty > 0:
            raise ValueError(f"RepetitionPenalty: need ngram_size >= 1 and max_penalty <= 0, got {ngram_size}, {max_penalty}")
        super().__init__(weight, name)
        self.ngram_size = ngram_size
        self.max_penalty = max_penalty

    def score(self, rollouts: Rollouts) -> RewardOutput:
        return RewardOutput(
            torch.tensor([repetition_penalty(c, self.ngram_size, self.max_penalty) for c in rollouts.completions])
        )
