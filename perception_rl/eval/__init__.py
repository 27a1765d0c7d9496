"""Benchmark evaluation: release adapters, the test-time evaluation, torchmetrics metrics, McNemar comparison.

    perception-rl test --config benchmarks/mathvista/testmini.yaml --data.path /data/MathVista
    perception-rl compare A/predictions.jsonl B/predictions.jsonl --key correct --by problem_version
"""

from perception_rl.eval.benchmarks import BenchmarkFormatError, BenchmarkItems, Skipped, load_benchmark
from perception_rl.eval.compare import McNemarResult, mcnemar, mcnemar_p_value
from perception_rl.eval.datamodule import BenchmarkDataModule
from perception_rl.eval.evaluation import BenchmarkEvaluation
from perception_rl.eval.judging import AnswerJudge
from perception_rl.eval.metrics import (
    AnswerAccuracy,
    FormatCompliance,
    GroupedAccuracy,
    MeanResponseLength,
    PerceptionScore,
)

__all__ = [
    "AnswerAccuracy", "AnswerJudge", "BenchmarkDataModule", "BenchmarkEvaluation", "BenchmarkFormatError",
    "BenchmarkItems", "FormatCompliance", "GroupedAccuracy", "McNemarResult", "MeanResponseLength", "PerceptionScore",
    "Skipped", "load_benchmark", "mcnemar", "mcnemar_p_value",
]
