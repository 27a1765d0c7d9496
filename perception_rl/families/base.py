"""`ModelFamily`: model inputs of a rollout and positions after a prompt, for a plain causal LM."""

from __future__ import annotations

import torch

from perception_rl.rollout.types import Rollouts

Inputs = dict[str, torch.Tensor]  # a model's keyword inputs


class ModelFamily:
    """A plain causal LM (token ids, attention mask, 1-D positions). Multimodal families extend the hooks."""

    continues_positions = True  # `prompt_positions` is known to be right for this family (shared prefix)

    def prompt_inputs(self, rollouts: Rollouts, prompts: torch.Tensor) -> Inputs:
        """The processor's tensors of the prompts at `prompts` (rows of `rollouts.prompt_inputs`, repeats allowed)."""
        source = rollouts.prompt_inputs
        return {"input_ids": source["input_ids"][prompts], "attention_mask": source["attention_mask"][prompts]}

    def sequence_inputs(self, rollouts: Rollouts, indices: torch.Tensor, length: int | None = None) -> Inputs:
        """Forward-pass inputs (prompt + completion) of the completions at `indices`.

        `length` keeps the first tokens of each completion only: trailing padding costs compute, and a causal
        model's earlier positions never see it.
        """
        inputs = self.prompt_inputs(rollouts, rollouts.group_ids[indices])
        completion_ids = rollouts.completion_ids[indices, :length]  # [n, l]
        completion_mask = rollouts.completion_mask[indices, :length].to(torch.long)  # [n, l]
        inputs["input_ids"] = torch.cat([inputs["input_ids"], completion_ids], dim=1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], completion_mask], dim=1)
        return self.extend_over_completion(inputs, completion_ids)

    def extend_over_completion(self, inputs: Inputs, completion_ids: torch.Tensor) -> Inputs:
        """Per-token inputs besides ids and mask, extended over the completion tokens (none here)."""
        return inputs

    def prompt_positions(self, model: torch.nn.Module, inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Position ids of the prompts and the offset [u] that continues them: completion token k of a prompt
        with T valid tokens sits at T + k + offset."""
        mask = inputs["attention_mask"]
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding: the first real token is at 0
        return positions, torch.zeros(len(mask), dtype=torch.long, device=mask.device)

    def continue_generation(self, model: torch.nn.Module, offsets: torch.Tensor | None) -> None:
        """Prepare `generate` to continue rows with these offsets from an existing cache, or (None) forget
        them again (nothing to do here)."""
