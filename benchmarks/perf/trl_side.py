"""TRL's side: `trl.GRPOTrainer` on the same model, processor, prompts, G, lengths, optimizer and reward.

Settings that differ from TRL's defaults, to match perception-rl's step: no gradient checkpointing, fp32
(no bf16), a constant learning rate, weight decay 0.01, beta 0, one update per generation batch
(`steps_per_generation=1`, `num_iterations=1`, so no old-log-prob pass), prompts in file order, and the
same sampling (min_new_tokens = max_new_tokens, the same suppressed vision tokens, top_k 0, top_p 1).
TRL's default loss ("dapo": token mean) and group-std advantage scaling match perception-rl's defaults.
"""

from __future__ import annotations

import tempfile

import torch
from floor import vision_suppressed_ids
from probe import Probe
from workload import Case, Settings, build_parts, digit_share, load_prompts


def trl_version() -> str:
    """The installed TRL version, or a SystemExit saying how to install it."""
    try:
        import trl
    except ImportError as err:
        raise SystemExit("TRL is not installed: pip install -e '.[bench]' (see benchmarks/perf/README.md)") from err
    return trl.__version__


def make_dataset(prompts):
    """A `datasets.Dataset` of conversational prompts with one image column, in TRL's VLM format."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": p.messages, "image": p.image} for p in prompts])


def make_config(settings: Settings, output_dir: str, suppressed: list[int]):
    """`GRPOConfig` for exactly one update per rollout batch of `prompts_per_step x G` completions."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=settings.completions_per_step, gradient_accumulation_steps=1,
        num_generations=settings.group_size, steps_per_generation=1, num_iterations=1, max_steps=settings.steps,
        max_completion_length=settings.new_tokens, temperature=settings.temperature, top_p=1.0, top_k=0,
        repetition_penalty=1.0, beta=0.0, epsilon=settings.clip_epsilon, loss_type="dapo", scale_rewards="group",
        learning_rate=settings.learning_rate, weight_decay=settings.weight_decay, lr_scheduler_type="constant",
        warmup_steps=0, optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=settings.max_grad_norm,
        shuffle_dataset=False, seed=settings.seed, data_seed=settings.seed, logging_steps=1_000_000,
        report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, log_completions=False,
        generation_kwargs={"min_new_tokens": settings.new_tokens, "suppress_tokens": suppressed},
    )


def probe_callback(probe: Probe):
    """A transformers `TrainerCallback` that brackets each optimizer step with the probe."""
    from transformers import TrainerCallback

    class ProbeCallback(TrainerCallback):
        """on_step_begin -> on_step_end spans generation, scoring, forward, backward, clipping and AdamW."""

        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            if optimizer is not None:
                probe.watch_optimizer(getattr(optimizer, "optimizer", optimizer))
            probe.begin_run()

        def on_step_begin(self, args, state, control, **kwargs):
            probe.begin_step()

        def on_step_end(self, args, state, control, **kwargs):
            probe.end_step()

    return ProbeCallback()


def run(case: Case, settings: Settings, data_dir) -> dict:
    """Train `settings.steps` steps with `GRPOTrainer`; returns the probe's measurements."""
    version = trl_version()
    from trl import GRPOTrainer

    tokenizer, processor, model = build_parts(case, settings.seed)
    prompts = load_prompts(data_dir, settings.prompts_needed, case.image_side)
    probe = Probe(model)
    timed_share = probe.timed(digit_share)

    def digits(completions, **kwargs) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return timed_share(texts)

    with tempfile.TemporaryDirectory() as output_dir:
        config = make_config(settings, output_dir, vision_suppressed_ids(tokenizer))
        trainer = GRPOTrainer(
            model=model, reward_funcs=[digits], args=config, train_dataset=make_dataset(prompts),
            processing_class=processor, callbacks=[probe_callback(probe)],
        )
        torch.manual_seed(settings.seed)
        trainer.train()
    return {**probe.summary(), "trl_version": version}
