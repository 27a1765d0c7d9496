"""GRPO maths as pure tensor functions (no Lightning, no model).

Shapes: N = prompts x G completions, flattened so that each group of G is contiguous; L = completion
length. Every function is covered by tests with hand-worked numbers (tests/test_grpo.py).

The loss has one definition (`grpo_loss`) and one normaliser (`loss_normaliser`): the trainer counts the
normaliser over a whole mini-batch on every rank, so micro-batches and ranks only add their contributions
and the gradient does not depend on how the mini-batch is cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


def loss_normaliser(mask: torch.Tensor, mode: LossAggregation, max_new_tokens: int | None = None) -> torch.Tensor:
    """This batch's share of the loss normaliser: sum it over micro-batches and ranks, then pass it to `grpo_loss`.

    `mask` is the completion mask with abstained rows zeroed; a row with no unmasked token is not a sequence.

    - token_mean: valid tokens (DAPO; the paper's released code).
    - seq_mean_token_mean: valid sequences (original GRPO: each sequence's token mean, averaged).
    - constant: valid sequences x max new tokens (Dr. GRPO's length-unbiased normaliser).
    """
    mask = mask.float()  # [N, L]
    sequences = (mask.sum(-1) > 0).sum().float()  # []
    if mode == "token_mean":
        return mask.sum()
    if mode == "seq_mean_token_mean":
        return sequences
    if mode == "constant":
        if not max_new_tokens or max_new_tokens < 1:
            raise ValueError("loss aggregation 'constant' needs a positive normaliser (max new tokens)")
        return sequences * max_new_tokens
    raise ValueError(f"unknown loss aggregation {mode!r}; choose token_mean, seq_mean_token_mean or constant")


@dataclass
class LossOutput:
    """A batch's contribution to the GRPO loss and its statistics; contributions of micro-batches add up.

    Attributes:
        loss: scalar with gradient: this batch's weighted token losses / the whole mini-batch's normaliser.
        sums: detached sums over this batch's valid tokens (`tokens` counts them), for logged means.
    Adding two outputs adds their (detached) contributions: a running total for logging, never backpropagated.
    """

    loss: torch.Tensor
    sums: dict[str, torch.Tensor] = field(default_factory=dict)

    def __add__(self, other: LossOutput) -> LossOutput:
        keys = self.sums.keys() | other.sums.keys()
        zero = torch.zeros((), dtype=torch.float64)
        sums = {k: self.sums.get(k, zero) + other.sums.get(k, zero) for k in keys}
        return LossOutput(self.loss.detach() + other.loss.detach(), sums)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    normaliser: torch.Tensor | float,
    mode: LossAggregation = "token_mean",
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    importance_weights: torch.Tensor | None = None,
    rollout_logp: torch.Tensor | None = None,
) -> LossOutput:
    """The GRPO objective of one (micro-)batch: clipped surrogate (x truncated IS weights) + KL - entropy bonus.

    `mask` [N, L] is the completion mask with abstained rows zeroed; `normaliser` is `loss_normaliser` summed
    over the whole mini-batch on every rank, so micro-batches and ranks add their contributions without
    reweighting. seq_mean_token_mean weighs each token by 1 / its sequence's length. `entropy` [N, L] must
    carry a gradient when `entropy_coef > 0`; it is subtracted, so minimising raises the entropy.
    `rollout_logp` (the sampling engine's own log-probs) only feeds a statistic: its distance to `old_logp`.
    """
    mask = mask.to(logp.dtype)  # [N, L]
    per_token, clipped = clipped_surrogate(logp, old_logp, advantages, clip_low, clip_high, dual_clip)  # [N, L]
    if importance_weights is not None:
        per_token = per_token * importance_weights.detach()  # [N, L]
    sums = {
        "tokens": mask.sum(),
        "clip_fraction": (clipped.to(mask.dtype) * mask).sum(),
        # How far the policy has moved from the one that sampled (0 on the on-policy first update).
        "approx_kl_to_rollout": (kl_divergence(logp.detach(), old_logp, "k3") * mask).sum(),
    }
    if importance_weights is not None:
        sums["importance_weight"] = (importance_weights * mask).sum()
    if rollout_logp is not None:  # engine vs trainer: 0 when the engine holds the trainer's weights
        sums["rollout_logprob_abs_diff"] = ((old_logp - rollout_logp).abs() * mask).sum()
    if ref_logp is not None:
        kl = kl_divergence(logp, ref_logp, kl_estimator)  # [N, L]
        per_token = per_token + kl_coef * kl
        sums["kl"] = (kl.detach() * mask).sum()
    if entropy is not None:
        if entropy_coef:
            per_token = per_token - entropy_coef * entropy
        sums["entropy"] = (entropy.detach() * mask).sum()
    weights = mask
    if mode == "seq_mean_token_mean":
        weights = mask / mask.sum(-1, keepdim=True).clamp(min=1.0)  # [N, L]
    elif mode not in ("token_mean", "constant"):
        raise ValueError(f"unknown loss aggregation {mode!r}; choose token_mean, seq_mean_token_mean or constant")
    normaliser = torch.as_tensor(normaliser, dtype=per_token.dtype, device=per_token.device).clamp(min=1.0)
    # where, not a product: a -inf at a masked position (e.g. a suppressed token) must not make the sum NaN
    loss = torch.where(weights > 0, per_token * weights, torch.zeros_like(per_token)).sum() / normaliser
    # kept on the device: the trainer moves them to the CPU once per step, not once per micro-batch
    return LossOutput(loss, {k: v.detach().double() for k, v in sums.items()})


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
    """Entropy of the next-token distribution at each position ([N, L, V] -> [N, L]), differentiable."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    # Suppressed tokens have -inf logits; their 0 * -inf terms contribute 0, not NaN.
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)


@torch.no_grad()
def entropy_for_logging(logits: torch.Tensor, rows_per_chunk: int = 1024) -> torch.Tensor:
    """`entropy_from_logits` without gradient, a chunk of positions at a time: no full-vocab fp32 copy."""
    flat = logits.reshape(-1, logits.shape[-1])  # [N*L, V]
    if not len(flat):
        return flat.new_zeros(logits.shape[:-1]).float()
    out = torch.cat([entropy_from_logits(chunk) for chunk in flat.split(rows_per_chunk)])  # [N*L]
    return out.view(logits.shape[:-1]).float()  # [N, L]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)
