"""perception-rl's side: `GRPOModule.training_step` under a Lightning `Trainer`, as `perception-rl fit` runs it."""

from __future__ import annotations

import functools
import tempfile

import lightning as L
import torch
from probe import Probe
from torch.utils.data import DataLoader
from workload import Case, Settings, build_parts, digit_share, load_prompts


def fixed_length_engine(settings: Settings, probe: Probe):
    """perception-rl's `HFGenerateEngine`, unchanged except that every completion is exactly
    `settings.new_tokens` long (min_new_tokens = max_new_tokens, added to its `model.generate` call) and
    that the probe knows when a rollout is under way."""
    from perception_rl.rollout import HFGenerateEngine

    class FixedLengthEngine(HFGenerateEngine):
        """`HFGenerateEngine` whose `model.generate` calls also get `min_new_tokens = max_new_tokens`."""

        def generate(self, model, processor, samples, greedy=False, synced_devices=False):
            had_own = "generate" in vars(model)
            original = model.generate
            model.generate = functools.partial(original, min_new_tokens=self.max_new_tokens)
            try:
                with probe.rollout():
                    return super().generate(model, processor, samples, greedy=greedy, synced_devices=synced_devices)
            finally:
                if had_own:
                    model.generate = original
                else:
                    del model.generate

    return FixedLengthEngine(
        num_generations=settings.group_size, max_new_tokens=settings.new_tokens, temperature=settings.temperature,
    )


def in_memory_policy(model, processor):
    """A `Policy` handing `GRPOModule.configure_model` an already built model and processor."""
    from perception_rl.policy import Policy

    class InMemoryPolicy(Policy):
        """Returns the given objects instead of loading from a folder."""

        def load_model(self, adapters: bool = True):
            return model

        def load_processor(self):
            return processor

    return InMemoryPolicy("in-memory")


class ProbeCallback(L.Callback):
    """Brackets each training batch with the probe and keeps the module's own `train/time/*` metrics."""

    def __init__(self, probe: Probe):
        self.probe = probe

    def on_train_start(self, trainer, pl_module) -> None:
        for optimizer in trainer.optimizers:
            self.probe.watch_optimizer(optimizer)
        self.probe.begin_run()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.probe.begin_step()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        own = {k: v for k, v in pl_module.step_metrics.items() if k.startswith(("train/time/", "train/throughput/"))}
        self.probe.end_step({"framework_metrics": own})


def run(case: Case, settings: Settings, data_dir, rollout_log: bool = False) -> dict:
    """Train `settings.steps` GRPO steps with `GRPOModule` and return the probe's measurements. With
    `rollout_log`, `perception_rl.RolloutLog` writes every step (all 2 groups) inside the timed step."""
    from perception_rl import FunctionReward, GRPOModule, RolloutLog
    from perception_rl.data.datamodule import Sample, collate_samples

    _, processor, model = build_parts(case, settings.seed)
    prompts = load_prompts(data_dir, settings.prompts_needed, case.image_side)
    samples = [Sample(p.record, [p.image], p.messages) for p in prompts]
    probe = Probe(model)

    def digits(completions: list[str], records: list[dict]) -> list[float]:
        return digit_share(completions)

    module = GRPOModule(
        policy=in_memory_policy(model, processor),
        rewards=[FunctionReward(probe.timed(digits), name="digits")],
        rollout=fixed_length_engine(settings, probe),
        learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm, clip_low=settings.clip_epsilon, clip_high=settings.clip_epsilon,
        kl_coef=0.0, update_epochs=1, num_mini_batches=1, export_hf_model=False,
    )
    loader = DataLoader(samples, batch_size=settings.prompts_per_step, shuffle=False, collate_fn=collate_samples)
    # The log before the probe: its on_train_batch_end (the copy and hand-off) falls inside the timed step.
    log = [RolloutLog(every_n_steps=1)] if rollout_log else []
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_steps=settings.steps, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
            default_root_dir=root, callbacks=[*log, ProbeCallback(probe)],
        )
        torch.manual_seed(settings.seed)
        trainer.fit(module, train_dataloaders=loader)
    return probe.summary()
