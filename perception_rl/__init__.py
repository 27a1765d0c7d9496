"""perception-rl: GRPO fine-tuning of multimodal LLMs with a visual perception reward (Perception-R1).

The names below are the public surface; YAML configs may use them as short `class_path`s.
"""

from perception_rl.annotate import AnnotatePipeline, ChatModel
from perception_rl.callbacks import RewardCurve
from perception_rl.data import DotsDataModule, RecordDataModule
from perception_rl.eval import AnswerJudge, BenchmarkDataModule, BenchmarkEvaluation
from perception_rl.judge import Judge, JudgeRequest, JudgeVerdict, LocalJudge, OpenAIJudge, RuleJudge
from perception_rl.module import GRPOModule
from perception_rl.policy import LoRA, Policy
from perception_rl.rewards import (
    AccuracyReward,
    FormatReward,
    FunctionReward,
    PerceptionReward,
    RepetitionPenalty,
    Reward,
    RewardOutput,
)
from perception_rl.rollout import HFGenerateEngine, RolloutEngine, Rollouts, VLLMEngine
from perception_rl.rollout_log import RolloutLog
from perception_rl.tiny import TinyRandomPolicy, TinyTextPolicy
from perception_rl.warm_start import WarmStartPolicy

__version__ = "0.1.0"

__all__ = [
    "AccuracyReward", "AnnotatePipeline", "AnswerJudge", "BenchmarkDataModule", "BenchmarkEvaluation", "ChatModel",
    "DotsDataModule", "FormatReward", "FunctionReward", "GRPOModule", "HFGenerateEngine", "Judge", "JudgeRequest",
    "JudgeVerdict", "LoRA", "LocalJudge", "OpenAIJudge", "PerceptionReward", "Policy", "RecordDataModule",
    "RepetitionPenalty", "Reward", "RewardCurve", "RewardOutput", "RolloutEngine", "RolloutLog", "Rollouts",
    "RuleJudge", "TinyRandomPolicy", "TinyTextPolicy", "VLLMEngine", "WarmStartPolicy",
]
