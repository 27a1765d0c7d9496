"""GRPO maths as pure tensor functions (no Lightning, no model).

Shapes: N = prompts x G completions, flattened so that each group of G is contiguous; L = completion
length. Every function is covered by tests with hand-worked numbers (tests/test_grpo.py).
"""

from __future__ import annotations

from typing import Literal

import torch

LossAggregation = Literal["token_mean", "seq_mean_token_mean", "constant"]
KLEstimator = Literal["k1", "k3"]


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """(r - group mean) / (unbiased group std + eps); 0 for uniform groups and for NaN (abstained) rewards.

    NaN rewards are left out of their group's statistics. With `scale_by_std=False` only the mean is
    subtracted (Dr. GRPO).
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} items, got {tuple(rewards.shape)}")
    r = rewards.view(-1, group_size).double()  # [P, G]
    valid = ~torch.isnan(r)  # [P, G]
    count = valid.sum(-1, keepdim=True)  # [P, 1]
    r0 = torch.where(valid, r, torch.zeros_like(r))  # [P, G]
    mean = r0.sum(-1, keepdim=True) / count.clamp(min=1)  # [P, 1]
    centred = torch.where(valid, r - mean, torch.zeros_like(r))  # [P, G]
    adv = centred
    if scale_by_std:
        var = (centred**2).sum(-1, keepdim=True) / (count - 1).clamp(min=1)  # [P, 1] unbiased
        adv = centred / (var.sqrt() + eps)  # [P, G]
    # A group whose valid rewards are all equal carries no signal; avoid float residue like 1e-17/eps.
    high = torch.where(valid, r, torch.full_like(r, -torch.inf)).amax(-1, keepdim=True)
    low = torch.where(valid, r, torch.full_like(r, torch.inf)).amin(-1, keepdim=True)
    adv = torch.where((high == low) | ~valid, torch.zeros_like(adv), adv)
    return adv.view(-1).to(rewards.dtype if rewards.is_floating_point() else torch.float32)  # [N]


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss with asymmetric clip range and optional dual-clip.

    Returns (loss [N, L], clipped [N, L] bool: tokens whose gradient the clipping removed).
    Dual-clip (c > 1) bounds the loss of negative-advantage tokens at -A * c.
    """
    adv = advantages.unsqueeze(-1)  # [N, 1]
    ratio = torch.exp(logp - old_logp)  # [N, L]
    unclipped = -adv * ratio  # [N, L]
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)  # [N, L]
    loss = torch.maximum(unclipped, clipped)  # [N, L]
    was_clipped = clipped > unclipped  # [N, L]
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        bound = -adv * dual_clip  # [N, 1]
        dual = (adv < 0) & (loss > bound)  # [N, L]
        loss = torch.where(dual, bound.expand_as(loss), loss)  # [N, L]
        was_clipped = was_clipped | dual
    return loss, was_clipped


def aggregate_loss(
    per_token: torch.Tensor, mask: torch.Tensor, mode: LossAggregation = "token_mean", constant: int | None = None
) -> torch.Tensor:
    """Reduce a [N, L] per-token loss over the masked tokens to a scalar.

    - token_mean: sum / number of tokens (DAPO; the paper's released code).
    - seq_mean_token_mean: mean over sequences of each sequence's token mean (original GRPO).
    - constant: sum / (N * constant), Dr. GRPO's length-unbiased normaliser (constant = max new tokens).
    """
    mask = mask.to(per_token.dtype)
    if mode == "token_mean":
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    if mode == "seq_mean_token_mean":
        seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # [N]
        return seq.mean()
    if mode == "constant":
        if not constant:
            raise ValueError("loss aggregation 'constant' needs a positive normaliser (max new tokens)")
        return (per_token * mask).sum() / (per_token.shape[0] * constant)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose token_mean, seq_mean_token_mean or constant")


def kl_divergence(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k3") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens' log-probs ([N, L]).

    k1 = log p - log q (unbiased, high variance, can be negative);
    k3 = q/p - log(q/p) - 1 (unbiased, non-negative; Schulman's estimator used by GRPO).
    """
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        log_ratio = ref_logp - logp
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}; choose k1 or k3")


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] for each position ([N, L, V], [N, L] -> [N, L]), without a full log_softmax copy."""
    logits = logits.float()
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [N, L]
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position ([N, L, V] -> [N, L])."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    # Suppressed tokens have -inf logits; their 0 * -inf terms contribute 0, not NaN.
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)
