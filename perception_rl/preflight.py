"""Pre-flight checks, run once before the first training step; each failure says what to change.

They catch the silent multimodal corruptions GRPO frameworks are known for: image placeholders that do
not match the image features, special-token ids that differ between processor and model, right padding
in generation, and a perception reward with nothing to judge.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn

from perception_rl.data.datamodule import Sample
from perception_rl.policy import tokenizer_of
from perception_rl.rewards.base import Reward
from perception_rl.rollout.base import encode_prompts, is_multimodal


class PreflightError(ValueError):
    """A set-up problem found before training; the message names the setting to change."""


def check_special_tokens(model: torch.nn.Module, processor) -> None:
    """The processor's image/video/vision tokens must have the ids the model was built with."""
    config = getattr(model, "config", None)
    tokenizer = tokenizer_of(processor)
    for key, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"),
    ):
        expected = getattr(config, key, None)
        if expected is None or token not in tokenizer.get_vocab():
            continue
        actual = tokenizer.convert_tokens_to_ids(token)
        if actual != expected:
            raise PreflightError(
                f"policy: the tokenizer maps {token} to id {actual} but the model's config has {key}={expected}; "
                "load the processor and the model from the same checkpoint (policy.model_path)"
            )


def check_padding_side(processor) -> None:
    side = tokenizer_of(processor).padding_side
    if side != "left":
        raise PreflightError(
            f"policy: the tokenizer pads on the {side}; batched generation needs left padding "
            "(set tokenizer.padding_side='left', which Policy.load_processor does)"
        )


def check_image_tokens(model: torch.nn.Module, processor, samples: list[Sample], max_prompt_length: int | None) -> None:
    """Each prompt holds exactly as many image placeholders as its images produce features."""
    if not is_multimodal(processor) or not any(s.images for s in samples):
        return
    _, inputs = encode_prompts(processor, samples, max_prompt_length)
    image_token = getattr(model.config, "image_token_id", None)
    # The model merges merge x merge patches into one feature; the processor must expand placeholders alike.
    vision = getattr(model.config, "vision_config", None)
    merge = getattr(vision, "spatial_merge_size", None) or getattr(processor.image_processor, "merge_size", 1)
    if image_token is None or "image_grid_thw" not in inputs:
        return
    features = (inputs["image_grid_thw"].prod(-1) // merge**2).tolist()
    start = 0
    for row, sample in enumerate(samples):
        expected = sum(features[start : start + len(sample.images)])
        start += len(sample.images)
        found = int((inputs["input_ids"][row] == image_token).sum())
        if found != expected:
            raise PreflightError(
                f"{sample.record.source}: the prompt holds {found} image placeholder tokens but its "
                f"{len(sample.images)} image(s) give {expected} features; the chat template and the image "
                "processor disagree (check the processor's chat template and merge_size)"
            )


def check_annotations(rewards: list[Reward], records: list) -> None:
    """With a perception reward, training records must carry annotations, or it only ever scores 0."""
    from perception_rl.rewards.perception import PerceptionReward

    perception = [r for r in rewards if isinstance(r, PerceptionReward) and r.weight]
    if not perception or not records:
        return
    annotated = sum(bool(r.annotations) for r in records)
    if annotated == 0:
        raise PreflightError(
            f"rewards: {perception[0].name!r} judges visual annotations, but none of the {len(records)} training "
            "records has `annotations`; add them (perception-rl annotate) or remove the reward"
        )
    if annotated < len(records):
        rank_zero_warn(
            f"rewards: {len(records) - annotated} of {len(records)} training records have no annotations; "
            f"{perception[0].name!r} scores them 0 and leaves them out of its logged mean"
        )


def run_preflight(model, processor, rewards: list[Reward], samples: list[Sample], records: list, max_prompt_length) -> None:
    check_padding_side(processor)
    check_special_tokens(model, processor)
    check_image_tokens(model, processor, samples, max_prompt_length)
    check_annotations(rewards, records)
