"""The trainer's forward with each prompt computed once per group ("shared prefix"), exact.

The G completions of a group repeat the same prompt, image tokens included. Instead of one forward over
prompt + completion per completion, `completion_logits` runs each distinct prompt once (vision tower and all
prompt positions) with a KV cache, indexes that cache out to its completions, and runs the completions
against it. Gradients reach the prompt positions from every completion through the cached keys and values,
so log-probs and gradients equal the per-completion forward (tests/test_shared_prefix.py, to ~1e-6 in fp32).

How positions continue after a prompt is the model family's business (`perception_rl.families`: Qwen2-VL's
M-RoPE offsets from the model's own `get_rope_index`, or plain 1-D positions).

Not used with gradient checkpointing (transformers turns the KV cache off then); see `supports_shared_prefix`.
"""

from __future__ import annotations

import torch

from perception_rl.families import ModelFamily, QwenVL
from perception_rl.rollout.types import Rollouts


def supports_shared_prefix(model: torch.nn.Module, family: ModelFamily) -> str | None:
    """None when `completion_logits` can run on `model`, else why not (one line, for the log)."""
    if not family.continues_positions:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        return (f"how positions continue after a prompt is not known for model type {model_type!r} "
                f"(known: {', '.join(QwenVL.MODEL_TYPES)}; add its rule under perception_rl/families/)")
    if getattr(model, "is_gradient_checkpointing", False):
        return "gradient checkpointing is on (transformers then disables the KV cache the shared prefix needs)"
    if any(hasattr(m, "_checkpoint_wrapped_module") for m in model.modules()):
        # torch's activation checkpointing (e.g. a strategy's activation_checkpointing_policy) would replay
        # each layer's forward in backward and write into the shared KV cache a second time
        return "activation checkpointing wraps its layers (the recomputation would write into the shared KV cache again)"
    return None


def completion_logits(
    model: torch.nn.Module, family: ModelFamily, rollouts: Rollouts, indices: torch.Tensor, length: int
) -> torch.Tensor:
    """Logits [n, length, V] predicting each of the first `length` tokens of the completions at `indices`."""
    device = next(model.parameters()).device
    rows = rollouts.group_ids[indices]  # [n] prompt of each completion
    prompts, which = rows.unique(return_inverse=True)  # [u], [n]: each distinct prompt once
    inputs = {k: v.to(device) for k, v in family.prompt_inputs(rollouts, prompts).items()}
    positions, offsets = family.prompt_positions(model, inputs)  # [3, u, Lp] or [u, Lp]; [u]
    prefix = model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = prefix.past_key_values
    cache.reorder_cache(which.to(device))  # [u, ...] -> [n, ...]: each completion's prompt
    which = which.to(device)
    prompt_tokens = inputs["attention_mask"].sum(-1)[which]  # [n]
    steps = torch.arange(length, device=device)
    completion_positions = (prompt_tokens + offsets[which])[:, None] + steps[None]  # [n, length]
    if positions.ndim == 3:
        completion_positions = completion_positions[None].expand(positions.shape[0], -1, -1)  # [3, n, length]
    completion_ids = rollouts.completion_ids[indices, :length].to(device)  # [n, length]
    mask = torch.cat([inputs["attention_mask"][which], rollouts.completion_mask[indices, :length].to(device)], 1)
    rest = model(
        input_ids=completion_ids, attention_mask=mask.long(), position_ids=completion_positions,
        past_key_values=cache, use_cache=True, logits_to_keep=length,
    ).logits  # [n, length, V]: position t predicts token t + 1
    return torch.cat([prefix.logits[which], rest[:, :-1]], dim=1)  # the prompt's last position predicts token 0
