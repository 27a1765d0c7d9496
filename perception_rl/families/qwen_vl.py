"""Qwen2-VL / Qwen2.5-VL: images as flat patches with a grid per image, token types, 3-D (M-RoPE) positions."""

from __future__ import annotations

import torch

from perception_rl.families.base import Inputs, ModelFamily
from perception_rl.rollout.types import Rollouts


def rope_index_owner(model: torch.nn.Module) -> torch.nn.Module | None:
    """The submodule with Qwen2-VL's `get_rope_index` (3-D positions), or None."""
    return next((m for m in model.modules() if hasattr(m, "get_rope_index")), None)


class QwenVL(ModelFamily):
    """Qwen2-VL and Qwen2.5-VL.

    Args:
        rope_owner: the submodule holding `get_rope_index` and the `rope_deltas` that `generate` continues from.
        continues_positions: whether the model's positions after a prompt follow Qwen2-VL's rule (its model
            type is one of MODEL_TYPES); the shared prefix needs it.
    """

    MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")  # whose position rule `prompt_positions` implements

    def __init__(self, rope_owner: torch.nn.Module, continues_positions: bool = True):
        self.rope_owner = rope_owner
        self.continues_positions = continues_positions

    def prompt_inputs(self, rollouts: Rollouts, prompts: torch.Tensor) -> Inputs:
        inputs = super().prompt_inputs(rollouts, prompts)
        source = rollouts.prompt_inputs
        if "mm_token_type_ids" in source:  # marks image tokens for the 3-D positions
            inputs["mm_token_type_ids"] = source["mm_token_type_ids"][prompts]
        rows = [int(p) for p in prompts]
        if "pixel_values" in source and any(rollouts.samples[p].images for p in rows):  # none: no vision tower
            patches, grids = image_chunks(rollouts)
            inputs["pixel_values"] = torch.cat([patches[p] for p in rows])
            inputs["image_grid_thw"] = torch.cat([grids[p] for p in rows])
        return inputs

    def extend_over_completion(self, inputs: Inputs, completion_ids: torch.Tensor) -> Inputs:
        if "mm_token_type_ids" in inputs:  # completion tokens are text
            mm = inputs["mm_token_type_ids"]
            inputs["mm_token_type_ids"] = torch.cat([mm, torch.zeros_like(completion_ids, dtype=mm.dtype)], dim=1)
        return inputs

    def prompt_positions(self, model: torch.nn.Module, inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """[3, u, Lp] positions from the model's own `get_rope_index`; text after the prompt continues at
        T + k + offset on all three axes."""
        token_types = inputs.get("mm_token_type_ids")
        if token_types is None:  # a batch without images: the processor sends none, every token is text
            token_types = torch.zeros_like(inputs["input_ids"])
        positions, offsets = self.rope_owner.get_rope_index(
            inputs["input_ids"], mm_token_type_ids=token_types,
            image_grid_thw=inputs.get("image_grid_thw"), attention_mask=inputs["attention_mask"],
        )
        return positions, offsets.view(-1)

    def continue_generation(self, model: torch.nn.Module, offsets: torch.Tensor | None) -> None:
        # With a cache present, `generate` adds these offsets to its 1-D text positions; None clears them.
        self.rope_owner.rope_deltas = None if offsets is None else offsets.view(-1, 1)


def image_chunks(rollouts: Rollouts) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The flat image patches and grids of the P prompts, one chunk per prompt (empty for a prompt without)."""
    grids = rollouts.prompt_inputs["image_grid_thw"]  # [num_images, 3]
    image_patches = torch.split(rollouts.prompt_inputs["pixel_values"], grids.prod(-1).tolist())
    per_prompt_patches, per_prompt_grids, start = [], [], 0
    for sample in rollouts.samples:
        count = len(sample.images)
        per_prompt_patches.append(torch.cat(image_patches[start : start + count]) if count else image_patches[0][:0])
        per_prompt_grids.append(grids[start : start + count])
        start += count
    return per_prompt_patches, per_prompt_grids
