"""Rollouts from the transformers engine on the tiny random Qwen2.5-VL (and a text-only LM)."""

from __future__ import annotations

import pytest
import torch

from perception_rl import grpo
from perception_rl.data import DEFAULT_FORMAT_INSTRUCTION, RecordDataModule, Sample
from perception_rl.data.prompts import user_message
from perception_rl.data.records import Record
from perception_rl.policy import Policy
from perception_rl.rollout import HFGenerateEngine
from perception_rl.rollout.base import completion_mask, suppressed_token_ids
from perception_rl.families import family_of


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return Policy(str(tiny_model_dir), min_pixels=3136, max_pixels=12544)


@pytest.fixture(scope="module")
def batch(dots_dir) -> list[Sample]:
    data = RecordDataModule(str(dots_dir / "train.jsonl"), batch_size=3, shuffle=False, max_pixels=12544)
    data.setup("fit")
    samples = next(iter(data.train_dataloader()))
    # A longer prompt in the middle, so the batch needs left padding.
    samples[1].record.problem += " Count every shape carefully, including the ones near the border of the picture."
    samples[1].messages = [user_message(samples[1].record, DEFAULT_FORMAT_INSTRUCTION, 1)]
    return samples


def test_completion_mask_cuts_after_first_stop_token():
    ids = torch.tensor([[5, 7, 2, 9, 2], [5, 5, 5, 5, 5], [2, 0, 0, 0, 0]])
    mask, truncated = completion_mask(ids, [2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_engine_samples_groups_with_padding_after_the_end(policy, batch):
    model, processor = policy.load_model(), policy.load_processor()
    engine = HFGenerateEngine(num_generations=3, max_new_tokens=16)
    torch.manual_seed(0)
    rollouts = engine.generate(model, processor, batch)
    assert len(rollouts) == 9 and rollouts.group_size == 3
    assert rollouts.group_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert rollouts.completion_ids.shape[1] <= 16
    pad = processor.tokenizer.pad_token_id
    assert (rollouts.completion_ids[rollouts.completion_mask == 0] == pad).all()
    assert rollouts.record_of(4) is batch[1].record
    lengths = rollouts.prompt_inputs["attention_mask"].sum(-1)
    assert lengths[1] > lengths[0], "prompts of different lengths"
    assert (rollouts.prompt_inputs["attention_mask"][:, -1] == 1).all(), "padding is on the left"
    # Sampling ignores the checkpoint's own generation config (random model, temperature 1: samples differ).
    assert len({tuple(r.tolist()) for r in rollouts.completion_ids[:3]}) > 1


def test_padded_batch_logprobs_equal_single_prompt_logprobs(policy, batch):
    """Left padding and 3-D (mrope) positions must not change any completion token's log-prob."""
    model, processor = policy.load_model().eval(), policy.load_processor()
    engine = HFGenerateEngine(num_generations=2, max_new_tokens=12)
    torch.manual_seed(1)
    rollouts = engine.generate(model, processor, batch)

    def logprobs(r, idx):
        logits = model(**family_of(model).sequence_inputs(r, idx), use_cache=False, logits_to_keep=r.completion_ids.shape[1] + 1).logits
        return grpo.token_logprobs(logits[:, :-1], r.completion_ids[idx])

    with torch.no_grad():
        batched = logprobs(rollouts, torch.arange(len(rollouts)))
        for p, sample in enumerate(batch):
            alone = engine.generate(model, processor, [sample])
            rows = slice(2 * p, 2 * p + 2)
            alone.completion_ids, alone.completion_mask = rollouts.completion_ids[rows], rollouts.completion_mask[rows]
            single = logprobs(alone, torch.arange(2))
            mask = rollouts.completion_mask[rows].bool()
            assert torch.allclose(single[mask], batched[rows][mask], atol=1e-4)


def test_vision_placeholder_tokens_are_never_sampled(policy, batch):
    """A head that strongly prefers <|image_pad|> & co. still yields completions without them."""
    model, processor = policy.load_model(), policy.load_processor()
    vision_ids = suppressed_token_ids(processor)
    assert len(vision_ids) >= 4
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[vision_ids] = 20.0  # without suppression nearly every sampled token would be one of these
    model.lm_head = head
    rollouts = HFGenerateEngine(num_generations=4, max_new_tokens=8).generate(model, processor, batch)
    sampled = rollouts.completion_ids[rollouts.completion_mask.bool()]
    assert not torch.isin(sampled, torch.tensor(vision_ids)).any()
    with torch.no_grad():  # and the log-prob forward accepts them (image features match image tokens)
        model(**family_of(model).sequence_inputs(rollouts, torch.arange(len(rollouts))), use_cache=False)


def test_prompt_over_the_limit_is_refused_with_the_record_named(policy, batch):
    engine = HFGenerateEngine(num_generations=1, max_new_tokens=4, max_prompt_length=10)
    with pytest.raises(ValueError, match=r"train\.jsonl:1: prompt is \d+ tokens"):
        engine.generate(policy.load_model(), policy.load_processor(), batch)


@pytest.fixture(scope="module")
def text_only_dir(tmp_path_factory):
    """A tiny random Qwen2 causal LM (no vision) with the same tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from perception_rl.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("text-only")
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_text_only_policy_generates_and_refuses_images(text_only_dir):
    policy = Policy(str(text_only_dir))
    model, processor = policy.load_model(), policy.load_processor()
    assert type(model).__name__ == "Qwen2ForCausalLM"
    record = Record(id="t1", problem="What is 2 + 3?", answer="5", images=[], source="mem:1")
    sample = Sample(record, [], [user_message(record, "Put the answer in \\boxed{}.", 0)])
    rollouts = HFGenerateEngine(num_generations=2, max_new_tokens=6).generate(model, processor, [sample])
    assert len(rollouts.completions) == 2
    with torch.no_grad():
        model(**family_of(model).sequence_inputs(rollouts, torch.arange(2)))
    from PIL import Image

    with_image = Sample(record, [Image.new("RGB", (56, 56))], sample.messages)
    with pytest.raises(ValueError, match="mem:1: record has images but the policy's processor handles text only"):
        HFGenerateEngine(num_generations=1, max_new_tokens=2).generate(model, processor, [with_image])


def test_freezing_the_vision_tower(tiny_model_dir):
    model = Policy(str(tiny_model_dir), freeze_vision_tower=True).load_model()
    assert not any(p.requires_grad for p in model.model.visual.parameters())
    assert all(p.requires_grad for p in model.model.language_model.parameters())
