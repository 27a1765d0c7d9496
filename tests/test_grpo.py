"""Tests of the pure GRPO maths in perception_rl/grpo.py, against numbers worked out by hand."""

from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from perception_rl.grpo import (
    clipped_surrogate,
    entropy_for_logging,
    entropy_from_logits,
    grpo_loss,
    group_advantages,
    kl_divergence,
    loss_normaliser,
    masked_mean,
    token_logprobs,
)

EPS = 1e-6
NAN = float("nan")


def _logp_for_ratio(ratios: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp, old_logp) of shape [1, L] whose exp-difference is exactly `ratios`."""
    old = torch.zeros(1, len(ratios), dtype=torch.float64)
    return torch.log(torch.tensor([ratios], dtype=torch.float64)), old


# ---------------------------------------------------------------------------------------------- advantages


def test_group_advantages_hand_example():
    # Group 1: [1, 0, 0, 1] -> mean 0.5, deviations +-0.5, sum of squares 1.0,
    #          unbiased variance 1/(4-1) = 1/3, std = sqrt(1/3) = 0.57735...
    #          advantage = +-0.5 / (0.57735 + 1e-6) = +-0.866024...
    # Group 2: [2, 2, 2, 2] -> uniform, all advantages 0.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    a = 0.5 / (math.sqrt(1.0 / 3.0) + EPS)
    expected = torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    out = group_advantages(rewards, group_size=4)
    assert out.shape == (8,)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # The unbiased std matters: the biased one (0.5) would give +-1.0 instead of +-0.866.
    assert abs(out[0].item() - 0.866024) < 1e-5


def test_group_advantages_unequal_rewards_exact_values():
    # [0, 1, 2, 3]: mean 1.5, deviations -1.5 -0.5 0.5 1.5, sum sq 5, var 5/3, std 1.290994...
    rewards = torch.tensor([0.0, 1.0, 2.0, 3.0])
    std = math.sqrt(5.0 / 3.0)
    expected = torch.tensor([d / (std + EPS) for d in (-1.5, -0.5, 0.5, 1.5)])
    torch.testing.assert_close(group_advantages(rewards, 4), expected, rtol=0, atol=1e-6)


def test_group_advantages_uniform_groups_are_exactly_zero():
    # 0.1 * 3 style sums leave float residue; the uniform check must still give exact zeros.
    rewards = torch.tensor([0.3, 0.3, 0.3, -5.0, -5.0, -5.0])
    out = group_advantages(rewards, group_size=3)
    assert torch.equal(out, torch.zeros(6))


def test_group_advantages_nan_excluded_from_stats_and_zeroed():
    # Group [1, NaN, 0, 2]: valid rewards [1, 0, 2], mean 1, deviations 0 -1 1,
    # unbiased var (0 + 1 + 1) / (3 - 1) = 1, std 1 -> advantages 0, 0 (NaN), -1/(1+eps), 1/(1+eps).
    # Were the NaN counted as 0 the mean would be 0.75 and the advantage of "1" non-zero.
    # Group [NaN, 5, 5, NaN]: valid rewards uniform -> all 0. Group all NaN -> all 0.
    rewards = torch.tensor([1.0, NAN, 0.0, 2.0, NAN, 5.0, 5.0, NAN, NAN, NAN, NAN, NAN])
    out = group_advantages(rewards, group_size=4)
    d = 1.0 / (1.0 + EPS)
    expected = torch.tensor([0.0, 0.0, -d, d, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_group_advantages_single_valid_reward_gets_zero():
    out = group_advantages(torch.tensor([NAN, 3.0, NAN, NAN]), group_size=4)
    assert torch.equal(out, torch.zeros(4))


def test_group_advantages_without_std_scaling_only_centres():
    # [1, 0, 0, 1] -> mean 0.5 -> [0.5, -0.5, -0.5, 0.5]; [0, 1, 2, 3] -> mean 1.5 -> [-1.5, -0.5, 0.5, 1.5]
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 2.0, 3.0])
    out = group_advantages(rewards, group_size=4, scale_by_std=False)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, -1.5, -0.5, 0.5, 1.5])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)


def test_group_advantages_keeps_float_dtype_and_converts_int():
    assert group_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), 2).dtype == torch.float64
    out = group_advantages(torch.tensor([1, 0, 0, 1]), 2)
    assert out.dtype == torch.float32
    # groups [1, 0] and [0, 1]: mean 0.5, var (0.25 + 0.25) / 1 = 0.5, std 0.7071 -> +-0.5 / 0.7071 = +-0.7071
    a = 0.5 / (math.sqrt(0.5) + EPS)
    torch.testing.assert_close(out, torch.tensor([a, -a, -a, a]), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "rewards, group_size",
    [
        (torch.zeros(6), 4),  # not a multiple of the group size
        (torch.zeros(2, 4), 4),  # 2-D
        (torch.zeros(()), 1),  # 0-D
    ],
)
def test_group_advantages_bad_shape_raises(rewards, group_size):
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(rewards, group_size)


def test_group_advantages_zero_group_size_raises_value_error():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(4), 0)


# ---------------------------------------------------------------------------------------------- surrogate


def test_clipped_surrogate_positive_advantage_asymmetric_clip():
    # A = +2, clip range [0.8, 1.3]. loss = max(-A r, -A clip(r)).
    #   r = 1.1  -> inside: -2.2, not clipped
    #   r = 1.25 -> inside the high bound 1.3 (outside a symmetric 1.2): -2.5, not clipped
    #   r = 1.5  -> above 1.3: max(-3.0, -2.6) = -2.6, clipped (no gradient)
    #   r = 0.5  -> below 0.8: max(-1.0, -1.6) = -1.0, the unclipped term, not clipped
    logp, old = _logp_for_ratio([1.1, 1.25, 1.5, 0.5])
    loss, clipped = clipped_surrogate(logp, old, torch.tensor([2.0], dtype=torch.float64), clip_low=0.2, clip_high=0.3)
    torch.testing.assert_close(loss, torch.tensor([[-2.2, -2.5, -2.6, -1.0]], dtype=torch.float64))
    assert clipped.tolist() == [[False, False, True, False]]


def test_clipped_surrogate_negative_advantage_asymmetric_clip():
    # A = -2, clip range [0.8, 1.3]. -A r = 2 r.
    #   r = 0.9  -> inside: 1.8, not clipped
    #   r = 0.75 -> below 0.8: max(1.5, 1.6) = 1.6, clipped
    #   r = 0.5  -> max(1.0, 1.6) = 1.6, clipped
    #   r = 1.5  -> above 1.3: max(3.0, 2.6) = 3.0, the unclipped term, not clipped
    logp, old = _logp_for_ratio([0.9, 0.75, 0.5, 1.5])
    loss, clipped = clipped_surrogate(logp, old, torch.tensor([-2.0], dtype=torch.float64), clip_low=0.2, clip_high=0.3)
    torch.testing.assert_close(loss, torch.tensor([[1.8, 1.6, 1.6, 3.0]], dtype=torch.float64))
    assert clipped.tolist() == [[False, True, True, False]]


def test_clipped_surrogate_zero_advantage_is_zero_and_unclipped():
    logp, old = _logp_for_ratio([0.1, 1.0, 10.0])
    loss, clipped = clipped_surrogate(logp, old, torch.tensor([0.0], dtype=torch.float64), 0.2, 0.3, dual_clip=3.0)
    assert torch.equal(loss.abs(), torch.zeros(1, 3, dtype=torch.float64))
    assert not clipped.any()


def test_clipped_surrogate_dual_clip_caps_negative_advantage_loss():
    # A = -1, c = 3: the loss of a negative-advantage token is capped at -A * c = 3.
    #   r = 4.0 -> max(4.0, 1.3) = 4.0 > 3 -> 3.0, clipped
    #   r = 2.0 -> 2.0 <= 3 -> 2.0, not clipped
    #   r = 0.5 -> max(0.5, 0.8) = 0.8, clipped by the ordinary clip
    # Row 2, A = +1 with r = 4.0: dual clip does not apply -> max(-4.0, -1.3) = -1.3, clipped.
    logp = torch.log(torch.tensor([[4.0, 2.0, 0.5], [4.0, 1.0, 1.0]], dtype=torch.float64))
    old = torch.zeros(2, 3, dtype=torch.float64)
    adv = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    loss, clipped = clipped_surrogate(logp, old, adv, clip_low=0.2, clip_high=0.3, dual_clip=3.0)
    torch.testing.assert_close(loss, torch.tensor([[3.0, 2.0, 0.8], [-1.3, -1.0, -1.0]], dtype=torch.float64))
    assert clipped.tolist() == [[True, False, True], [True, False, False]]
    # Without dual clip the r = 4 negative-advantage token keeps its full loss 4.0.
    loss_plain, _ = clipped_surrogate(logp, old, adv, clip_low=0.2, clip_high=0.3)
    assert loss_plain[0, 0].item() == pytest.approx(4.0)


def test_clipped_surrogate_dual_clipped_token_has_no_gradient():
    logp = torch.log(torch.tensor([[4.0, 2.0]], dtype=torch.float64)).requires_grad_()
    loss, _ = clipped_surrogate(logp, torch.zeros(1, 2, dtype=torch.float64), torch.tensor([-1.0], dtype=torch.float64),
                                0.2, 0.3, dual_clip=3.0)
    loss.sum().backward()
    # token 0: constant 3.0 -> grad 0; token 1: loss = -A * exp(logp) -> grad = -A * r = 2.0
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 2.0]], dtype=torch.float64))


@pytest.mark.parametrize("dual_clip", [1.0, 0.5, -3.0])
def test_clipped_surrogate_dual_clip_must_exceed_one(dual_clip):
    logp, old = _logp_for_ratio([1.0])
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_surrogate(logp, old, torch.tensor([-1.0], dtype=torch.float64), dual_clip=dual_clip)


def test_token_mean_gradient_at_ratio_one_is_minus_advantage_over_tokens():
    # At ratio 1 nothing is clipped and loss = sum_t(-A_i * exp(logp - old)) / T, so
    # d loss / d logp[i, t] = -A_i / T for every unmasked token and 0 for masked ones.
    # mask has T = 5 tokens; A = [2, -1].
    logp = torch.tensor([[-0.5, -1.0, -2.0], [-0.3, -0.7, -0.1]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([2.0, -1.0], dtype=torch.float64)
    out = grpo_loss(logp, logp.detach(), adv, mask, loss_normaliser(mask, "token_mean"), "token_mean", 0.2, 0.3, 3.0)
    assert out.sums["clip_fraction"].item() == 0.0
    loss = out.loss
    # value: -(2 * 3 + (-1) * 2) / 5 = -4 / 5
    assert loss.item() == pytest.approx(-0.8)
    loss.backward()
    expected = torch.tensor([[-2 / 5, -2 / 5, -2 / 5], [1 / 5, 1 / 5, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected)


# ---------------------------------------------------------------------------------------------- the loss and its normaliser

# On-policy (ratio 1) every token's loss is -A of its sequence. Row 2 abstained: the trainer zeroes its mask.
ADV = torch.tensor([1.0, -4.0, 5.0], dtype=torch.float64)
LOSS_MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
ZERO_LOGP = torch.zeros(3, 3, dtype=torch.float64)


def loss_of(mode: str, mask=LOSS_MASK, rows=slice(None), normaliser=None, max_new_tokens=4, **kwargs):
    normaliser = loss_normaliser(LOSS_MASK, mode, max_new_tokens) if normaliser is None else normaliser
    logp = ZERO_LOGP[rows].clone().requires_grad_(True)
    out = grpo_loss(logp, ZERO_LOGP[rows], ADV[rows], mask[rows], normaliser, mode, **kwargs)
    return out, logp


@pytest.mark.parametrize(
    "mode, normaliser, loss",
    [
        # tokens -1, -1 | +4 -> sum 2 over 3 valid tokens
        ("token_mean", 3.0, 2 / 3),
        # sequence means -1 and +4 over 2 valid sequences (the abstained row is not a sequence)
        ("seq_mean_token_mean", 2.0, 1.5),
        # sum 2 over 2 valid sequences x 4 max new tokens
        ("constant", 8.0, 0.25),
    ],
)
def test_loss_hand_values_leave_abstained_rows_out(mode, normaliser, loss):
    assert loss_normaliser(LOSS_MASK, mode, max_new_tokens=4).item() == normaliser
    out, _ = loss_of(mode)
    assert out.loss.item() == pytest.approx(loss)
    assert out.sums["tokens"].item() == 3.0


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "constant"])
def test_abstained_row_changes_neither_loss_nor_gradient(mode):
    # The same two valid rows without the abstained one: identical loss and gradients.
    out, logp = loss_of(mode)
    out.loss.backward()
    mask2 = LOSS_MASK[:2]
    alone = grpo_loss(
        logp2 := ZERO_LOGP[:2].clone().requires_grad_(True), ZERO_LOGP[:2], ADV[:2], mask2,
        loss_normaliser(mask2, mode, 4), mode,
    )
    alone.loss.backward()
    assert out.loss.item() == pytest.approx(alone.loss.item())
    torch.testing.assert_close(logp.grad[:2], logp2.grad)
    assert not logp.grad[2].any()


def test_seq_mean_gradient_is_advantage_over_length_over_sequences():
    out, logp = loss_of("seq_mean_token_mean")
    out.loss.backward()
    # d/d logp[i, t] = -A_i / len_i / 2 sequences
    expected = torch.tensor([[-1 / 2 / 2, -1 / 2 / 2, 0.0], [4 / 1 / 2, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "constant"])
def test_micro_batch_contributions_add_up_to_the_whole(mode):
    whole, logp = loss_of(mode)
    whole.loss.backward()
    parts = [loss_of(mode, rows=rows) for rows in (slice(0, 1), slice(1, 2), slice(2, 3))]
    for part, _ in parts:
        part.loss.backward()
    total = parts[0][0] + parts[1][0] + parts[2][0]
    assert total.loss.item() == pytest.approx(whole.loss.item())
    assert total.sums["tokens"].item() == 3.0
    torch.testing.assert_close(torch.cat([p.grad for _, p in parts]), logp.grad)


def test_loss_statistics_are_sums_over_valid_tokens():
    ref = torch.full((3, 3), -1.0, dtype=torch.float64)  # k3 = e^-1 - (-1) - 1 = e^-1 per token
    entropy = torch.full((3, 3), 2.0, dtype=torch.float64)
    out, _ = loss_of("token_mean", ref_logp=ref, kl_coef=0.5, entropy=entropy, entropy_coef=0.1)
    assert out.sums["kl"].item() == pytest.approx(3 * math.exp(-1))
    assert out.sums["entropy"].item() == pytest.approx(6.0)
    assert out.sums["approx_kl_to_rollout"].item() == 0.0
    # (2 + 0.5 * 3 e^-1 - 0.1 * 3 * 2) / 3
    assert out.loss.item() == pytest.approx((2 + 1.5 * math.exp(-1) - 0.6) / 3)


def test_entropy_bonus_gradient_raises_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(2, 3, dtype=torch.float64)
    mask = torch.ones(2, 3)
    out = grpo_loss(zero, zero, torch.zeros(2, dtype=torch.float64), mask, 6.0,
                    entropy=entropy_from_logits(logits), entropy_coef=1.0)
    out.loss.backward()
    with torch.no_grad():
        stepped = logits - 0.5 * logits.grad
    assert entropy_from_logits(stepped).sum() > entropy_from_logits(logits).sum()


def test_loss_errors():
    with pytest.raises(ValueError, match="constant"):
        loss_normaliser(LOSS_MASK, "constant")
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        loss_normaliser(LOSS_MASK, "sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        loss_of("sum", normaliser=1.0)


def test_all_abstained_batch_has_zero_loss_not_nan():
    out, _ = loss_of("token_mean", mask=torch.zeros(3, 3, dtype=torch.long), normaliser=0.0)
    assert out.loss.item() == 0.0


# ---------------------------------------------------------------------------------------------- KL, log-probs, entropy


def test_kl_k1_and_k3_hand_values():
    # p = 0.5, q = 0.25: k1 = log(p/q) = log 2 = 0.693147; k3 = q/p - log(q/p) - 1 = 0.5 + 0.693147 - 1 = 0.193147
    # p = 0.25, q = 0.5: k1 = -0.693147 (negative); k3 = 2 - 0.693147 - 1 = 0.306853
    logp = torch.log(torch.tensor([[0.5, 0.25]], dtype=torch.float64))
    ref = torch.log(torch.tensor([[0.25, 0.5]], dtype=torch.float64))
    k1 = kl_divergence(logp, ref, "k1")
    torch.testing.assert_close(k1, torch.tensor([[0.693147, -0.693147]], dtype=torch.float64), rtol=0, atol=1e-6)
    k3 = kl_divergence(logp, ref, "k3")
    torch.testing.assert_close(k3, torch.tensor([[0.193147, 0.306853]], dtype=torch.float64), rtol=0, atol=1e-6)


def test_kl_k3_non_negative_and_zero_when_equal():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(4, 7, generator=g)
    ref = torch.randn(4, 7, generator=g)
    assert (kl_divergence(logp, ref, "k3") >= 0).all()
    assert torch.equal(kl_divergence(logp, logp, "k3"), torch.zeros(4, 7))
    assert torch.equal(kl_divergence(logp, logp, "k1"), torch.zeros(4, 7))
    with pytest.raises(ValueError, match="KL estimator"):
        kl_divergence(logp, ref, "k2")  # type: ignore[arg-type]


def test_token_logprobs_matches_log_softmax_gather():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 11, generator=g) * 5
    tokens = torch.randint(0, 11, (2, 3), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    out = token_logprobs(logits, tokens)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_token_logprobs_hand_value_and_bf16_upcast():
    # logits [0, log 3] -> softmax [1/4, 3/4]; token 1 -> log 0.75
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert token_logprobs(logits.bfloat16(), torch.tensor([[1]])).dtype == torch.float32


@pytest.mark.parametrize("vocab", [1, 2, 7, 151])
def test_entropy_of_uniform_is_log_vocab(vocab):
    logits = torch.full((2, 3, vocab), 4.2)
    torch.testing.assert_close(entropy_from_logits(logits), torch.full((2, 3), math.log(vocab)), rtol=0, atol=1e-5)


def test_entropy_of_one_hot_is_zero():
    logits = torch.tensor([[[100.0, 0.0, 0.0]]])
    assert entropy_from_logits(logits).item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_with_masked_logit_is_finite():
    # softmax of [0, 0, -inf] = [1/2, 1/2, 0] -> entropy log 2
    logits = torch.tensor([[[0.0, 0.0, -math.inf]]])
    assert entropy_from_logits(logits).item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_entropy_for_logging_equals_the_differentiable_one_without_grad():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    logged = entropy_for_logging(logits, rows_per_chunk=4)
    assert not logged.requires_grad
    torch.testing.assert_close(logged, entropy_from_logits(logits).detach())


def test_masked_mean():
    # (1 + 2 + 4) / 3; an all-zero mask gives 0, not NaN
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert masked_mean(values, torch.tensor([[1, 1, 0], [1, 0, 0]])).item() == pytest.approx(7 / 3)
    assert masked_mean(values, torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0
