"""The reward extension point: `Reward` (one small ABC) and `RewardOutput` (a result that logs itself).

A reward scores every completion of a rollout batch. Scores are floats; NaN means the reward abstained
for that completion (e.g. its judge failed under the "abstain" policy) and the completion is then left
out of the loss. Weights live on the reward, so a YAML list of rewards is the whole reward function.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from perception_rl.judge.types import JudgeVerdict
from perception_rl.rollout.types import Rollouts


@dataclass
class RewardOutput:
    """Per-completion scores ([N], NaN = abstained), optional sub-scores ([N] each) and counters.

    `logged` ([N] bool, optional) marks the completions that count in the logged means; e.g. the perception
    reward scores problems without annotations 0 but leaves them out of its metric. None: all count.
    `verdicts` (N, optional): a judging reward's verdict per completion, with the judge's raw reply, for
    inspection (`perception_rl.RolloutLog` writes them).
    """

    scores: torch.Tensor
    sub_scores: dict[str, torch.Tensor] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    logged: torch.Tensor | None = None
    verdicts: list[JudgeVerdict] | None = None

    def logged_scores(self) -> torch.Tensor:
        """Scores with NaN where a completion does not count in the metric (for evaluation means)."""
        return self._metric_view(self.scores)

    def log(self, prefix: str) -> dict[str, float]:
        """Scalars to log: the mean score over completions that got one, sub-score means, counters."""
        out = {f"{prefix}/mean": _nanmean(self._metric_view(self.scores))}
        abstained = int(torch.isnan(self.scores).sum())
        if abstained:
            out[f"{prefix}/abstained"] = float(abstained)
        for name, values in self.sub_scores.items():
            out[f"{prefix}/{name}"] = _nanmean(self._metric_view(values))
        for name, value in self.counters.items():
            out[f"{prefix}/{name}"] = float(value)
        return out

    def _metric_view(self, values: torch.Tensor) -> torch.Tensor:
        if self.logged is None:
            return values
        nan = torch.full_like(values, math.nan, dtype=torch.float32)
        return torch.where(self.logged.to(torch.bool), values.float(), nan)


def _nanmean(values: torch.Tensor) -> float:
    valid = values[~torch.isnan(values)]
    return float(valid.float().mean()) if valid.numel() else math.nan


class Reward(ABC):
    """Scores each completion of a `Rollouts` batch. Subclass and implement `score`.

    Args:
        weight: multiplier applied when the rewards are summed into one scalar per completion.
        name: key used in logs; defaults to the class's `default_name`.
    """

    default_name = "reward"

    def __init__(self, weight: float = 1.0, name: str | None = None):
        self.weight = weight
        self.name = name or self.default_name

    @abstractmethod
    def score(self, rollouts: Rollouts) -> RewardOutput:
        """Return one score per completion, in `rollouts.completions` order."""

    def start(self, rollouts: Rollouts) -> bool:
        """Optionally begin slow work (remote requests) for `rollouts` before any reward is scored.

        `score_all` calls this on every reward first, scores the rewards that returned False, then those that
        returned True; so a judge's requests are in flight while the rule-based rewards run in the main thread.
        Return True when work was started; `score` must then collect it. The default starts nothing.
        """
        return False

    # On a failure, `__call__` re-scores completions one by one to name the sample that fails. Rewards
    # whose scoring has side effects (remote requests) switch this off.
    locate_failures = True

    def __call__(self, rollouts: Rollouts) -> RewardOutput:
        try:
            output = self.score(rollouts)
        except Exception as err:
            # Keep the exception's type (callers may handle e.g. JudgeError); say where it came from.
            err.add_note(f"raised by reward {self.name!r}{self._culprit(rollouts)}")
            raise
        if output.scores.shape != (len(rollouts.completions),):
            raise RewardError(
                f"reward {self.name!r} returned scores of shape {tuple(output.scores.shape)}, "
                f"expected ({len(rollouts.completions)},)"
            )
        infinite = torch.isinf(output.scores).nonzero().flatten().tolist()
        if infinite:
            raise RewardError(
                f"reward {self.name!r} returned an infinite score for sample {rollouts.record_of(infinite[0]).id!r} "
                "(use NaN to abstain)"
            )
        return output

    def _culprit(self, rollouts: Rollouts) -> str:
        """' on sample <id>' for the first completion whose scoring fails alone (empty if none does)."""
        if not self.locate_failures:
            return ""
        for i in range(len(rollouts.completions)):
            try:
                self.score(rollouts.select([i]))
            except Exception:  # noqa: BLE001 - any failure identifies the culprit
                record = rollouts.record_of(i)
                return f" on sample {record.id!r} ({record.source}, completion {i})"
        return ""

    def state_dict(self) -> dict:
        """State to carry across a resume (caches, counters); saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, weight={self.weight})"


class RewardError(ValueError):
    """A reward returned scores that cannot be used (wrong shape, infinite values)."""


class FunctionReward(Reward):
    """Adapts a plain function `fn(completions: list[str], records: list[dict]) -> list[float]`.

    `records[i]` is the source record of `completions[i]` (as a dict, every field of the data file kept).

    Args:
        function: the function, or its import path "package.module.function" (as written in YAML).
        weight: multiplier in the summed reward.
        name: key used in logs; defaults to the function's name.
    """

    def __init__(self, function: str | Callable, weight: float = 1.0, name: str | None = None):
        self.function = _import_callable(function) if isinstance(function, str) else function
        super().__init__(weight, name or getattr(self.function, "__name__", "function"))

    def score(self, rollouts: Rollouts) -> RewardOutput:
        records = [rollouts.record_of(i).to_dict() for i in range(len(rollouts.completions))]
        values = list(self.function(rollouts.completions, records))
        if len(values) != len(rollouts.completions):
            raise ValueError(f"reward function {self.name!r} returned {len(values)} scores for {len(records)} completions")
        return RewardOutput(torch.tensor([math.nan if v is None else float(v) for v in values]))


def _import_callable(path: str) -> Callable:
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"FunctionReward.function: {path!r} is not an import path like 'package.module.function'")
    function = getattr(importlib.import_module(module_name), attr, None)
    if not callable(function):
        raise ValueError(f"FunctionReward.function: {path!r} does not name a callable")
    return function


@dataclass
class RewardBreakdown:
    """All rewards of one batch: each reward's output and the weighted total ([N], NaN where any abstained)."""

    outputs: dict[str, RewardOutput]
    total: torch.Tensor

    def log(self, prefix: str = "reward") -> dict[str, float]:
        metrics = {f"{prefix}/total": _nanmean(self.total)}
        for name, output in self.outputs.items():
            metrics.update(output.log(f"{prefix}/{name}"))
        return metrics


def score_all(rewards: list[Reward], rollouts: Rollouts) -> RewardBreakdown:
    """Run every reward and sum `weight * score` per completion.

    Rewards that start background work (`Reward.start`) are scored last, so their work overlaps the others.
    """
    names = [r.name for r in rewards]
    if len(set(names)) != len(names):
        raise ValueError(f"reward names must be unique (they key the logs), got {names}; set `name:` on duplicates")
    started = {reward.name: bool(reward.start(rollouts)) for reward in rewards}
    scored = {reward.name: reward(rollouts) for reward in sorted(rewards, key=lambda r: started[r.name])}
    outputs = {name: scored[name] for name in names}
    total = torch.zeros(len(rollouts.completions), dtype=torch.float32)
    for reward in rewards:
        if reward.weight:  # a weight-0 reward is logged only; its abstentions must not mask the completion
            total = total + reward.weight * outputs[reward.name].scores.float()
    return RewardBreakdown(outputs, total)
