"""Rollout engines: sample G completions per prompt and return one `Rollouts` object."""

from perception_rl.rollout.base import RolloutEngine
from perception_rl.rollout.hf import HFGenerateEngine
from perception_rl.rollout.types import Rollouts
from perception_rl.rollout.vllm import VLLMEngine  # vllm itself is imported only when the engine first generates

__all__ = ["HFGenerateEngine", "RolloutEngine", "Rollouts", "VLLMEngine"]
