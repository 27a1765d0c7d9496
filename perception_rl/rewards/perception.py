"""The visual perception reward (paper.md §2): the share of a problem's visual annotations a judge finds stated.

One judge request per completion (its problem's annotation list + the response). Requests start in
`start`, before `score_all` runs the rule-based rewards, and are collected in `score`. Problems without
annotations score 0 and are left out of the logged metric. A failed request (no reply, or a reply in which
no item holds a verdict) scores what the judge's failure policy says: by default NaN, so the completion's
total reward is NaN and GRPOModule leaves it out of the advantages and the loss (`abstained` counts them);
0 under "zero"; or the step raises. Logged each step under `reward/<name>/`: `mean` (annotated problems
only, abstentions left out), `abstained`, `annotated_fraction`, `prompt_hash` (the template hash's first 24
bits, to tell runs' prompts apart in a metrics file) and the judge's health counters under `judge/`
(requests, cache hits, failures by kind, items answered / unparsable / missing, latency p50/p95, tokens).
"""

from __future__ import annotations

import io
import math

import torch
from lightning.pytorch.utilities import rank_zero_info

from perception_rl.judge.base import Judge, PendingVerdicts
from perception_rl.judge.types import Average, JudgeRequest, JudgeVerdict
from perception_rl.rewards.base import Reward, RewardOutput
from perception_rl.rollout.types import Rollouts


class PerceptionReward(Reward):
    """Fraction of the problem's visual annotations that the judge finds in each response.

    Args:
        judge: who decides, item by item: `perception_rl.OpenAIJudge`, `LocalJudge`, `RuleJudge`, or your `Judge`.
        weight: gamma, the reward's weight in the sum (0.5 by default; the released 7B recipe uses 0.7).
        average: "reference" divides by the number of annotations, a skipped item counting 0 (the paper's
            formula); "emitted" averages the verdicts the judge gave (the authors' code).
        name: key used in logs.
    """

    default_name = "visual"

    def __init__(self, judge: Judge, weight: float = 0.5, average: Average = "reference", name: str | None = None):
        if average not in ("reference", "emitted"):
            raise ValueError(f"PerceptionReward.average must be 'reference' or 'emitted', got {average!r}")
        super().__init__(weight, name)
        self.judge = judge
        self.average = average
        self._pending: tuple[Rollouts, PendingVerdicts] | None = None
        self._announced = False

    locate_failures = False  # re-scoring one by one would resend judge requests

    def state_dict(self) -> dict:
        return {"judge": self.judge.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.judge.load_state_dict(state.get("judge", {}))

    def start(self, rollouts: Rollouts) -> bool:
        self._pending = (rollouts, self.judge.start(self.requests(rollouts)))
        return True

    def score(self, rollouts: Rollouts) -> RewardOutput:
        if self._pending is not None and self._pending[0] is rollouts:
            pending = self._pending[1]
        else:  # called directly, without `start`
            pending = self.judge.start(self.requests(rollouts))
        self._pending = None
        verdicts = pending.result()
        self.judge.check(verdicts)
        return self.output(verdicts)

    def requests(self, rollouts: Rollouts) -> list[JudgeRequest]:
        """One request per completion; images only for judges that look at them (encoded once per prompt)."""
        images: dict[int, tuple[bytes, ...]] = {}
        requests = []
        for i, response in enumerate(rollouts.completions):
            group = int(rollouts.group_ids[i])
            if self.judge.wants_images and group not in images:
                images[group] = tuple(_png(image) for image in rollouts.images_of(i))
            annotations = rollouts.record_of(i).annotations or ()
            requests.append(JudgeRequest(tuple(annotations), response, images.get(group, ())))
        return requests

    def output(self, verdicts: list[JudgeVerdict]) -> RewardOutput:
        """Scores (failure policy applied), the metric mask and the counters to log."""
        annotated = torch.tensor([v.num_items > 0 for v in verdicts], dtype=torch.bool)
        scores = torch.tensor(
            [self.judge.failure_score if v.failure is not None else v.score(self.average) for v in verdicts],
            dtype=torch.float32,
        )
        template = self.judge.template
        if not self._announced:
            rank_zero_info(f"{self.name} reward: {self.judge!r}, prompt {template.label} ({template.source})")
            self._announced = True
        counters = {
            "annotated_fraction": float(annotated.float().mean()) if len(verdicts) else math.nan,
            "prompt_hash": float(int(template.hash[:6], 16)),
            **{f"judge/{key}": value for key, value in self.judge.health.snapshot(reset=True).items()},
        }
        return RewardOutput(scores, counters=counters, logged=annotated, verdicts=verdicts)

    def __repr__(self) -> str:
        settings = f"name={self.name!r}, weight={self.weight}, average={self.average!r}"
        return f"PerceptionReward({settings}, judge={self.judge!r})"


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
