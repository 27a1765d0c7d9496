"""The vLLM engine's logic that needs no live engine: sampling parameters, requests, outputs, LoRA merging of
a weight stream, the prompt-id check, and the importance-sampling correction in the loss."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from perception_rl import GRPOModule, HFGenerateEngine, Policy
from perception_rl.data.datamodule import Sample
from perception_rl.data.records import Record
from perception_rl.policy import LoRA
from perception_rl.rollout.vllm import (
    VLLMEngine,
    build_requests,
    check_prompt_ids,
    merged_lora_weights,
    outputs_to_tensors,
    sampling_kwargs,
)


def test_sampling_kwargs_match_the_hf_engine_settings():
    engine = VLLMEngine(num_generations=8, max_new_tokens=64, temperature=0.9, top_p=0.95, top_k=0)
    kwargs = sampling_kwargs(engine, greedy=False, suppressed=[7, 9], seed=3)
    assert kwargs["n"] == 8 and kwargs["temperature"] == 0.9 and kwargs["top_p"] == 0.95
    assert kwargs["top_k"] == -1, "vLLM disables top-k with -1, not 0"
    assert kwargs["max_tokens"] == 64 and kwargs["logprobs"] == 0 and kwargs["seed"] == 3
    assert kwargs["logit_bias"] == {7: -100.0, 9: -100.0}
    greedy = sampling_kwargs(engine, greedy=True, suppressed=[], seed=None)
    assert greedy["n"] == 1 and greedy["temperature"] == 0.0 and greedy["logit_bias"] is None


def test_requests_carry_images_as_multimodal_data():
    record = Record(id="a", problem="p", answer="1", images=[])
    one, two = Image.new("RGB", (28, 28)), Image.new("RGB", (56, 28))
    samples = [Sample(record, [one], []), Sample(record, [one, two], []), Sample(record, [], [])]
    requests = build_requests(["p0", "p1", "p2"], samples)
    assert requests[0] == {"prompt": "p0", "multi_modal_data": {"image": one}}
    assert requests[1]["multi_modal_data"]["image"] == [one, two]
    assert requests[2] == {"prompt": "p2"}


def _completion(tokens, finish, logprob=-0.5, text="t"):
    steps = [{t: SimpleNamespace(logprob=logprob)} for t in tokens]
    return SimpleNamespace(token_ids=tokens, logprobs=steps, finish_reason=finish, text=text)


def test_outputs_become_padded_tensors_in_group_order():
    outputs = [
        SimpleNamespace(outputs=[_completion([5, 6, 2], "stop"), _completion([5], "stop")]),
        SimpleNamespace(outputs=[_completion([8, 8, 8, 8], "length", -1.0), _completion([9, 2], "stop")]),
    ]
    ids, mask, truncated, logprobs, texts = outputs_to_tensors(outputs, pad_id=0)
    assert ids.tolist() == [[5, 6, 2, 0], [5, 0, 0, 0], [8, 8, 8, 8], [9, 2, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert truncated.tolist() == [False, False, True, False]
    assert logprobs[2].tolist() == [-1.0] * 4 and logprobs[1].tolist() == [-0.5, 0.0, 0.0, 0.0]
    assert len(texts) == 4


def test_merged_lora_weights_equal_peft_merge(tiny_model_dir):
    model = Policy(str(tiny_model_dir), lora=LoRA(rank=4, alpha=8)).load_model()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()  # B starts at zero; make the merge non-trivial
    merged = dict(merged_lora_weights(model))
    streamed = dict(merged_lora_weights(model, iter(list(model.state_dict().items()))))  # one tensor at a time
    reference = model.merge_and_unload().state_dict()
    assert streamed.keys() == merged.keys() and all(torch.equal(streamed[k], merged[k]) for k in merged)
    assert merged.keys() == reference.keys()
    assert all(torch.allclose(merged[k], reference[k], atol=1e-5) for k in merged)
    assert not any("lora_" in k or "base_layer" in k for k in merged)


def test_prompt_id_check_names_the_record():
    inputs = {"input_ids": torch.tensor([[0, 4, 5]]), "attention_mask": torch.tensor([[0, 1, 1]])}
    sample = Sample(Record(id="a", problem="p", answer="1", images=[], source="train.jsonl:7"), [], [])
    check_prompt_ids([SimpleNamespace(prompt_token_ids=[4, 5])], inputs, [sample])
    with pytest.raises(RuntimeError, match="train.jsonl:7: vLLM's prompt token ids differ"):
        check_prompt_ids([SimpleNamespace(prompt_token_ids=[4, 5, 6])], inputs, [sample])


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_missing_vllm_is_a_clear_error(tiny_model_dir):
    engine = VLLMEngine()
    policy = Policy(str(tiny_model_dir))
    record = Record(id="a", problem="p", answer="1", images=[])
    from perception_rl.data.prompts import user_message

    with pytest.raises(ImportError, match="perception-rl\\[vllm\\]"):
        engine.generate(policy.load_model(), policy.load_processor(), [Sample(record, [], [user_message(record, "", 0)])])


def test_importance_weights_scale_the_loss(tiny_model_dir, dots_dir):
    from perception_rl.data import RecordDataModule

    module = GRPOModule(Policy(str(tiny_model_dir), max_pixels=12544), rollout=HFGenerateEngine(num_generations=2, max_new_tokens=6))
    module.configure_model()
    data = RecordDataModule(str(dots_dir / "train.jsonl"), batch_size=2, shuffle=False, max_pixels=12544)
    data.setup("fit")
    rollouts = module.generate(next(iter(data.train_dataloader())))
    idx, adv = torch.arange(len(rollouts)), torch.tensor([1.0, -1.0, 0.5, -0.5])
    mask = rollouts.completion_mask
    tokens = mask.sum().item()

    def loss_and_weight():
        out = module.policy_loss(rollouts, idx, adv, mask, mask.sum(), None, None)
        return out.loss.item(), out.sums.get("importance_weight", torch.tensor(tokens)).item() / tokens

    plain, _ = loss_and_weight()
    with torch.no_grad():
        trainer_logp, _ = module._forward_logprobs(module.model, rollouts, idx)
    rollouts.logprobs = trainer_logp - 0.5  # the engine thought every token 0.5 nats less likely
    module.rollout.importance_sampling_cap = 2.0
    weighted, weight = loss_and_weight()
    assert weight == pytest.approx(torch.exp(torch.tensor(0.5)).item(), rel=1e-4)
    assert weighted == pytest.approx(plain * torch.exp(torch.tensor(0.5)).item(), rel=1e-4)
    module.rollout.importance_sampling_cap = 1.2  # truncated at the cap
    _, weight = loss_and_weight()
    assert weight == pytest.approx(1.2)


def test_merged_lora_weights_name_an_incomplete_layer(tiny_model_dir):
    model = Policy(str(tiny_model_dir), lora=LoRA(rank=4, alpha=8)).load_model()
    partial = [(n, t) for n, t in model.state_dict().items() if "q_proj.lora_B" not in n]
    with pytest.raises(RuntimeError, match="missing parts"):
        list(merged_lora_weights(model, partial))


def test_request_seeds_continue_after_a_resume():
    from perception_rl.rollout.vllm import request_seed

    engine = VLLMEngine(seed=7)
    engine._calls = 5  # five rollouts done
    resumed = VLLMEngine(seed=7)
    resumed.load_state_dict(engine.state_dict())
    assert resumed._calls == 5 and resumed._stale, "the resumed engine syncs the checkpoint's weights first"
    assert request_seed(7, 0, resumed._calls, 0) != request_seed(7, 0, 0, 0), "no seed of the first run repeats"
