"""The trainer's forward with each prompt computed once per group ("shared prefix"), exact.

The G completions of a group repeat the same prompt, image tokens included. Instead of one forward over
prompt + completion per completion, `completion_logits` runs each distinct prompt once (vision tower and all
prompt positions) with a KV cache, indexes that cache out to its completions, and runs the completions
against it. Gradients reach the prompt positions from every completion through the cached keys and values,
so log-probs and gradients equal the per-completion forward (tests/test_shared_prefix.py, to ~1e-6 in fp32).

What differs between model families is only how positions continue after a prompt:
- Qwen2-VL / Qwen2.5-VL (3-D M-RoPE): the prompt's positions and per-row offset come from the model's own
  `get_rope_index`; a completion's k-th token sits at (valid prompt tokens + k + offset) on all three axes;
- plain causal LMs: the k-th completion token sits at valid prompt tokens + k.

Not used with gradient checkpointing (transformers turns the KV cache off then); see `supports_shared_prefix`.
"""

from __future__ import annotations

import torch

from perception_rl.rollout.types import Rollouts


def rope_index_owner(model: torch.nn.Module) -> torch.nn.Module | None:
    """The submodule with Qwen2-VL's `get_rope_index` (3-D positions), or None for a plain causal LM."""
    return next((m for m in model.modules() if hasattr(m, "get_rope_index")), None)


def supports_shared_prefix(model: torch.nn.Module) -> str | None:
    """None when `completion_logits` can run on `model`, else why not (one line, for the log)."""
    if getattr(model, "is_gradient_checkpointing", False):
        return "gradient checkpointing is on (transformers then disables the KV cache the shared prefix needs)"
    config = getattr(model, "config", None)
    if getattr(config, "vision_config", None) is not None and rope_index_owner(model) is None:
        return f"{type(model).__name__} is a vision-language model without Qwen2-VL-style get_rope_index"
    return None


def completion_logits(model: torch.nn.Module, rollouts: Rollouts, indices: torch.Tensor, length: int) -> torch.Tensor:
    """Logits [n, length, V] predicting each of the first `length` tokens of the completions at `indices`."""
    device = next(model.parameters()).device
    rows = rollouts.group_ids[indices]  # [n] prompt of each completion
    prompts, which = rows.unique(return_inverse=True)  # [u], [n]: each distinct prompt once
    inputs = {k: v.to(device) for k, v in prompt_inputs(rollouts, prompts).items()}
    positions, offsets = prompt_positions(model, inputs)  # [3, u, Lp] or [u, Lp]; [u]
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


def prompt_inputs(rollouts: Rollouts, prompts: torch.Tensor) -> dict[str, torch.Tensor]:
    """The processor's tensors for the prompts at `prompts` (rows of `rollouts.prompt_inputs`), images included."""
    source = rollouts.prompt_inputs
    inputs = {"input_ids": source["input_ids"][prompts], "attention_mask": source["attention_mask"][prompts]}
    if "mm_token_type_ids" in source:
        inputs["mm_token_type_ids"] = source["mm_token_type_ids"][prompts]
    if "pixel_values" in source:
        patches, grids = rollouts._image_chunks()
        inputs["pixel_values"] = torch.cat([patches[int(p)] for p in prompts])
        inputs["image_grid_thw"] = torch.cat([grids[int(p)] for p in prompts])
    return inputs


def prompt_positions(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids of the prompts ([3, u, Lp] for M-RoPE, else [u, Lp]) and the offset [u] that continues them."""
    mask = inputs["attention_mask"]
    owner = rope_index_owner(model)
    if owner is not None:
        positions, offsets = owner.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=inputs.get("mm_token_type_ids"),
            image_grid_thw=inputs.get("image_grid_thw"), attention_mask=mask,
        )
        return positions, offsets.view(-1)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding: the first real token is at 0
    return positions, torch.zeros(len(mask), dtype=torch.long, device=mask.device)
