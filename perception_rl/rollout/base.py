"""The rollout engine interface and the prompt encoding every engine shares."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from perception_rl.data.datamodule import Sample
from perception_rl.policy import VISION_SPECIAL_TOKENS, tokenizer_of
from perception_rl.rollout.types import Rollouts


class RolloutEngine(ABC):
    """Samples `num_generations` completions per prompt from the current policy.

    Args:
        num_generations: G, completions per prompt (the GRPO group size).
        max_new_tokens: completion length limit.
        temperature: sampling temperature (1.0 in the paper).
        top_p: nucleus sampling mass; 1.0 disables it.
        top_k: keep the k most likely tokens; 0 disables it.
        max_prompt_length: prompts longer than this (in tokens, image tokens included) are an error.
    """

    def __init__(
        self,
        num_generations: int = 8,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_prompt_length: int | None = None,
    ):
        if num_generations < 1 or max_new_tokens < 1:
            raise ValueError(f"rollout: num_generations and max_new_tokens must be >= 1, got {num_generations}, {max_new_tokens}")
        if temperature <= 0 or not 0 < top_p <= 1 or top_k < 0:
            raise ValueError(f"rollout: need temperature > 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}")
        self.num_generations = num_generations
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_prompt_length = max_prompt_length

    # Engines whose log-probs may differ from the trainer's (vLLM) can correct for it; see VLLMEngine.
    importance_sampling_cap: float | None = None
    # Whether `generate` runs the policy's own forward (so sharded weights must be gathered around it);
    # an engine with its own copy of the weights (vLLM) only reads them when it syncs.
    decodes_with_policy: bool = True

    def on_weights_updated(self) -> None:
        """Called after every optimizer step; engines holding their own copy of the weights resync."""

    def pop_sync_stats(self) -> dict[str, float]:
        """Figures of the weight push made since the last call (`sync_s`, `bytes`), for logging; {} if none."""
        return {}

    def state_dict(self) -> dict:
        """State to carry across a resume (e.g. a seed counter); saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""

    @abstractmethod
    def generate(
        self, model: torch.nn.Module, processor, samples: list[Sample], greedy: bool = False, synced_devices: bool = False
    ) -> Rollouts:
        """G sampled completions per sample (one greedy completion each when `greedy`).

        `synced_devices` keeps every rank stepping until all ranks finish (needed when parameters are
        sharded, since each forward then gathers from all ranks).
        """


def is_multimodal(processor) -> bool:
    return getattr(processor, "image_processor", None) is not None


def render_prompts(processor, samples: list[Sample]) -> list[str]:
    """Apply the chat template (with a generation prompt) to each sample's messages."""
    multimodal = is_multimodal(processor)
    texts = []
    for sample in samples:
        messages = sample.messages
        if not multimodal:
            if sample.images:
                raise ValueError(f"{sample.record.source}: record has images but the policy's processor handles text only")
            messages = [{**m, "content": _text_of(m["content"])} for m in messages]
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return texts


def _text_of(content) -> str:
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content if p.get("type") == "text")


def encode_prompts(processor, samples: list[Sample], max_prompt_length: int | None = None) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Rendered prompts and the processor's left-padded tensors for them."""
    texts = render_prompts(processor, samples)
    images = [image for sample in samples for image in sample.images]
    if images:
        inputs = processor(text=texts, images=images, padding=True, return_tensors="pt")
    else:
        inputs = tokenizer_of(processor)(texts, padding=True, return_tensors="pt")
    inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    if max_prompt_length is not None:
        lengths = inputs["attention_mask"].sum(-1)
        for sample, length in zip(samples, lengths.tolist()):
            if length > max_prompt_length:
                raise ValueError(
                    f"{sample.record.source}: prompt is {length} tokens (images included), over "
                    f"rollout.max_prompt_length={max_prompt_length}; raise the limit or lower data.max_pixels"
                )
    return texts, inputs


def stop_token_ids(model: torch.nn.Module, processor) -> list[int]:
    """Every token that ends a completion: the tokenizer's eos plus the model's generation eos ids."""
    ids = {tokenizer_of(processor).eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def suppressed_token_ids(processor) -> list[int]:
    """Vision placeholder tokens a completion must not contain (they would demand image features)."""
    tokenizer = tokenizer_of(processor)
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in VISION_SPECIAL_TOKENS if t in vocab]


def completion_mask(completion_ids: torch.Tensor, stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask [N, L] keeping tokens up to and including the first stop token, and truncated flags [N]."""
    is_stop = torch.isin(completion_ids, torch.tensor(stop_ids, device=completion_ids.device))  # [N, L]
    stops_before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()  # [N, L] stops strictly before
    mask = (stops_before == 0).long()  # [N, L]
    return mask, ~is_stop.any(dim=1)
