"""What differs between model families, behind one small interface (`ModelFamily`): which tensors a prompt
brings besides its tokens (images, token types) and how positions continue after a prompt (for the shared
prefix). `Rollouts` stays a record; a new family is one file here and a line in `family_of`."""

from __future__ import annotations

import torch

from perception_rl.families.base import ModelFamily
from perception_rl.families.qwen_vl import QwenVL, rope_index_owner

__all__ = ["ModelFamily", "QwenVL", "family_of", "rope_index_owner"]


def family_of(model: torch.nn.Module) -> ModelFamily:
    """Qwen2-VL / Qwen2.5-VL (M-RoPE) where the model has their `get_rope_index`, else a plain causal LM.

    Another model with a `get_rope_index` (a later Qwen-VL, say) gets the same inputs, but its positions are
    not assumed to continue the same way: the shared prefix is then off for it (`continues_positions`).
    """
    owner = rope_index_owner(model)
    if owner is not None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        return QwenVL(owner, continues_positions=model_type in QwenVL.MODEL_TYPES)
    if getattr(getattr(model, "config", None), "vision_config", None) is not None:
        raise NotImplementedError(
            f"{type(model).__name__}: no model family for this vision-language model; add one under "
            "perception_rl/families/ (see QwenVL)"
        )
    return ModelFamily()
