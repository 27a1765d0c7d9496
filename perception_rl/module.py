"""`GRPOModule`: the policy, its rewards and the GRPO update, as one LightningModule.

`training_step` reads as the method: rollout -> score -> advantages -> policy update -> log. The maths
lives in `perception_rl.grpo`; sampling in a `RolloutEngine`; scoring in `Reward`s. Optimisation is
manual because one rollout batch may feed several optimizer steps (mini-batches, update epochs).

Deviations from textbook GRPO, all switchable: token-mean loss aggregation by default (the released
recipe's choice), asymmetric clipping and dual-clip, no KL term unless `kl_coef > 0`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
import torch
from torchmetrics import MeanMetric

from perception_rl import grpo, shared_prefix, sharding
from perception_rl.preflight import run_preflight
from perception_rl.rng import capture_rng_state, restore_rng_state
from perception_rl.data.datamodule import Sample
from perception_rl.eval.evaluation import BenchmarkEvaluation
from perception_rl.families import ModelFamily, family_of
from perception_rl.policy import Policy, export_merged_adapters, is_peft_model
from perception_rl.rewards import AccuracyReward, FormatReward, Reward, RewardBreakdown, score_all
from perception_rl.rollout import HFGenerateEngine, RolloutEngine, Rollouts
from perception_rl.rollout.base import suppressed_token_ids


@dataclasses.dataclass
class ScoredRollouts:
    """One training step's rollouts (model inputs dropped), every reward's output and the [N] advantages; all
    on the CPU. `GRPOModule.scored` holds the latest, for callbacks that inspect it (`perception_rl.RolloutLog`)."""

    rollouts: Rollouts
    rewards: RewardBreakdown
    advantages: torch.Tensor


class GRPOModule(L.LightningModule):
    """GRPO fine-tuning of a (multimodal) policy with pluggable rewards.

    Args:
        policy: which model to load and how (dtype, attention, checkpointing, frozen vision tower).
        rewards: the reward terms; each carries its weight. Defaults to accuracy (0.9) + format (0.1).
        rollout: the sampling engine and its parameters (G, temperature, lengths).
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        adam_betas: AdamW betas.
        warmup_ratio: share of optimizer steps spent in linear warm-up; the rate is constant afterwards.
        max_grad_norm: clip the global gradient norm to this; None disables clipping (the norm is still logged).
        clip_low: lower PPO clip range (ratio >= 1 - clip_low).
        clip_high: upper PPO clip range (ratio <= 1 + clip_high).
        dual_clip: bound on the loss of negative-advantage tokens (c > 1); None disables it.
        loss_aggregation: what the loss of a mini-batch is divided by, counted over every rank and leaving
            abstained completions out: token_mean (valid tokens), seq_mean_token_mean (valid sequences, each
            token weighted by 1 / its sequence's length) or constant (Dr. GRPO: valid sequences x max new tokens).
        scale_advantages_by_std: divide group-centred rewards by the group std (False: Dr. GRPO).
        kl_coef: weight of the KL penalty to a frozen copy of the initial policy; 0 loads no reference.
        kl_estimator: k1 or k3.
        entropy_coef: weight of an entropy bonus (subtracted from the loss, so training raises the entropy);
            at 0 the entropy is only logged, computed without gradient.
        update_epochs: passes over each rollout batch.
        num_mini_batches: optimizer steps per pass over a rollout batch.
        micro_batch_size: completions per forward/backward (memory knob; gradients are accumulated).
        export_hf_model: after fit, save the policy with `save_pretrained` to `<default_root_dir>/hf_model`.
        fsdp_param_dtype: with ModelParallelStrategy (FSDP2), compute in this dtype while keeping fp32 master
            weights and fp32 gradient reduction (bf16 mixed precision); None computes in the weights' dtype.
        evaluation: how `perception-rl test` decodes, grades and reports (per-item rows, resume, grouped
            accuracy, summary table); defaults to greedy decoding with rows under `<default_root_dir>/eval/`.
        preflight: before the first step, check image placeholders against image features, special-token
            ids, padding side and annotations (see `perception_rl.preflight`).
        shared_prefix: compute each prompt (vision tower and prompt positions) once per group in the trainer's
            forward passes instead of once per completion; exact (`perception_rl.shared_prefix`). None: on
            where the model supports it (not with gradient checkpointing); True: on, or an error saying why not.
    """

    def __init__(
        self,
        policy: Policy,
        rewards: list[Reward] | None = None,
        rollout: RolloutEngine | None = None,
        learning_rate: float = 1e-6,
        weight_decay: float = 1e-2,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        warmup_ratio: float = 0.0,
        max_grad_norm: float | None = 1.0,
        clip_low: float = 0.2,
        clip_high: float = 0.2,
        dual_clip: float | None = None,
        loss_aggregation: grpo.LossAggregation = "token_mean",
        scale_advantages_by_std: bool = True,
        kl_coef: float = 0.0,
        kl_estimator: grpo.KLEstimator = "k3",
        entropy_coef: float = 0.0,
        update_epochs: int = 1,
        num_mini_batches: int = 1,
        micro_batch_size: int | None = None,
        export_hf_model: bool = True,
        fsdp_param_dtype: Literal["bfloat16", "float16"] | None = None,
        evaluation: BenchmarkEvaluation | None = None,
        preflight: bool = True,
        shared_prefix: bool | None = None,
    ):
        super().__init__()
        if update_epochs < 1 or num_mini_batches < 1 or (micro_batch_size is not None and micro_batch_size < 1):
            raise ValueError("model: update_epochs, num_mini_batches and micro_batch_size must be >= 1")
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"model.warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if dual_clip is not None and dual_clip <= 1.0:
            raise ValueError(f"model.dual_clip must be > 1 (or null), got {dual_clip}")
        self.save_hyperparameters(ignore=["policy", "rewards", "rollout", "evaluation"])
        self.automatic_optimization = False
        self.policy = policy
        self.rewards = rewards if rewards is not None else [AccuracyReward(), FormatReward()]
        self.rollout = rollout or HFGenerateEngine()
        self.model: torch.nn.Module | None = None
        self.processor = None
        self._suppressed: torch.Tensor | None = None  # token ids no engine samples (vision placeholders)
        self._shared_prefix = False  # decided once the model is loaded
        self._family: ModelFamily | None = None
        self._reference: list[torch.nn.Module] = []  # a list keeps it out of state_dict and checkpoints
        self.skipped_steps = 0
        # This step's training metrics, NaN included (the logger only gets the finite ones; Lightning's
        # callback_metrics would still hold an earlier step's value for those). Read by RewardCurve.
        self.step_metrics: dict[str, float] = {}
        self.scored: ScoredRollouts | None = None  # this step's rollouts, rewards and advantages; read by RolloutLog
        self._rng_to_restore: dict | None = None  # set by a resume, applied right before the next step
        names = [r.name for r in self.rewards]
        self.eval_metrics = torch.nn.ModuleDict({
            stage: torch.nn.ModuleDict({n: MeanMetric(nan_strategy="ignore") for n in [*names, "total", "response_length"]})
            for stage in ("val", "test")
        })
        self.evaluation = evaluation or BenchmarkEvaluation()

    # ----------------------------------------------------------------- setup
    def prepare_data(self) -> None:
        self.policy.prepare()

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.processor = self.policy.load_processor()
        self.model = self.policy.load_model()
        suppressed = suppressed_token_ids(self.processor)
        self._suppressed = torch.tensor(suppressed, dtype=torch.long) if suppressed else None
        self._family = family_of(self.model)  # how its inputs and positions are built
        self._shared_prefix = self._choose_shared_prefix()
        if self.hparams.kl_coef > 0 and not is_peft_model(self.model):
            # With adapters the reference is the same model with its adapters switched off: no copy.
            reference = self.policy.load_model().eval().requires_grad_(False)
            self._reference = [reference]
        self._shard()

    def _choose_shared_prefix(self) -> bool:
        reason = shared_prefix.supports_shared_prefix(self.model, self._family)
        if reason is None:
            return self.hparams.shared_prefix is not False
        if self.hparams.shared_prefix:
            raise ValueError(f"model.shared_prefix: true, but {reason}; set it to false or null")
        if self.hparams.shared_prefix is None:
            rank_zero_info(f"model.shared_prefix: off, since {reason}")
        return False

    def _shard(self) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        # The KL reference is sharded like the policy: a full copy on every rank would cost a model per GPU.
        if getattr(self, "_device_mesh", None) is not None:  # ModelParallelStrategy: FSDP2
            for model in (self.model, *self._reference):
                sharding.shard_fsdp2(model, self.device_mesh["data_parallel"], self.hparams.fsdp_param_dtype)
            for reference in self._reference:  # forward only: a root left gathered after it would never reshard
                reference.set_reshard_after_forward(True)
        elif self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy):
            self.model = sharding.shard_fsdp1(self.model, self.trainer.strategy)
            self._reference = [sharding.shard_fsdp1(model, self.trainer.strategy) for model in self._reference]

    def on_fit_start(self) -> None:
        # The strategy may have wrapped the layers for activation checkpointing since configure_model.
        if self._shared_prefix:
            self._shared_prefix = self._choose_shared_prefix()
        for reference in self._reference:
            reference.to(self.device)

    def on_train_start(self) -> None:
        if self.hparams.preflight:
            self._preflight()

    def _preflight(self) -> None:
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if dataset is None or not len(dataset):
            return
        samples = [dataset[i] for i in range(min(4, len(dataset)))]
        records = getattr(dataset, "records", [])
        run_preflight(self.model, self.processor, self.rewards, samples, records, self.rollout.max_prompt_length)

    # ----------------------------------------------------------------- exact resume
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Everything a resumed run needs to continue exactly: RNG states, counters, reward and engine state."""
        checkpoint["perception_rl"] = {
            "rng": capture_rng_state(),
            "skipped_steps": self.skipped_steps,
            "rewards": {reward.name: reward.state_dict() for reward in self.rewards},
            "rollout": self.rollout.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("perception_rl")
        if state is None:  # a checkpoint from elsewhere: weights and optimizer only
            return
        self.skipped_steps = state["skipped_steps"]
        for reward in self.rewards:
            reward.load_state_dict(state["rewards"].get(reward.name, {}))
        self.rollout.load_state_dict(state["rollout"])
        # Restored at the next step's start: Lightning's own set-up after loading must not shift the draws.
        self._rng_to_restore = state["rng"]

    def on_train_batch_start(self, batch: list[Sample], batch_idx: int) -> None:
        if self._rng_to_restore is not None:
            restore_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay, betas=self.hparams.adam_betas
        )
        warmup = math.ceil(self.hparams.warmup_ratio * self._total_optimizer_steps())
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _total_optimizer_steps(self) -> int:
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            return self.trainer.max_steps
        return int(self.trainer.estimated_stepping_batches) * self.hparams.update_epochs * self.hparams.num_mini_batches

    # ----------------------------------------------------------------- training
    def training_step(self, batch: list[Sample], batch_idx: int) -> None:
        start = time.perf_counter()
        rollouts = self.generate(batch)
        rollout_time = time.perf_counter() - start
        breakdown = score_all(self.rewards, rollouts)
        reward_time = time.perf_counter() - start - rollout_time
        advantages = grpo.group_advantages(
            breakdown.total, rollouts.group_size, scale_by_std=self.hparams.scale_advantages_by_std
        )
        update_stats = self.update_policy(rollouts, advantages, valid=~torch.isnan(breakdown.total))
        step_time = time.perf_counter() - start
        self.log_step(rollouts, breakdown, advantages, update_stats, rollout_time, reward_time, step_time)
        # Without the prompts' pixel tensors, so nothing large outlives the step.
        self.scored = ScoredRollouts(dataclasses.replace(rollouts, prompt_inputs={}), breakdown, advantages)

    def generate(self, batch: list[Sample], greedy: bool = False) -> Rollouts:
        with self._gathered_for_generation():
            return self.rollout.generate(
                self.model, self.processor, batch, greedy=greedy, synced_devices=self._needs_synced_generation()
            )

    def update_policy(self, rollouts: Rollouts, advantages: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
        """Optimizer steps on one rollout batch: epochs x mini-batches, each accumulated over micro-batches.

        Each mini-batch's loss is normalised once, by its valid tokens / sequences counted on every rank
        (`grpo.loss_normaliser`), so micro-batch size and data parallelism leave the gradient unchanged.
        """
        hp = self.hparams
        n = len(rollouts)
        on_policy = hp.update_epochs == 1 and hp.num_mini_batches == 1
        old_logp = None if on_policy else self._logprobs_no_grad(rollouts, self.model)
        ref_logp = self._reference_logprobs(rollouts) if self.hparams.kl_coef > 0 else None
        mask = rollouts.completion_mask * valid[:, None]  # [N, L] abstained completions removed
        lengths = rollouts.completion_mask.sum(-1)  # [N]
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        total = grpo.LossOutput(torch.zeros((), dtype=torch.float64))  # detached sums, for logging
        grad_norms: list[float] = []
        for _ in range(hp.update_epochs):
            order = torch.randperm(n) if hp.num_mini_batches > 1 else torch.arange(n)
            for mini in order.chunk(hp.num_mini_batches):
                mini = self._micro_batch_order(rollouts, mini, lengths)
                local = grpo.loss_normaliser(mask[mini], hp.loss_aggregation, self.rollout.max_new_tokens)
                normaliser = self._sum_over_ranks(local.reshape(1))[0]
                optimizer.zero_grad()
                for micro in mini.split(hp.micro_batch_size or len(mini)):
                    out = self.policy_loss(rollouts, micro, advantages, mask, normaliser, old_logp, ref_logp)
                    # DDP and FSDP average gradients over ranks; the normaliser already spans all ranks.
                    self.manual_backward(out.loss * self._world_size())
                    total = total + out
                grad_norms.append(self._step(optimizer, scheduler))
        return self._update_stats(total, grad_norms)

    def _micro_batch_order(self, rollouts: Rollouts, mini: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Longest first, so each micro-batch holds similar lengths and is trimmed to its own longest; with the
        shared prefix, group by group (longest group first), so a prompt is computed once per micro-batch it
        appears in (once, when micro_batch_size is a multiple of G)."""
        if not self._shared_prefix:
            return mini[lengths[mini].argsort(descending=True, stable=True)]
        groups = rollouts.group_ids[mini]
        longest = torch.zeros(int(rollouts.group_ids.max()) + 1, dtype=lengths.dtype).scatter_reduce_(
            0, groups, lengths[mini], "amax", include_self=False)  # [P] each group's longest completion
        mini = mini[groups.argsort(stable=True)]
        return mini[longest[rollouts.group_ids[mini]].argsort(descending=True, stable=True)]

    def policy_loss(
        self,
        rollouts: Rollouts,
        indices: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        normaliser: torch.Tensor | float,
        old_logp: torch.Tensor | None,
        ref_logp: torch.Tensor | None,
    ) -> grpo.LossOutput:
        """Forward the completions at `indices` and return their contribution to the mini-batch loss.

        `mask` is the [N, L] completion mask with abstained rows zeroed, `normaliser` the mini-batch's
        `grpo.loss_normaliser` summed over ranks.
        """
        hp = self.hparams
        logp, entropy = self._forward_logprobs(self.model, rollouts, indices, with_entropy=True)  # [n, l] each
        length = logp.shape[1]  # this micro-batch's longest completion

        def rows(values: torch.Tensor | None) -> torch.Tensor | None:  # [N, L] -> [n, l]
            return None if values is None else values[indices, :length].to(logp.device)

        old = logp.detach() if old_logp is None else rows(old_logp)  # [n, l]
        engine_logp = rows(rollouts.logprobs)  # [n, l], when the engine reports them
        weights = None
        cap = self.rollout.importance_sampling_cap
        if cap is not None and engine_logp is not None:
            # Truncated importance weights for the engine-vs-trainer mismatch; no gradient through them.
            weights = torch.exp(old - engine_logp).clamp(max=cap)  # [n, l]
        return grpo.grpo_loss(
            logp, old, advantages[indices].to(logp.device), rows(mask), normaliser,
            hp.loss_aggregation, hp.clip_low, hp.clip_high, hp.dual_clip,
            ref_logp=rows(ref_logp), kl_coef=hp.kl_coef, kl_estimator=hp.kl_estimator,
            entropy=entropy, entropy_coef=hp.entropy_coef, importance_weights=weights, rollout_logp=engine_logp,
        )

    def _update_stats(self, total: grpo.LossOutput, grad_norms: list[float]) -> dict[str, float]:
        """Means over every rank's valid tokens (one all-reduce), the loss per update and the mean grad norm."""
        keys = sorted(k for k in total.sums if k != "tokens")
        values = [total.loss.detach() / len(grad_norms), total.sums["tokens"], *(total.sums[k] for k in keys)]
        local = torch.stack([v.double().cpu() for v in values])  # to the CPU once per step, not per micro-batch
        summed = self._sum_over_ranks(local).tolist()
        tokens = max(summed[1], 1.0)
        stats = {"loss": summed[0], **{k: v / tokens for k, v in zip(keys, summed[2:])}}
        stats["grad_norm"] = sum(grad_norms) / len(grad_norms)
        return stats

    def _forward_logprobs(
        self, model: torch.nn.Module, rollouts: Rollouts, indices: torch.Tensor, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-token log-probs [n, l] (and entropies) of the sampled completions under `model`, l being the
        longest of these completions (the rest is padding).

        The entropy carries a gradient only when the loss uses it (`entropy_coef > 0`); otherwise it is
        computed for logging, without gradient and a chunk at a time.
        """
        length = rollouts.longest_completion(indices)
        if self._shared_prefix:
            logits = shared_prefix.completion_logits(model, self._family, rollouts, indices, length)  # [n, l, V]
        else:
            inputs = {k: v.to(self.device) for k, v in self._family.sequence_inputs(rollouts, indices, length).items()}
            logits = model(**inputs, use_cache=False, logits_to_keep=length + 1).logits[:, :-1]  # [n, l, V]
        # In place (the output head's backward needs its input, not its output): no second [n, l, V] copy.
        logits.div_(self.rollout.temperature)  # log-probs of the distribution actually sampled,
        if self._suppressed is not None:  # which never holds the vision placeholders the engines suppress
            logits.index_fill_(-1, self._suppressed.to(logits.device), float("-inf"))
        logp = grpo.token_logprobs(logits, rollouts.completion_ids[indices, :length].to(self.device))  # [n, l]
        entropy = None
        if with_entropy:
            wants_grad = self.hparams.entropy_coef != 0 and torch.is_grad_enabled()
            entropy = grpo.entropy_from_logits(logits) if wants_grad else grpo.entropy_for_logging(logits)
        return logp, entropy

    def _reference_logprobs(self, rollouts: Rollouts) -> torch.Tensor:
        if self._reference:
            return self._logprobs_no_grad(rollouts, self._reference[0])
        with self.model.disable_adapter():
            return self._logprobs_no_grad(rollouts, self.model)

    @torch.no_grad()
    def _logprobs_no_grad(self, rollouts: Rollouts, model: torch.nn.Module) -> torch.Tensor:
        """[N, L] log-probs, a micro-batch at a time (each trimmed, then padded back with zeros)."""
        width = rollouts.completion_ids.shape[1]
        chunks = torch.arange(len(rollouts)).split(self.hparams.micro_batch_size or len(rollouts))
        parts = [self._forward_logprobs(model, rollouts, idx)[0].cpu() for idx in chunks]
        return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])

    def _step(self, optimizer, scheduler) -> float:
        """Clip, then step unless the gradient norm is non-finite (that step is skipped and counted)."""
        max_norm = self.hparams.max_grad_norm if self.hparams.max_grad_norm is not None else math.inf
        norm = sharding.clip_grad_norm(self.model, max_norm)
        if math.isfinite(norm):
            optimizer.step()
            scheduler.step()
            self.rollout.on_weights_updated()
        else:
            self.skipped_steps += 1
        optimizer.zero_grad()
        return norm

    # ----------------------------------------------------------------- logging
    def log_step(
        self,
        rollouts: Rollouts,
        breakdown: RewardBreakdown,
        advantages: torch.Tensor,
        update_stats: dict[str, float],
        rollout_time: float,
        reward_time: float,
        step_time: float,
    ) -> None:
        lengths = rollouts.completion_mask.sum(-1).float()  # [N]
        tokens = float(lengths.sum())
        metrics = {
            **breakdown.log("reward"),
            "advantage/mean": float(advantages.mean()),
            "advantage/std": float(advantages.std()) if len(advantages) > 1 else 0.0,
            "advantage/zero_fraction": float((advantages == 0).float().mean()),
            **{f"policy/{k}": v for k, v in update_stats.items()},
            "policy/skipped_steps": float(self.skipped_steps),
            "policy/lr": self.optimizers().param_groups[0]["lr"],
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "response_length/truncated_fraction": float(rollouts.truncated.float().mean()),
            "time/rollout_s": rollout_time,
            "time/reward_s": reward_time,
            "time/update_s": step_time - rollout_time - reward_time,
            "time/step_s": step_time,
            **{("time/sync_s" if k == "sync_s" else f"sync/{k}"): v for k, v in self.rollout.pop_sync_stats().items()},
            "throughput/tokens_per_s": tokens / step_time,
            "throughput/rollout_tokens_per_s": tokens / max(rollout_time, 1e-9),
        }
        self.step_metrics = {f"train/{k}": v for k, v in metrics.items()}
        metrics = {k: v for k, v in self.step_metrics.items() if not math.isnan(v)}
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(rollouts.samples))
        self.log("reward", breakdown.log()["reward/total"], prog_bar=True, on_step=True, batch_size=len(rollouts.samples))

    # ----------------------------------------------------------------- evaluation
    def validation_step(self, batch: list[Sample], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def setup(self, stage: str) -> None:
        if stage == "test":  # before the test dataloader exists: items finished by an earlier run leave the set
            self.evaluation.setup(self.trainer, self)

    def on_test_start(self) -> None:
        self.evaluation.start(self.trainer, self)

    def test_step(self, batch: list[Sample], batch_idx: int) -> None:
        # Items done by an earlier run or repeated by the sampler are not generated, unless generation is
        # sharded (then every process must take part in every step) and only their rows are left out.
        batch = self.evaluation.admit(batch, can_skip=not self._needs_synced_generation())
        if batch:
            self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        scalars = self.evaluation.finish(self.trainer)
        self.log_dict({f"test/benchmark/{k}": v for k, v in scalars.items()}, sync_dist=True)

    def _evaluate(self, batch: list[Sample], stage: str) -> None:
        """One completion per prompt, scored by every reward; means accumulate in torchmetrics.

        Validation decodes greedily; testing decodes as `evaluation` says and also writes one graded row per item.
        """
        if stage == "test":
            with self.evaluation.decoding(self.rollout) as greedy:
                rollouts = self.generate(batch, greedy=greedy)
        else:
            rollouts = self.generate(batch, greedy=True)
        breakdown = score_all(self.rewards, rollouts)
        metrics = self.eval_metrics[stage]
        for name, output in breakdown.outputs.items():
            metrics[name].update(output.logged_scores())  # e.g. the visual reward leaves unannotated problems out
        metrics["total"].update(breakdown.total)
        metrics["response_length"].update(rollouts.completion_mask.sum(-1).float())
        for name, metric in metrics.items():
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, batch_size=len(batch))
        if stage == "test":
            self.evaluation.record(self, rollouts, breakdown)

    # ----------------------------------------------------------------- export
    def on_fit_end(self) -> None:
        if self.hparams.export_hf_model:
            self.export_pretrained(Path(self.trainer.default_root_dir) / "hf_model")

    def export_pretrained(self, path: str | Path) -> None:
        """Save the policy (full weights, gathered from shards if needed) and processor in Hugging Face format."""
        state = sharding.full_state_dict(self.model)  # every rank takes part in the gather; rank 0 writes
        if self.trainer.is_global_zero:
            if is_peft_model(self.model):
                export_merged_adapters(self.policy, state if state is not None else self.model.state_dict(), Path(path))
            else:
                self.model.save_pretrained(path, state_dict=state)
            self.processor.save_pretrained(path)
        self.trainer.strategy.barrier("export_pretrained")

    # ----------------------------------------------------------------- distributed helpers
    @staticmethod
    def _distributed() -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def _world_size(self) -> int:
        return torch.distributed.get_world_size() if self._distributed() else 1

    def _sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of a small float tensor over all ranks (itself on one process), returned on CPU."""
        if self._world_size() == 1:
            return values
        values = values.to(self.device, torch.float64)
        torch.distributed.all_reduce(values)
        return values.cpu()

    def _needs_synced_generation(self) -> bool:
        """Sharded weights are gathered in every forward, so all ranks must keep stepping together."""
        return sharding.is_sharded(self.model) and self._world_size() > 1

    def _gathered_for_generation(self):
        if not self.rollout.decodes_with_policy:  # e.g. vLLM: gathering the policy would only cost memory
            return contextlib.nullcontext()
        return sharding.gathered_for_generation(self.model)
