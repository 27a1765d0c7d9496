"""perception-rl: GRPO fine-tuning of multimodal LLMs with a visual perception reward (Perception-R1).

The names below are the public surface; YAML configs may use them as short `class_path`s.
"""

from perception_rl.data import RecordDataModule, ShapesDataModule
from perception_rl.module import GRPOModule
from perception_rl.policy import Policy
from perception_rl.rewards import (
    AccuracyReward,
    FormatReward,
    FunctionReward,
    RepetitionPenalty,
    Reward,
    RewardOutput,
)
from perception_rl.rollout import HFGenerateEngine, RolloutEngine, Rollouts
from perception_rl.tiny import TinyRandomPolicy

__version__ = "0.1.0"

__all__ = [
    "AccuracyReward", "FormatReward", "FunctionReward", "GRPOModule", "HFGenerateEngine", "Policy",
    "RecordDataModule", "RepetitionPenalty", "Reward", "RewardOutput", "RolloutEngine", "Rollouts",
    "ShapesDataModule", "TinyRandomPolicy",
]
