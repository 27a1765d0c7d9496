"""GRPOModule on the tiny model: the update moves log-probs the right way, the entropy bonus has a gradient, bad
steps are skipped. (Micro-batching, abstention and data parallelism: tests/test_loss_normalisation.py.)"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from perception_rl import FunctionReward, GRPOModule, HFGenerateEngine, Policy, RecordDataModule
from perception_rl.data.datamodule import Sample
from perception_rl.grpo import loss_normaliser, masked_mean


def make_module(model_dir, policy_cls=Policy, **kwargs) -> GRPOModule:
    module = GRPOModule(
        policy=policy_cls(str(model_dir), max_pixels=12544),
        rewards=[FunctionReward("helpers.digit_share", name="digits")],
        rollout=HFGenerateEngine(num_generations=4, max_new_tokens=12),
        **kwargs,
    )
    module.configure_model()
    return module


def first_batch(dots_dir, size: int = 2) -> list[Sample]:
    data = RecordDataModule(str(dots_dir / "train.jsonl"), batch_size=size, shuffle=False, max_pixels=12544)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def everything_of(rollouts):
    """Indices, mask and token-mean normaliser of a whole rollout batch with nothing abstained."""
    mask = rollouts.completion_mask
    return torch.arange(len(rollouts)), mask, loss_normaliser(mask, "token_mean")


def mean_entropy(module, rollouts) -> float:
    with torch.no_grad():
        _, entropy = module._forward_logprobs(module.model, rollouts, torch.arange(len(rollouts)), with_entropy=True)
    return float(masked_mean(entropy, rollouts.completion_mask))


def test_policy_gradient_step_raises_logprob_of_positive_advantage_completions(tiny_model_dir, dots_dir):
    module = make_module(tiny_model_dir, learning_rate=1e-2)
    torch.manual_seed(0)
    rollouts = module.generate(first_batch(dots_dir))
    advantages = torch.tensor([1.0, -1.0] * (len(rollouts) // 2))
    everything, mask, normaliser = everything_of(rollouts)

    def sequence_logprobs():
        with torch.no_grad():
            logp, _ = module._forward_logprobs(module.model, rollouts, everything)
        return (logp * rollouts.completion_mask).sum(-1)

    before = sequence_logprobs()
    out = module.policy_loss(rollouts, everything, advantages, mask, normaliser, None, None)
    # on-policy: the ratio is exactly 1
    assert out.sums["clip_fraction"].item() == 0.0 and out.sums["approx_kl_to_rollout"].item() == 0.0
    out.loss.backward()
    torch.optim.SGD(module.model.parameters(), lr=1e-2).step()
    change = sequence_logprobs() - before
    assert (change[advantages > 0] > 0).all() and (change[advantages < 0] < 0).all()


@pytest.mark.parametrize("entropy_coef", [0.0, 1.0])
def test_entropy_bonus_pushes_towards_higher_entropy(tiny_model_dir, dots_dir, entropy_coef):
    # Zero advantages: the only gradient is the entropy bonus's, and only when its coefficient is > 0.
    module = make_module(tiny_model_dir, entropy_coef=entropy_coef)
    torch.manual_seed(0)
    rollouts = module.generate(first_batch(dots_dir))
    everything, mask, normaliser = everything_of(rollouts)
    before = mean_entropy(module, rollouts)
    out = module.policy_loss(rollouts, everything, torch.zeros(len(rollouts)), mask, normaliser, None, None)
    assert out.sums["entropy"].item() / out.sums["tokens"].item() == pytest.approx(before, rel=1e-5)
    if entropy_coef == 0:
        assert _gradient_norm(module, out.loss) == 0.0
        return
    out.loss.backward()
    torch.optim.SGD(module.model.parameters(), lr=1.0).step()
    assert mean_entropy(module, rollouts) > before  # random tiny policy: already close to log(vocab)


def _gradient_norm(module, loss) -> float:
    loss.backward()
    return float(sum(p.grad.norm() ** 2 for p in module.model.parameters() if p.grad is not None) ** 0.5)


class NaNGradientPolicy(Policy):
    """Loads normally, then makes every gradient of the output head NaN."""

    def load_model(self):
        model = super().load_model()
        model.lm_head.weight.register_hook(lambda grad: grad * float("nan"))
        return model


def fit(module: GRPOModule, dots_dir, tmp_path, **trainer_kwargs) -> L.Trainer:
    data = RecordDataModule(str(dots_dir / "train.jsonl"), batch_size=2, max_pixels=12544)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, **trainer_kwargs,
    )
    trainer.fit(module, datamodule=data)
    return trainer


def test_non_finite_gradient_skips_the_step(tiny_model_dir, dots_dir, tmp_path):
    module = make_module(tiny_model_dir, NaNGradientPolicy, export_hf_model=False, learning_rate=1e-2)
    initial = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = fit(module, dots_dir, tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    assert module.skipped_steps == 2
    assert trainer.global_step == 0, "a skipped step is not an optimizer step"
    assert all(torch.equal(initial[k], v) for k, v in module.model.state_dict().items()), "weights untouched"


def test_several_updates_per_rollout_batch(tiny_model_dir, dots_dir, tmp_path):
    module = make_module(
        tiny_model_dir, export_hf_model=False, learning_rate=1e-2, update_epochs=2, num_mini_batches=2,
        micro_batch_size=2, warmup_ratio=0.5,
    )
    trainer = fit(module, dots_dir, tmp_path, max_steps=8, limit_val_batches=0)
    assert trainer.global_step == 8, "2 rollout batches x 2 epochs x 2 mini-batches"
    assert module.skipped_steps == 0
    # warm-up over ceil(0.5 * 8) = 4 steps, then constant
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-2)
    assert trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0](0) == pytest.approx(0.25)


def test_trimmed_forward_equals_the_padded_one(tiny_model_dir, dots_dir):
    # Each micro-batch is cut to its longest completion; causal attention makes that exact.
    module = make_module(tiny_model_dir)
    torch.manual_seed(0)
    rollouts = module.generate(first_batch(dots_dir))
    rollouts.completion_mask[:, 5:] = 0  # every completion ends by token 5: 7 columns of padding
    everything = torch.arange(len(rollouts))
    width = rollouts.completion_ids.shape[1]
    with torch.no_grad():
        trimmed, _ = module._forward_logprobs(module.model, rollouts, everything)
        inputs = module._family.sequence_inputs(rollouts, everything)  # untrimmed
        logits = module.model(**inputs, use_cache=False, logits_to_keep=width + 1).logits[:, :-1]
    logits[..., module._suppressed] = float("-inf")  # the vision placeholders no engine samples
    assert trimmed.shape == (len(rollouts), 5)
    full = torch.log_softmax(logits / module.rollout.temperature, -1).gather(-1, rollouts.completion_ids[..., None])[..., 0]
    torch.testing.assert_close(trimmed, full[:, :5], rtol=1e-5, atol=1e-5)
    padded = module._logprobs_no_grad(rollouts, module.model)
    assert padded.shape == (len(rollouts), width) and not padded[:, 5:].any()
