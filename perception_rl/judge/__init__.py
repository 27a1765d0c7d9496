"""Judges: decide, fact by fact, whether a response states each visual annotation of its problem.

    OpenAIJudge  any OpenAI-compatible chat server (vllm serve, llama.cpp server, hosted APIs), async
    LocalJudge   a transformers model in the training process, batched generation
    RuleJudge    deterministic word matching, for offline runs, demos and tests

Audit a judge from the command line with `perception-rl judge` (see `perception_rl.judge.cli`).
"""

from perception_rl.judge.base import (
    Judge,
    JudgeError,
    JudgeReply,
    JudgeRequest,
    JudgeVerdict,
    PendingVerdicts,
    ThreadedJudge,
)
from perception_rl.judge.health import FAILURE_KINDS, JudgeHealth, VerdictCache
from perception_rl.judge.local import LocalJudge
from perception_rl.judge.neutralise import Neutraliser
from perception_rl.judge.openai import OpenAIJudge
from perception_rl.judge.prompt import DEFAULT_PROMPT, PromptTemplate
from perception_rl.judge.rules import RuleJudge

__all__ = [
    "DEFAULT_PROMPT", "FAILURE_KINDS", "Judge", "JudgeError", "JudgeHealth", "JudgeReply", "JudgeRequest",
    "JudgeVerdict", "LocalJudge", "Neutraliser", "OpenAIJudge", "PendingVerdicts", "PromptTemplate", "RuleJudge",
    "ThreadedJudge", "VerdictCache",
]
