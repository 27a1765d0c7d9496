"""Rewards: the `Reward` extension point and the paper's rule-based rewards."""

from perception_rl.rewards.accuracy import AccuracyReward
from perception_rl.rewards.base import FunctionReward, Reward, RewardBreakdown, RewardError, RewardOutput, score_all
from perception_rl.rewards.format import FormatReward
from perception_rl.rewards.perception import PerceptionReward
from perception_rl.rewards.repetition import RepetitionPenalty

__all__ = [
    "AccuracyReward", "FormatReward", "FunctionReward", "PerceptionReward", "RepetitionPenalty", "Reward",
    "RewardBreakdown", "RewardError", "RewardOutput", "score_all",
]
