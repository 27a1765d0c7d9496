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
            plus `pixel_values` / `image_grid_thw` for multimodal policies).
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

    def model_inputs(self, indices: torch.Tensor, length: int | None = None) -> dict[str, torch.Tensor]:
        """Forward-pass inputs (prompt + completion) for the completions at `indices`.

        Each completion repeats its prompt's ids, mask and image patches; `mm_token_type_ids` is
        extended with zeros over the completion (it marks image tokens for Qwen2.5-VL's 3-D positions).
        `length` keeps the first tokens of each completion only: trailing padding costs compute, and a
        causal model's earlier positions never see it.
        """
        prompt_rows = self.group_ids[indices]  # [n]
        completion_ids = self.completion_ids[indices, :length]  # [n, l]
        completion_mask = self.completion_mask[indices, :length].to(torch.long)  # [n, l]
        inputs = {
            "input_ids": torch.cat([self.prompt_inputs["input_ids"][prompt_rows], completion_ids], dim=1),
            "attention_mask": torch.cat([self.prompt_inputs["attention_mask"][prompt_rows], completion_mask], dim=1),
        }
        if "mm_token_type_ids" in self.prompt_inputs:
            mm = self.prompt_inputs["mm_token_type_ids"][prompt_rows]
            inputs["mm_token_type_ids"] = torch.cat([mm, torch.zeros_like(completion_ids, dtype=mm.dtype)], dim=1)
        if "pixel_values" in self.prompt_inputs:
            patches, grids = self._image_chunks()
            rows = [int(p) for p in prompt_rows]
            inputs["pixel_values"] = torch.cat([patches[p] for p in rows])
            inputs["image_grid_thw"] = torch.cat([grids[p] for p in rows])
        return inputs

    def _image_chunks(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Split the flat image patches and grids of the P prompts into one chunk per prompt."""
        grids = self.prompt_inputs["image_grid_thw"]  # [num_images, 3]
        patches_per_image = grids.prod(-1).tolist()
        images_per_prompt = [len(s.images) for s in self.samples]
        image_patches = torch.split(self.prompt_inputs["pixel_values"], patches_per_image)
        per_prompt_patches, per_prompt_grids, start = [], [], 0
        for count in images_per_prompt:
            per_prompt_patches.append(torch.cat(image_patches[start : start + count]) if count else image_patches[0][:0])
            per_prompt_grids.append(grids[start : start + count])
            start += count
        return per_prompt_patches, per_prompt_grids
