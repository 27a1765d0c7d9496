"""`Rollouts`: everything one generation round produced, in one typed object that rewards consume."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from perception_rl.data.datamodule import Sample
from perception_rl.data.records import Record


@dataclass
class Rollouts:
    """P prompts x G completions. Completion i belongs to prompt `group_ids[i]`; groups are contiguous.

    Attributes:
        samples: the P prompts (record, images, messages).
        prompts: the P rendered prompt strings (chat template applied).
        prompt_inputs: the processor's tensors for the P prompts, left padded ([P, Lp] ids and masks,
            plus `pixel_values` / `image_grid_thw` for multimodal policies). `perception_rl.families` turns
            them, with the completions, into a model's inputs.
        completion_ids: [N, L] sampled tokens, padded after the end of each completion.
        completion_mask: [N, L] 1 up to and including the first end-of-sequence token.
        completions: N decoded completion texts (special tokens removed).
        group_ids: [N] index of each completion's prompt.
        group_size: G.
        truncated: [N] True where the completion hit the token limit without ending.
        logprobs: [N, L] per-token log-probs reported by the engine, when it reports them.
    """

    samples: list[Sample]
    prompts: list[str]
    prompt_inputs: dict[str, torch.Tensor]
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    completions: list[str]
    group_ids: torch.Tensor
    group_size: int
    truncated: torch.Tensor
    logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.completions)

    @property
    def records(self) -> list[Record]:
        return [s.record for s in self.samples]

    def record_of(self, i: int) -> Record:
        return self.samples[int(self.group_ids[i])].record

    def images_of(self, i: int) -> list[Image.Image]:
        return self.samples[int(self.group_ids[i])].images

    def select(self, indices: list[int]) -> Rollouts:
        """The completions at `indices` with their prompts, for scoring only (no model inputs kept)."""
        prompt_rows = sorted({int(self.group_ids[i]) for i in indices})
        position = {row: k for k, row in enumerate(prompt_rows)}
        index = torch.tensor(indices, dtype=torch.long)
        return Rollouts(
            samples=[self.samples[row] for row in prompt_rows],
            prompts=[self.prompts[row] for row in prompt_rows],
            prompt_inputs={},
            completion_ids=self.completion_ids[index],
            completion_mask=self.completion_mask[index],
            completions=[self.completions[i] for i in indices],
            group_ids=torch.tensor([position[int(self.group_ids[i])] for i in indices]),
            group_size=self.group_size,
            truncated=self.truncated[index],
            logprobs=None if self.logprobs is None else self.logprobs[index],
        )

    def longest_completion(self, indices: torch.Tensor) -> int:
        """Tokens of the longest completion at `indices` (at least 1): the rest of each row is padding."""
        return max(int(self.completion_mask[indices].sum(-1).max()), 1) if len(indices) else 1
