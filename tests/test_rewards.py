"""Tests of the rule-based rewards and the Reward extension point (perception_rl/rewards/)."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from perception_rl.data.datamodule import Sample
from perception_rl.data.records import Record
from perception_rl.rewards import (
    AccuracyReward,
    FormatReward,
    FunctionReward,
    RepetitionPenalty,
    Reward,
    RewardOutput,
    score_all,
)
from perception_rl.rewards.answers import extract_answer, is_correct
from perception_rl.rewards.format import follows_format
from perception_rl.rewards.repetition import repetition_penalty
from perception_rl.rollout.types import Rollouts

NAN = float("nan")


def make_record(id: str = "r0", answer: str = "3", choices: list[str] | None = None, **extra) -> Record:
    return Record(id=id, problem="How many?", answer=answer, images=[], choices=choices, extra=extra)


def make_rollouts(completions: list[str], records: list[Record]) -> Rollouts:
    """P = len(records) prompts, G = len(completions) / P completions each, groups contiguous."""
    group_size = len(completions) // len(records)
    assert group_size * len(records) == len(completions)
    n = len(completions)
    return Rollouts(
        samples=[Sample(record=r, images=[], messages=[]) for r in records],
        prompts=[r.problem for r in records],
        prompt_inputs={},
        completion_ids=torch.zeros(n, 1, dtype=torch.long),
        completion_mask=torch.ones(n, 1, dtype=torch.long),
        completions=completions,
        group_ids=torch.arange(len(records)).repeat_interleave(group_size),
        group_size=group_size,
        truncated=torch.zeros(n, dtype=torch.bool),
    )


# ---------------------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>\nadd\n</think>\n<answer>\nSo it is \\boxed{12}.\n</answer>", "12"),
        ("<answer>\\boxed{\\frac{1}{2}}</answer>", "\\frac{1}{2}"),  # nested braces kept whole
        ("<answer>\\boxed{{a}+{b}}</answer>", "{a}+{b}"),
        ("<answer>\\boxed{1}, no wait: \\boxed{2}</answer>", "2"),  # the last box in the block
        ("<think>\\boxed{7}</think><answer>\\boxed{8}</answer>\\boxed{9}", "8"),  # the answer block wins
        ("<answer>\\boxed{1}</answer> then <answer>\\boxed{5}</answer>", "5"),  # the last block
        ("<answer>\n  42 \n</answer>", "42"),  # block without a box: its stripped text
        ("no tags, but the result is \\boxed{ 5 }.", "5"),  # box without tags
        ("\\fbox{3}", "3"),
        ("I think it is five.", None),  # commits to nothing
        ("<answer>   </answer>", None),  # empty block
        ("the answer is \\boxed{\\frac{1}{2}", None),  # cut off inside the box
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_extract_answer_unclosed_box_inside_answer_block_commits_to_nothing():
    # A box cut off inside the block is no committed answer, as outside a block (math-verify would read 4).
    assert extract_answer("<answer>\\boxed{4</answer>") is None


# ---------------------------------------------------------------------------------------------- correctness

CHOICES = ["30", "40", "60", "80"]


@pytest.mark.parametrize(
    "predicted, gold, choices, expected",
    [
        ("12", "12", None, True),
        ("12.0", "12", None, True),
        ("13", "12", None, False),
        ("0.5", "\\frac{1}{2}", None, True),
        ("\\frac{1}{2}", "0.5", None, True),
        ("\\frac{1}{3}", "0.5", None, False),
        ("30^\\circ", "30", None, True),
        ("$5$", "5", None, True),
        ("\\text{Oct}", "Oct", None, True),
        (None, "12", None, False),
        ("   ", "12", None, False),
        # gold is a letter
        ("(D)", "D", CHOICES, True),
        ("D", "D", CHOICES, True),
        ("D.", "D", CHOICES, True),
        ("\\text{D}", "D", CHOICES, True),
        ("80", "D", CHOICES, True),  # the option's text
        ("(B)", "D", CHOICES, False),
        ("40", "D", CHOICES, False),
        # gold is the option text
        ("(D)", "80", CHOICES, True),
        ("D", "80", CHOICES, True),
        ("80", "80", CHOICES, True),
        ("C", "80", CHOICES, False),
        ("60", "80", CHOICES, False),
    ],
)
def test_is_correct(predicted, gold, choices, expected):
    assert is_correct(predicted, gold, choices) is expected


def test_letter_beyond_the_options_is_not_a_letter():
    # With 2 options "C" names no option; it is compared as text with the gold option "Yes" and fails.
    assert is_correct("C", "A", ["Yes", "No"]) is False
    assert is_correct("Yes", "A", ["Yes", "No"]) is True


# ---------------------------------------------------------------------------------------------- format

GOOD = "<think>\nThe sides are 3 and 4.\nSo 3.\n</think>\n<answer>\nThe answer is \\boxed{3} units.\n</answer>"


@pytest.mark.parametrize(
    "response",
    [
        GOOD,
        GOOD + "\n",  # trailing whitespace is tolerated
        "<think>\nx\n</think>\n<answer>\n\\boxed{3}\n</answer>",  # box alone on its line
    ],
)
def test_format_accepts(response):
    assert follows_format(response)


@pytest.mark.parametrize(
    "response",
    [
        GOOD.replace("<think>\n", "<think>"),  # no newline after <think>
        GOOD.replace("\n</think>", "</think>"),  # no newline before </think>
        GOOD.replace("</think>\n<answer>", "</think><answer>"),  # no newline between the blocks
        GOOD.replace("</think>\n<answer>", "</think>\n\n<answer>"),  # two newlines between the blocks
        GOOD.replace("<answer>\n", "<answer>"),  # no newline after <answer>
        GOOD.replace("\n</answer>", "</answer>"),  # no newline before </answer>
        GOOD.replace("\\boxed{3}", "3"),  # no box
        "<think>\n\\boxed{3}\n</think>\n<answer>\n3\n</answer>",  # the box outside the answer block
        GOOD + "\nHope this helps.",  # text after </answer>
        "Sure. " + GOOD,  # text before <think>
        "<answer>\n\\boxed{3}\n</answer>",  # no think block
        "<think>\n<think>\nx\n</think>\n</think>\n<answer>\n\\boxed{3}\n</answer>",  # nested think
        "<think>\na\n</think>\n<think>\nb\n</think>\n<answer>\n\\boxed{3}\n</answer>",  # two think blocks
        GOOD + "\n<answer>\n\\boxed{4}\n</answer>",  # two answer blocks
        "<think>\nx\n</think>\n<answer>\n<answer>\n\\boxed{3}\n</answer>\n</answer>",  # nested answer
        "",
    ],
)
def test_format_rejects(response):
    assert not follows_format(response)


@pytest.mark.parametrize(
    "response",
    [
        "<think>\na\n</think>\n<answer>\n<think>\nb\n</think>\n\\boxed{3}\n</answer>",  # think inside answer
        "<think>\n<answer>\n\\boxed{1}\n</answer>\n</think>\n<answer>\n\\boxed{3}\n</answer>",  # answer inside think
    ],
)
def test_format_rejects_blocks_of_the_other_kind_nested(response):
    assert not follows_format(response)


def test_format_rejects_unclosed_box():
    assert not follows_format("<think>\nx\n</think>\n<answer>\n\\boxed{3\n</answer>")


def test_format_reward_scores():
    rollouts = make_rollouts([GOOD, GOOD.replace("\\boxed{3}", "3")], [make_record()])
    out = FormatReward()(rollouts)
    assert out.scores.tolist() == [1.0, 0.0]
    assert FormatReward().weight == 0.1 and FormatReward().name == "format"


# ---------------------------------------------------------------------------------------------- repetition

PHRASE = [f"w{i}" for i in range(20)]  # 20 distinct words


def test_repetition_short_texts_get_zero():
    assert repetition_penalty("a " * 19) == 0.0  # 19 words < 20
    assert repetition_penalty("") == 0.0
    assert repetition_penalty(" ".join(PHRASE)) == 0.0  # exactly 20 words: one 20-gram, unique


def test_repetition_phrase_repeated_twice():
    # 40 words = PHRASE + PHRASE. 20-grams start at 0..20: 40 - 20 + 1 = 21 of them.
    # The text has period 20, so the gram at 20 equals the gram at 0; grams 0..19 are the 20 rotations
    # of PHRASE, all distinct -> unique = 20. Penalty = -2 * (1 - 20/21) = -2/21 = -0.095238...
    text = " ".join(PHRASE * 2)
    assert repetition_penalty(text) == pytest.approx(-2.0 / 21.0)


def test_repetition_phrase_repeated_three_times_and_whitespace():
    # 60 words: 41 grams, still 20 unique -> -2 * (1 - 20/41) = -42/41 = -1.02439...
    text = "\n".join(" ".join(PHRASE) for _ in range(3)).replace("w5", "w5\t")
    assert repetition_penalty(text) == pytest.approx(-42.0 / 41.0)


def test_repetition_is_case_insensitive_and_bounded():
    # 21 words "a ... a A" -> lower-cased all "a": 2 grams, 1 unique -> -2 * (1 - 1/2) = -1.0
    assert repetition_penalty("a " * 20 + "A") == pytest.approx(-1.0)
    # 1000 copies of one word: 981 grams, 1 unique -> -2 * 980/981, close to the -2 bound
    assert repetition_penalty("x " * 1000) == pytest.approx(-2.0 * 980 / 981)
    # custom n and max: 4 words "a b a b", n=2: grams ab ba ab -> 2/3 unique -> -1 * (1 - 2/3)
    assert repetition_penalty("a b a b", ngram_size=2, max_penalty=-1.0) == pytest.approx(-1.0 / 3.0)


def test_repetition_reward_class():
    text = " ".join(PHRASE * 2)
    out = RepetitionPenalty()(make_rollouts([text, "short answer"], [make_record()]))
    torch.testing.assert_close(out.scores, torch.tensor([-2.0 / 21.0, 0.0]))
    with pytest.raises(ValueError, match="ngram_size"):
        RepetitionPenalty(ngram_size=0)
    with pytest.raises(ValueError, match="max_penalty"):
        RepetitionPenalty(max_penalty=1.0)


# ---------------------------------------------------------------------------------------------- accuracy


def test_accuracy_reward():
    records = [make_record("a", "12"), make_record("b", "D", CHOICES)]
    completions = [
        "<think>\n..\n</think>\n<answer>\n\\boxed{12}\n</answer>",  # right
        "I do not know",  # no answer at all
        "<answer>\n(D)\n</answer>",  # right letter
        "<answer>\\boxed{B}</answer>",  # wrong letter
    ]
    out = AccuracyReward()(make_rollouts(completions, records))
    assert out.scores.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert out.counters == {"answered_fraction": 0.75}


# ---------------------------------------------------------------------------------------------- Reward / FunctionReward


def word_count_reward(completions: list[str], records: list[dict]) -> list[float | None]:
    """Module-level so FunctionReward can import it by path; None for completions of record 'skip'."""
    return [None if rec["id"] == "skip" else float(len(c.split())) for c, rec in zip(completions, records)]


def test_function_reward_from_import_path():
    reward = FunctionReward(f"{__name__}.word_count_reward", weight=0.5)
    assert reward.name == "word_count_reward"
    assert reward.weight == 0.5
    out = reward(make_rollouts(["one two", "one", "a b c", "x"], [make_record("keep"), make_record("skip")]))
    assert out.scores[:2].tolist() == [2.0, 1.0]
    assert torch.isnan(out.scores[2:]).all()  # None -> NaN (abstained)


def test_function_reward_from_callable_sees_record_dicts():
    seen = []

    def grader(completions, records):
        seen.extend(records)
        return [1 if c == r["answer"] else 0 for c, r in zip(completions, records)]

    reward = FunctionReward(grader, name="exact")
    out = reward(make_rollouts(["3", "4"], [make_record("r0", "3", source_url="http://x")]))
    assert reward.name == "exact"
    assert out.scores.tolist() == [1.0, 0.0]
    assert out.scores.dtype == torch.float32
    assert seen[0]["answer"] == "3" and seen[0]["id"] == "r0"
    assert seen[0]["source_url"] == "http://x"  # extra fields reach the function


def test_function_reward_default_name_is_function_name():
    def my_reward(completions, records):
        return [0.0] * len(completions)

    assert FunctionReward(my_reward).name == "my_reward"


def test_function_reward_wrong_count_raises():
    reward = FunctionReward(lambda completions, records: [1.0], name="short")
    with pytest.raises(ValueError, match="returned 1 scores for 2 completions"):
        reward(make_rollouts(["a", "b"], [make_record()]))


@pytest.mark.parametrize("path", ["nodots", "os.path.this_does_not_exist", "math.pi"])
def test_function_reward_bad_import_path_raises(path):
    with pytest.raises(ValueError, match="FunctionReward.function"):
        FunctionReward(path)


def test_reward_call_checks_score_shape():
    class Broken(Reward):
        default_name = "broken"

        def score(self, rollouts):
            return RewardOutput(torch.zeros(len(rollouts.completions), 1))

    with pytest.raises(ValueError, match="'broken' returned scores of shape"):
        Broken()(make_rollouts(["a", "b"], [make_record()]))


# ---------------------------------------------------------------------------------------------- output, weighting


def test_reward_output_log_keys_and_values():
    out = RewardOutput(
        scores=torch.tensor([1.0, NAN, 0.0]),
        sub_scores={"items": torch.tensor([1.0, 3.0, NAN])},
        counters={"failures": 2},
    )
    # mean over the two scored completions (1 + 0)/2; sub-score mean ignores NaN (1 + 3)/2
    assert out.log("reward/x") == {
        "reward/x/mean": 0.5,
        "reward/x/abstained": 1.0,
        "reward/x/items": 2.0,
        "reward/x/failures": 2.0,
    }
    plain = RewardOutput(torch.tensor([1.0, 0.0]))
    assert plain.log("p") == {"p/mean": 0.5}  # no 'abstained' key when nobody abstained
    assert math.isnan(RewardOutput(torch.tensor([NAN])).log("q")["q/mean"])


def constant_reward(value):
    return lambda completions, records: [value] * len(completions)


def test_score_all_weighted_sum_and_nan_propagation():
    records = [make_record("keep"), make_record("skip")]
    rollouts = make_rollouts(["one two three", "one", "a b", "c"], records)
    rewards = [
        FunctionReward(word_count_reward, weight=0.5),  # [3, 1, NaN, NaN]
        FunctionReward(constant_reward(1.0), weight=2.0, name="const"),  # [1, 1, 1, 1]
    ]
    breakdown = score_all(rewards, rollouts)
    # total = 0.5 * words + 2.0 * 1 -> [3.5, 2.5, NaN, NaN]
    assert breakdown.total[:2].tolist() == [3.5, 2.5]
    assert torch.isnan(breakdown.total[2:]).all()
    assert set(breakdown.outputs) == {"word_count_reward", "const"}
    logged = breakdown.log()
    assert logged["reward/total"] == pytest.approx(3.0)  # nan-mean of 3.5 and 2.5
    assert logged["reward/word_count_reward/mean"] == pytest.approx(2.0)
    assert logged["reward/word_count_reward/abstained"] == 2.0
    assert logged["reward/const/mean"] == pytest.approx(1.0)


def test_score_all_with_paper_rewards():
    # 0.9 * acc + 0.1 * fmt + 1.0 * rep for GOOD (answer 3, right format, short) -> 0.9 + 0.1 + 0 = 1.0
    # and for "\boxed{4}" (wrong, bad format) -> 0.0
    rollouts = make_rollouts([GOOD, "\\boxed{4}"], [make_record(answer="3")])
    breakdown = score_all([AccuracyReward(), FormatReward(), RepetitionPenalty()], rollouts)
    torch.testing.assert_close(breakdown.total, torch.tensor([1.0, 0.0]))


def test_score_all_duplicate_names_raise():
    rewards = [FunctionReward(constant_reward(1.0), name="same"), FunctionReward(constant_reward(0.0), name="same")]
    with pytest.raises(ValueError, match="unique"):
        score_all(rewards, make_rollouts(["a"], [make_record()]))
