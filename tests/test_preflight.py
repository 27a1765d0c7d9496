"""Pre-flight checks and faults during training: each problem stops the run with a message saying what to change."""

from __future__ import annotations

import math

import pytest
import torch

from perception_rl import FunctionReward, PerceptionReward, Policy, RecordDataModule, RuleJudge
from perception_rl.preflight import PreflightError, check_annotations, check_image_tokens, check_padding_side, check_special_tokens
from perception_rl.rewards import RewardError
from test_rewards import make_record, make_rollouts


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, dots_dir):
    policy = Policy(str(tiny_model_dir), max_pixels=12544)
    data = RecordDataModule(str(dots_dir / "train.jsonl"), max_pixels=12544)
    data.setup("fit")
    samples = [data.datasets["train"][i] for i in range(3)]
    return policy.load_model(), policy.load_processor(), samples, data.datasets["train"].records


def test_consistent_setup_passes(loaded):
    model, processor, samples, records = loaded
    check_padding_side(processor)
    check_special_tokens(model, processor)
    check_image_tokens(model, processor, samples, None)
    check_annotations([PerceptionReward(RuleJudge())], records)


def test_special_token_id_mismatch(loaded):
    model, processor, _, _ = loaded
    original = model.config.image_token_id
    model.config.image_token_id = original + 1
    try:
        with pytest.raises(PreflightError, match=r"maps <\|image_pad\|> to id \d+ but the model's config has image_token_id="):
            check_special_tokens(model, processor)
    finally:
        model.config.image_token_id = original


def test_right_padding_is_refused(loaded):
    _, processor, _, _ = loaded
    processor.tokenizer.padding_side = "right"
    try:
        with pytest.raises(PreflightError, match="pads on the right; batched generation needs left padding"):
            check_padding_side(processor)
    finally:
        processor.tokenizer.padding_side = "left"


def test_placeholders_that_do_not_match_image_features(loaded):
    model, processor, samples, _ = loaded
    processor.image_processor.merge_size = 1  # the processor now expands 4x as many placeholders as the model fills
    try:
        with pytest.raises(PreflightError, match=r"train\.jsonl:1: the prompt holds \d+ image placeholder tokens but"):
            check_image_tokens(model, processor, samples, None)
    finally:
        processor.image_processor.merge_size = 2


def test_perception_reward_without_annotations(loaded):
    *_, records = loaded
    bare = [make_record() for _ in range(3)]
    with pytest.raises(PreflightError, match="none of the 3 training records has `annotations`"):
        check_annotations([PerceptionReward(RuleJudge())], bare)
    with pytest.warns(UserWarning, match="3 of 4 training records have no annotations"):
        check_annotations([PerceptionReward(RuleJudge())], [*bare, records[0]])
    check_annotations([PerceptionReward(RuleJudge(), weight=0.0)], bare)  # a weight-0 (logged only) reward is fine


def _fails_on_b(completions, records):
    return [1.0 if record["id"] != "b" else math.sqrt(-1) for record in records]


def _infinite(completions, records):
    return [math.inf for _ in completions]


def test_failing_custom_reward_names_itself_and_the_sample():
    rollouts = make_rollouts(["x", "y", "z", "w"], [make_record(id="a"), make_record(id="b")])
    with pytest.raises(ValueError, match="math domain error") as info:
        FunctionReward(_fails_on_b, name="mine")(rollouts)
    (note,) = info.value.__notes__
    assert note.startswith("raised by reward 'mine' on sample 'b'") and "completion 2" in note
    with pytest.raises(RewardError, match="reward 'inf' returned an infinite score for sample 'a'"):
        FunctionReward(_infinite, name="inf")(rollouts)
    assert torch.isnan(FunctionReward(lambda c, r: [None] * len(c))(rollouts).scores).all(), "None abstains"
