"""The shared-prefix forward (each prompt once per group) equals the per-completion forward: log-probs and
gradients, fp32, with left-padded prompts of different lengths, several images per prompt, unequal
completion lengths and a micro-batch that holds only part of a group."""

from __future__ import annotations

import pytest
import torch

from perception_rl import HFGenerateEngine, Policy
from perception_rl.data.datamodule import Sample
from perception_rl.data.prompts import user_message
from perception_rl.data.records import Record
from perception_rl.data.synthetic import draw_picture
from perception_rl.shared_prefix import completion_logits, supports_shared_prefix
from perception_rl.families import family_of


def sample(index: int, images: int) -> Sample:
    pictures = [draw_picture([{"cell": [i % 3, (index + i) % 3], "colour": "red"}]) for i in range(images)]
    record = Record(id=f"p{index}", problem="Count the dots. " * (index + 1), answer="1", images=[])
    return Sample(record, pictures, [user_message(record, "Answer.", images)])


def per_completion_logprobs(model, rollouts, indices, length):
    inputs = family_of(model).sequence_inputs(rollouts, indices, length)
    logits = model(**inputs, use_cache=False, logits_to_keep=length + 1).logits[:, :-1]
    return torch.log_softmax(logits, -1).gather(-1, rollouts.completion_ids[indices, :length, None])[..., 0]


def shared_logprobs(model, rollouts, indices, length):
    logits = completion_logits(model, family_of(model), rollouts, indices, length)
    return torch.log_softmax(logits, -1).gather(-1, rollouts.completion_ids[indices, :length, None])[..., 0]


def assert_shared_equals_per_completion(model, rollouts):
    """Log-probs of every valid completion token agree between the two forwards (fp32, 1e-5)."""
    indices = torch.arange(len(rollouts))
    length = rollouts.longest_completion(indices)
    mask = rollouts.completion_mask[:, :length].bool()
    torch.testing.assert_close(
        shared_logprobs(model, rollouts, indices, length)[mask], per_completion_logprobs(model, rollouts, indices, length)[mask],
        rtol=1e-5, atol=1e-5,
    )


@pytest.fixture(scope="module")
def vlm(tiny_model_dir):
    policy = Policy(str(tiny_model_dir), max_pixels=12544)
    return policy.load_model().train(), policy.load_processor()


