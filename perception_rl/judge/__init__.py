"""Judges: decide, fact by fact, whether a response states each visual annotation of its problem.

    OpenAIJudge  any OpenAI-compatible chat server (vllm serve, llama.cpp server, hosted APIs), async
    LocalJudge   a transformers model in the training process, batched generation
    RuleJudge    deterministic word matching, for offline runs, demos and tests

Layers, each importing only those above it in this list:

    types.py      JudgeRequest, JudgeReply, JudgeVerdict, failure kinds and policies (plain data)
    prompt.py     prompt templates and the reply parser
    neutralise.py the response filter (reward-hacking defence)
    health.py     the verdict cache and the health counters
    transport.py  ChatTransport, the HTTP client shared with `perception_rl.annotate`
    base.py       Judge: the pipeline neutralise -> cache -> backend -> parse; ThreadedJudge
    openai.py, local.py, rules.py   the backends
    cli.py        `perception-rl judge`, the audit command

Audit a judge from the command line with `perception-rl judge` (see `perception_rl.judge.cli`).
"""

from perception_rl.judge.base import Judge, PendingVerdicts, ThreadedJudge
from perception_rl.judge.health import JudgeHealth, VerdictCache
from perception_rl.judge.local import LocalJudge
from perception_rl.judge.neutralise import Neutraliser
from perception_rl.judge.openai import OpenAIJudge
from perception_rl.judge.prompt import DEFAULT_PROMPT, PromptTemplate
from perception_rl.judge.rules import RuleJudge
from perception_rl.judge.transport import ChatTransport
from perception_rl.judge.types import FAILURE_KINDS, JudgeError, JudgeReply, JudgeRequest, JudgeVerdict

__all__ = [
    "DEFAULT_PROMPT", "FAILURE_KINDS", "ChatTransport", "Judge", "JudgeError", "JudgeHealth", "JudgeReply",
    "JudgeRequest", "JudgeVerdict", "LocalJudge", "Neutraliser", "OpenAIJudge", "PendingVerdicts", "PromptTemplate",
    "RuleJudge", "ThreadedJudge", "VerdictCache",
]
