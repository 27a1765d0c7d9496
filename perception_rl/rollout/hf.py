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
    """

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
        with generation_mode(model), torch.no_grad():
            sequences = model.generate(
                **{k: v.to(device) for k, v in inputs.items()}, generation_config=config, synced_gpus=synced_devices
            )
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
