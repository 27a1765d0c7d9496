"""LoRA and QLoRA (bitsandbytes 4-bit, on CPU) training steps, and the adapter save / merge / export round trip."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from perception_rl import FunctionReward, GRPOModule, HFGenerateEngine, Policy, RecordDataModule
from perception_rl.policy import LoRA
from perception_rl.families import family_of


def fit_lora(model_dir, dots_dir, root, load_in_4bit=False, **module_kwargs) -> GRPOModule:
    module = GRPOModule(
        policy=Policy(str(model_dir), max_pixels=12544, lora=LoRA(rank=4, alpha=8), load_in_4bit=load_in_4bit),
        rewards=[FunctionReward("helpers.digit_share", name="digits")],
        rollout=HFGenerateEngine(num_generations=4, max_new_tokens=12),
        learning_rate=5e-2,
        **module_kwargs,
    )
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, default_root_dir=root,
    )
    trainer.fit(module, datamodule=RecordDataModule(str(dots_dir / "train.jsonl"), batch_size=2, max_pixels=12544))
    return module


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir, dots_dir):
    root = tmp_path_factory.mktemp("lora")
    return root, fit_lora(tiny_model_dir, dots_dir, root)


def test_lora_trains_only_adapters_of_the_language_model(lora_run):
    _, module = lora_run
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable), "the vision tower is excluded by default"
    lora_b = [p for n, p in module.model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b), "B starts at zero; two steps must move it"


def test_lora_export_saves_adapters_and_a_merged_model_equal_to_the_adapted_one(lora_run, tiny_model_dir, dots_dir):
    root, module = lora_run
    export = root / "hf_model"
    assert (export / "adapter" / "adapter_config.json").is_file()
    merged_state, base_state = load_file(export / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert merged_state.keys() == base_state.keys(), "merged export has the base model's names, no adapter names"
    changed = {k for k in base_state if not torch.equal(merged_state[k], base_state[k])}
    assert changed and all("visual" not in k and "proj" in k for k in changed), "only adapted language layers change"

    merged = Policy(str(export)).load_model().eval()
    adapted = module.model.eval()
    data = RecordDataModule(str(dots_dir / "train.jsonl"), batch_size=2, shuffle=False, max_pixels=12544)
    data.setup("fit")
    rollouts = HFGenerateEngine(num_generations=1, max_new_tokens=4).generate(merged, module.processor, next(iter(data.train_dataloader())))
    inputs = family_of(merged).sequence_inputs(rollouts, torch.arange(len(rollouts)))
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits, adapted(**inputs).logits, atol=1e-4)


def test_kl_reference_is_the_model_with_adapters_off(tiny_model_dir, dots_dir, tmp_path):
    module = fit_lora(tiny_model_dir, dots_dir, tmp_path, kl_coef=0.1, export_hf_model=False)
    assert module._reference == [], "no second copy of the model with LoRA"
    # LoRA's B starts at zero, so before the first update the adapted model equals the reference.
    from perception_rl.data.datamodule import RecordDataModule as Data

    fresh = GRPOModule(policy=Policy(str(tiny_model_dir), max_pixels=12544, lora=LoRA(rank=4)), kl_coef=0.1,
                       rollout=HFGenerateEngine(num_generations=2, max_new_tokens=6))
    fresh.configure_model()
    data = Data(str(dots_dir / "train.jsonl"), batch_size=2, shuffle=False, max_pixels=12544)
    data.setup("fit")
    rollouts = fresh.generate(next(iter(data.train_dataloader())))
    reference = fresh._reference_logprobs(rollouts)
    current = fresh._logprobs_no_grad(rollouts, fresh.model)
    assert torch.allclose(reference, current, atol=1e-6)
    # after training, they differ
    trained_ref, trained_cur = module._reference_logprobs(rollouts), module._logprobs_no_grad(rollouts, module.model)
    assert not torch.allclose(trained_ref, trained_cur, atol=1e-4)


def test_qlora_trains_on_4bit_weights_and_exports_full_precision(tiny_model_dir, dots_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    module = fit_lora(tiny_model_dir, dots_dir, tmp_path, load_in_4bit=True)
    base = module.model.get_base_model()
    q_proj = base.model.language_model.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj).__name__ == "Linear4bit"
    assert type(base.model.visual.blocks[0].attn.qkv).__name__ == "Linear", "vision tower is not quantised"
    assert any(p.abs().sum() > 0 for n, p in module.model.named_parameters() if "lora_B" in n)
    merged = load_file(tmp_path / "hf_model" / "model.safetensors")
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert merged.keys() == initial.keys()
    assert all(merged[k].dtype == initial[k].dtype for k in merged), "export is full precision, not 4-bit"


def test_4bit_without_lora_is_refused():
    with pytest.raises(ValueError, match="policy.load_in_4bit .* set policy.lora"):
        Policy("/nowhere", load_in_4bit=True)