@pytest.mark.parametrize(
    "indices", [list(range(12)), [1, 2, 5, 9, 10], [8, 9, 11]], ids=["whole batch", "part of groups", "no image"]
)
def test_logprobs_and_gradients_equal_the_per_completion_forward(vlm, indices):
    model, processor = vlm
    torch.manual_seed(0)
    # prompts of three lengths with 1, 2 and 0 images: left padding and several images per prompt
    rollouts = HFGenerateEngine(num_generations=4, max_new_tokens=10).generate(
        model, processor, [sample(0, 1), sample(1, 2), sample(2, 0)]
    )
    rollouts.completion_mask[1, 3:] = 0  # unequal completion lengths
    rollouts.completion_mask[6, 7:] = 0
    indices = torch.tensor(indices)
    length = rollouts.longest_completion(indices)
    mask = rollouts.completion_mask[indices, :length].bool()
    naive = per_completion_logprobs(model, rollouts, indices, length)
    shared = shared_logprobs(model, rollouts, indices, length)
    torch.testing.assert_close(shared[mask], naive[mask], rtol=1e-5, atol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.linspace(-1, 1, mask.numel()).view_as(mask)  # an arbitrary loss over the valid tokens
    expected = torch.autograd.grad((naive * weights * mask).sum(), params, allow_unused=True)
    got = torch.autograd.grad((shared * weights * mask).sum(), params, allow_unused=True)
    for e, g in zip(expected, got):
        if e is not None:
            assert (e - g).abs().max() <= 1e-5 * e.abs().max() + 1e-8


def test_text_only_model(tmp_path):
    from perception_rl.tiny import write_tiny_qwen2_text

    policy = Policy(str(write_tiny_qwen2_text(tmp_path / "text")))
    model, processor = policy.load_model().train(), policy.load_processor()
    torch.manual_seed(0)
    rollouts = HFGenerateEngine(num_generations=3, max_new_tokens=8).generate(
        model, processor, [sample(0, 0), sample(3, 0)]
    )
    rollouts.completion_mask[0, 2:] = 0
    assert_shared_equals_per_completion(model, rollouts)


def test_gradient_checkpointing_is_named_as_the_reason(vlm):
    model, _ = vlm
    assert supports_shared_prefix(model, family_of(model)) is None
    model.gradient_checkpointing_enable()
    try:
        assert "gradient checkpointing" in supports_shared_prefix(model, family_of(model))
    finally:
        model.gradient_checkpointing_disable()


@pytest.mark.parametrize("multimodal", [True, False], ids=["qwen2.5-vl", "text"])
def test_rollout_prefill_once_samples_what_repeated_prompts_sample(vlm, tmp_path, multimodal):
    # The same seed gives the same tokens whether generate repeats each prompt G times before prefill or
    # decodes G copies of one prefilled cache: the distributions are equal at every step.
    if multimodal:
        model, processor = vlm
        samples = [sample(0, 1), sample(1, 2), sample(2, 0)]
    else:
        from perception_rl.tiny import write_tiny_qwen2_text

        policy = Policy(str(write_tiny_qwen2_text(tmp_path / "text")))
        model, processor = policy.load_model(), policy.load_processor()
        samples = [sample(0, 0), sample(3, 0)]
    runs = []
    for shared in (False, True):
        torch.manual_seed(0)
        engine = HFGenerateEngine(num_generations=4, max_new_tokens=12, shared_prefix=shared)
        runs.append(engine.generate(model, processor, samples))
    naive, shared = runs
    assert torch.equal(naive.completion_ids, shared.completion_ids)
    assert torch.equal(naive.completion_mask, shared.completion_mask) and naive.completions == shared.completions


def test_prefilled_decoding_has_the_logits_of_repeated_prompts(vlm):
    # Token equality alone is weak for a near-uniform random model: compare every decoding step's logits.
    from transformers import GenerationConfig

    from perception_rl.rollout.base import encode_prompts
    from perception_rl.rollout.hf import _prefill

    model, processor = vlm
    model.eval()
    _, inputs = encode_prompts(processor, [sample(0, 1), sample(1, 2), sample(2, 0)])
    config = dict(do_sample=True, max_new_tokens=6, output_logits=True, return_dict_in_generate=True, top_k=0,
                  pad_token_id=processor.tokenizer.pad_token_id)
    with torch.no_grad():
        torch.manual_seed(0)
        naive = model.generate(**inputs, generation_config=GenerationConfig(num_return_sequences=4, **config))
        torch.manual_seed(0)
        shared = model.generate(**_prefill(model, family_of(model), inputs, 4), generation_config=GenerationConfig(**config))
    model.train()
    assert torch.equal(naive.sequences, shared.sequences)
    for step_naive, step_shared in zip(naive.logits, shared.logits, strict=True):
        torch.testing.assert_close(step_shared, step_naive, rtol=1e-5, atol=1e-5)


def test_a_batch_without_images_on_a_vision_language_model(vlm):
    # No image in the whole batch: the processor sends no token types and no pixels.
    model, processor = vlm
    samples = [sample(0, 0), sample(2, 0)]
    runs = []
    for shared in (False, True):
        torch.manual_seed(0)
        runs.append(HFGenerateEngine(num_generations=3, max_new_tokens=8, shared_prefix=shared).generate(model, processor, samples))
    assert torch.equal(runs[0].completion_ids, runs[1].completion_ids)
    assert_shared_equals_per_completion(model, runs[1])


def test_activation_checkpointing_wrappers_are_named_as_the_reason(tmp_path, tiny_model_dir):
    # What a strategy's activation_checkpointing_policy does to the layers, after configure_model.
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    from perception_rl.policy import decoder_layers

    model = Policy(str(tiny_model_dir)).load_model()
    layer = type(decoder_layers(model)[0])
    apply_activation_checkpointing(model, check_fn=lambda module: isinstance(module, layer))
    assert "activation checkpointing" in supports_shared_prefix(model, family_of(model))


def test_an_unknown_position_rule_turns_the_shared_prefix_off(vlm):
    # A model with a Qwen-style get_rope_index but another model type: same inputs, positions not assumed.
    from perception_rl.families import QwenVL, rope_index_owner

    model, _ = vlm
    family = QwenVL(rope_index_owner(model), continues_positions=False)
    assert "not known for model type 'qwen2_5_vl'" in supports_shared_prefix(model, family)
    assert family_of(model).continues_positions, "Qwen2.5-VL itself is known"
