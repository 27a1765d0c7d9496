"""Rollouts with transformers' `generate` (the default engine; works on CPU and any single device)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import GenerationConfig

from perception_rl.data.datamodule import Sample
from perception_rl.policy import tokenizer_of
from perception_rl.rollout.base import (
    RolloutEngine,
    completion_mask,
    encode_prompts,
    stop_token_ids,
    suppressed_token_ids,
)
from perception_rl.rollout.types import Rollouts
from perception_rl.families import ModelFamily, family_of
from perception_rl.sharding import is_fsdp1


@contextmanager
def generation_mode(model: torch.nn.Module):
    """eval() while generating, so the KV cache is used even when gradient checkpointing is on.

    Exception: bitsandbytes 4-bit layers on CPU. In eval mode bnb 0.50 repacks their weights for CPU
    inference and never undoes it, which breaks the next training backward; they generate in train mode.
    """
    cpu_4bit = any(type(m).__name__ == "Linear4bit" for m in model.modules()) and next(model.parameters()).device.type == "cpu"
    was_training = model.training
    if not cpu_4bit:
        model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class HFGenerateEngine(RolloutEngine):
    """Samples with `model.generate` in the training process.

    Every sampling parameter is set explicitly, so a checkpoint's own generation_config (Qwen2.5-VL
    ships top_k=1, top_p=0.001 and a repetition penalty) never changes the GRPO sampling distribution.

    Args:
        num_generations: G, completions per prompt (the GRPO group size).
        max_new_tokens: completion length limit.
        temperature: sampling temperature (1.0 in the paper).
        top_p: nucleus sampling mass; 1.0 disables it.
        top_k: keep the k most likely tokens; 0 disables it.
        max_prompt_length: prompts longer than this (in tokens, image tokens included) are an error.
        shared_prefix: prefill each prompt (with its images) once and decode its G completions from copies of
            its KV cache, instead of `generate` repeating the prompt G times before prefill. Same distribution.
    """

    def __init__(
        self,
        num_generations: int = 8,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_prompt_length: int | None = None,
        shared_prefix: bool = True,
    ):
        super().__init__(num_generations, max_new_tokens, temperature, top_p, top_k, max_prompt_length)
        self.shared_prefix = shared_prefix

    def generate(
        self, model: torch.nn.Module, processor, samples: list[Sample], greedy: bool = False, synced_devices: bool = False
    ) -> Rollouts:
        device = next(model.parameters()).device
        prompts, inputs = encode_prompts(processor, samples, self.max_prompt_length)
        group_size = 1 if greedy else self.num_generations
        stop_ids = stop_token_ids(model, processor)
        pad_id = tokenizer_of(processor).pad_token_id
        config = GenerationConfig(
            do_sample=not greedy, temperature=None if greedy else self.temperature,
            top_p=None if greedy else self.top_p, top_k=None if greedy else self.top_k,
            max_new_tokens=self.max_new_tokens, num_return_sequences=group_size,
            eos_token_id=stop_ids, pad_token_id=pad_id, suppress_tokens=suppressed_token_ids(processor) or None,
            repetition_penalty=1.0,
        )
        inputs_on_device = {k: v.to(device) for k, v in inputs.items()}
        with generation_mode(model), torch.no_grad():
            family = family_of(model) if self.shared_prefix and group_size > 1 else None
            prefilled = _prefill(model, family, inputs_on_device, group_size) if family is not None else None
            if prefilled is not None:
                config.num_return_sequences = 1  # the prompts come already repeated, with their cache
                try:
                    sequences = model.generate(**prefilled, generation_config=config, synced_gpus=synced_devices)
                finally:  # no later forward may continue from this rollout's position offsets
                    family.continue_generation(model, None)
            else:
                sequences = model.generate(**inputs_on_device, generation_config=config, synced_gpus=synced_devices)
        completion_ids = sequences[:, inputs["input_ids"].shape[1] :].cpu()  # [N, L]
        mask, truncated = completion_mask(completion_ids, stop_ids)
        completion_ids = completion_ids.masked_fill(mask == 0, pad_id)
        texts = tokenizer_of(processor).batch_decode(completion_ids, skip_special_tokens=True)
        return Rollouts(
            samples=samples, prompts=prompts, prompt_inputs=inputs, completion_ids=completion_ids,
            completion_mask=mask, completions=texts,
            group_ids=torch.arange(len(samples)).repeat_interleave(group_size), group_size=group_size,
            truncated=truncated,
        )


def _prefill(
    model: torch.nn.Module, family: ModelFamily, inputs: dict[str, torch.Tensor], group_size: int
) -> dict | None:
    """`generate` arguments that continue from each prompt's KV cache, computed once and copied G times.

    All prompt tokens but the last go through the model (vision tower included) once per prompt; `generate`
    then starts at the last one for every copy, its positions continued by the model family. None where
    the model returns no cache (gradient checkpointing in train mode): plain `generate` then.
    """
    if inputs["input_ids"].shape[1] < 2 or not family.continues_positions:  # nothing to prefill / no rule
        return None
    positions, offsets = family.prompt_positions(model, inputs)
    head = {k: v[:, :-1] for k, v in inputs.items() if k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    images = {k: inputs[k] for k in ("pixel_values", "image_grid_thw") if k in inputs}
    # Under FSDP1 the wrapped module, as `generate` does: the root's parameters are already summoned around it.
    forward = model.module if is_fsdp1(model) else model
    out = forward(**head, **images, position_ids=positions[..., :-1], use_cache=True, logits_to_keep=1)
    if out.past_key_values is None:
        return None
    cache = out.past_key_values
    cache.batch_repeat_interleave(group_size)
    family.continue_generation(model, offsets.repeat_interleave(group_size, 0))
    return {
        "input_ids": inputs["input_ids"].repeat_interleave(group_size, 0),
        "attention_mask": inputs["attention_mask"].repeat_interleave(group_size, 0),
        "past_key_values": cache,
    }
