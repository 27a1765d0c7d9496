"""`PerceptionReward` (perception_rl/rewards/perception.py): scores, the metric mask, failure policies,
judge requests overlapping the rule-based rewards in `score_all`, images for multimodal judges, and
construction from the shipped YAML configs."""

from __future__ import annotations

import io
import math
import os
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from PIL import Image

from perception_rl.data.datamodule import Sample
from perception_rl.data.records import Record
from perception_rl.judge import JudgeReply, LocalJudge, OpenAIJudge, RuleJudge, ThreadedJudge
from perception_rl.rewards import FunctionReward, PerceptionReward, Reward, score_all
from perception_rl.rollout.types import Rollouts

REPO_ROOT = Path(__file__).resolve().parents[1]
FACTS = ["There are 2 circles.", "There is 1 square."]


class SlowJudge(ThreadedJudge):
    """Replies from a function of the request after a delay; remembers the images it was sent."""

    def __init__(self, reply=lambda r: "<verdict1>1</verdict1>", delay: float = 0.0, images: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.reply, self.delay, self.images, self.seen_images = reply, delay, images, []

    @property
    def wants_images(self) -> bool:
        return self.images

    def reply_batch(self, requests, deadline):
        time.sleep(self.delay)
        self.seen_images += [r.images for r in requests]
        return [r if isinstance(r, JudgeReply) else JudgeReply(text=r) for r in map(self.reply, requests)]


def make_rollouts(completions: list[str], annotations: list[list[str] | None], images: list[list] | None = None) -> Rollouts:
    """P = len(annotations) prompts with G = len(completions) / P completions each."""
    p = len(annotations)
    g = len(completions) // p
    records = [Record(id=f"r{k}", problem="How many?", answer="2", images=[], annotations=a) for k, a in enumerate(annotations)]
    return Rollouts(
        samples=[Sample(record=r, images=(images[k] if images else []), messages=[]) for k, r in enumerate(records)],
        prompts=["p"] * p, prompt_inputs={},
        completion_ids=torch.zeros(len(completions), 1, dtype=torch.long),
        completion_mask=torch.ones(len(completions), 1, dtype=torch.long),
        completions=completions, group_ids=torch.arange(p).repeat_interleave(g), group_size=g,
        truncated=torch.zeros(len(completions), dtype=torch.bool),
    )


def test_scores_are_the_fraction_of_facts_stated_and_unannotated_problems_are_not_logged():
    rollouts = make_rollouts(
        ["I see 2 circles and 1 square.", "I see 2 circles.", "I see 2 circles.", "nothing"],
        [FACTS, None],
    )
    reward = PerceptionReward(RuleJudge())
    output = reward(rollouts)
    assert output.scores.tolist() == [1.0, 0.5, 0.0, 0.0]
    logged = output.log("visual")
    assert logged["visual/mean"] == 0.75, "the unannotated problem's zeros stay out of the metric"
    assert logged["visual/annotated_fraction"] == 0.5
    assert logged["visual/judge/requests"] == 2 and logged["visual/judge/failures/timeout"] == 0
    assert logged["visual/prompt_hash"] == int(reward.judge.template.hash[:6], 16)
    assert torch.isnan(output.logged_scores()).tolist() == [False, False, True, True]
    assert reward.weight == 0.5 and reward.name == "visual"


@pytest.mark.parametrize("average, expected", [("reference", [0.5, 0.5]), ("emitted", [1.0, 0.5])])
def test_average_over_reference_items_or_emitted_verdicts(average, expected):
    replies = {"skips": "<verdict1>1</verdict1>", "both": "<verdict1>1</verdict1><verdict2>0</verdict2>"}
    judge = SlowJudge(reply=lambda r: replies[r.response])
    output = PerceptionReward(judge, average=average)(make_rollouts(["skips", "both"], [FACTS]))
    assert output.scores.tolist() == expected


@pytest.mark.parametrize("policy", ["zero", "abstain"])
def test_failed_requests_follow_the_failure_policy(policy):
    judge = SlowJudge(reply=lambda r: JudgeReply(failure="timeout") if r.response == "bad" else "<verdict1>1</verdict1>",
                      failure_policy=policy)
    rewards = [PerceptionReward(judge, weight=1.0), FunctionReward(lambda c, r: [1.0] * len(c), name="one")]
    breakdown = score_all(rewards, make_rollouts(["bad", "good"], [["fact"]]))
    visual = breakdown.outputs["visual"]
    if policy == "zero":
        assert visual.scores.tolist() == [0.0, 1.0] and breakdown.total.tolist() == [1.0, 2.0]
    else:  # NaN masks the completion out of the loss: GRPOModule trains on ~isnan(total)
        assert math.isnan(visual.scores[0]) and math.isnan(breakdown.total[0]) and breakdown.total[1] == 2.0
        assert visual.log("visual")["visual/abstained"] == 1.0
    assert visual.counters["judge/failures/timeout"] == 1.0


def test_raise_policy_fails_the_step():
    from perception_rl.judge import JudgeError

    judge = SlowJudge(reply=lambda r: JudgeReply(failure="http_error", error="HTTP 502"), failure_policy="raise")
    with pytest.raises(JudgeError, match="HTTP 502"):
        PerceptionReward(judge)(make_rollouts(["x"], [["fact"]]))


def test_judge_requests_overlap_the_rule_based_rewards():
    """score_all starts the judge before scoring the others; rule-based rewards stay in the main thread."""
    threads = []

    def slow_rule(completions, records):
        threads.append(threading.current_thread())
        time.sleep(0.4)
        return [0.0] * len(completions)

    rewards = [PerceptionReward(SlowJudge(delay=0.4)), FunctionReward(slow_rule, name="rule")]
    start = time.monotonic()
    breakdown = score_all(rewards, make_rollouts(["a", "b"], [["fact"]]))
    elapsed = time.monotonic() - start
    assert elapsed < 0.7, f"0.4 s of judging and 0.4 s of rules took {elapsed:.2f} s: they did not overlap"
    assert threads == [threading.main_thread()]
    assert list(breakdown.outputs) == ["visual", "rule"], "outputs keep the configured order"
    assert breakdown.outputs["visual"].scores.tolist() == [1.0, 1.0]


def test_score_without_start_and_a_stale_start_are_handled():
    reward = PerceptionReward(RuleJudge())
    first, second = make_rollouts(["2 circles"], [FACTS]), make_rollouts(["1 square"], [FACTS])
    assert reward(first).scores.tolist() == [0.5]
    reward.start(first)
    assert reward(second).scores.tolist() == [0.5], "work started for other rollouts is not used for these"


def test_multimodal_judges_get_each_prompts_images_once_encoded():
    image = Image.new("RGB", (8, 8), "red")
    judge = SlowJudge(images=True)
    PerceptionReward(judge)(make_rollouts(["a", "b", "c", "d"], [["f"], ["g"]], images=[[image], []]))
    first = judge.seen_images[0]
    assert len(judge.seen_images) == 4 and judge.seen_images[1] is first, "encoded once per prompt"
    assert Image.open(io.BytesIO(first[0])).size == (8, 8) and judge.seen_images[2] == ()
    text_only = SlowJudge()
    PerceptionReward(text_only)(make_rollouts(["a"], [["f"]], images=[[image]]))
    assert text_only.seen_images == [()]


def rewards_of(config: Path) -> list[Reward]:
    """Instantiate model.rewards of a config the way LightningCLI does (class_path + init_args)."""
    parser = ArgumentParser()
    parser.add_argument("--rewards", type=list[Reward])
    raw = yaml.safe_load(config.read_text())["model"]["rewards"]
    return parser.instantiate(parser.parse_object({"rewards": raw})).rewards


def test_demo_config_has_the_perception_reward_with_the_rule_based_judge():
    rewards = rewards_of(REPO_ROOT / "configs" / "demo.yaml")
    [visual] = [r for r in rewards if isinstance(r, PerceptionReward)]
    assert isinstance(visual.judge, RuleJudge) and visual.weight == 0.5


@pytest.mark.parametrize("config, judge_type", [
    ("qwen2_5_32b_vllm.yaml", OpenAIJudge), ("openai_local.yaml", OpenAIJudge), ("smollm2_local.yaml", LocalJudge),
])
def test_judge_configs_build_without_connecting_or_loading(config, judge_type):
    [visual] = [r for r in rewards_of(REPO_ROOT / "configs" / "judges" / config) if isinstance(r, PerceptionReward)]
    assert type(visual.judge) is judge_type
    assert visual.judge._client is None if judge_type is OpenAIJudge else visual.judge._model is None


# ---------------------------------------------------------------------------------------------- issue 12: the judge
def test_by_default_a_failed_request_abstains_and_masks_the_completion():
    judge = SlowJudge(reply=lambda r: JudgeReply(failure="timeout", error="slow") if r.response == "bad" else "<verdict1>1</verdict1>")
    rewards = [PerceptionReward(judge, weight=1.0), FunctionReward(lambda c, r: [1.0] * len(c), name="one")]
    breakdown = score_all(rewards, make_rollouts(["bad", "good"], [["fact"]]))
    assert math.isnan(breakdown.outputs["visual"].scores[0]) and math.isnan(breakdown.total[0])
    assert breakdown.total[1] == 2.0


def test_a_judge_that_ignores_the_format_is_counted_not_a_zero():
    """The review's case: a judge answering "present" in words gave r_vis = 0 with zero logged failures."""
    judge = SlowJudge(reply=lambda r: "<verdict1>present</verdict1><verdict2>present</verdict2>")
    output = PerceptionReward(judge)(make_rollouts(["a", "b"], [FACTS]))
    assert torch.isnan(output.scores).all()
    logged = output.log("visual")
    assert logged["visual/abstained"] == 2 and logged["visual/judge/failures/unparsable"] == 2
    assert logged["visual/judge/items/unparsable"] == 4 and logged["visual/judge/items/answered"] == 0


def test_item_outcomes_are_logged_with_the_reward():
    judge = SlowJudge(reply=lambda r: "<verdict1>1</verdict1>")  # skips the second item
    logged = PerceptionReward(judge)(make_rollouts(["a"], [FACTS])).log("visual")
    assert (logged["visual/judge/items/answered"], logged["visual/judge/items/missing"]) == (1, 1)
    assert logged["visual/mean"] == 0.5
