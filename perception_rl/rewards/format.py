"""The paper's strict format reward: `<think>\\n...\\n</think>\\n<answer>\\n... \\boxed{...} ...\\n</answer>`."""

from __future__ import annotations

import re

import torch

from perception_rl.rewards.answers import last_boxed
from perception_rl.rewards.base import Reward, RewardOutput
from perception_rl.rollout.types import Rollouts

# One think block, then one answer block; newlines exactly where shown; no text before or after (trailing
# whitespace aside). The look-aheads keep any think/answer tag out of both blocks, so blocks never nest.
_NO_TAGS = r"(?:(?!</?(?:think|answer)>).)*"
STRICT_FORMAT = re.compile(rf"<think>\n{_NO_TAGS}\n</think>\n<answer>\n({_NO_TAGS})\n</answer>", re.DOTALL)


def follows_format(response: str) -> bool:
    """The strict layout, with a closed `\\boxed{...}` inside the answer block."""
    match = STRICT_FORMAT.fullmatch(response.rstrip())
    return match is not None and last_boxed(match.group(1)) is not None


class FormatReward(Reward):
    """1.0 when the whole response has the strict think/answer/boxed layout, else 0.0.

    Args:
        weight: multiplier in the summed reward (0.1 in the paper).
        name: key used in logs.
    """

    default_name = "format"

    def __init__(self, weight: float = 0.1, name: str | None = None):
        super().__init__(weight, name)

    def score(self, rollouts: Rollouts) -> RewardOutput:
        return RewardOutput(torch.tensor([float(follows_format(c)) for c in rollouts.completions]))
