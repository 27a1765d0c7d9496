"""Test-only reward functions, importable by path (`helpers.digit_share`) in configs the tests write.

The tiny random policy never earns the real rewards; these give varied scores so that GRPO
advantages, and therefore weight updates, are non-zero.
"""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


def digit_share(completions: list[str], records: list[dict]) -> list[float]:
    """Share of characters that are digits (varies across random samples)."""
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in completions]


def letter_a_share(completions: list[str], records: list[dict]) -> list[float]:
    return [text.lower().count("a") / max(len(text), 1) for text in completions]


class KillAtStep(Callback):
    """SIGKILLs its own process once `global_step` reaches `step`.

    Checkpoint callbacks run after user callbacks, so the step it stops at is never checkpointed:
    the run dies exactly as a preempted job would, between saves.
    """

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


from lightning.pytorch.strategies import FSDPStrategy  # noqa: E402


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP1 strategy on CPU processes, for tests only.

    Lightning refuses `strategy="fsdp"` without a GPU by checking the exact class, so a subclass passes;
    `GRPOModule` wraps the policy itself with `device_id=strategy.root_device`, which is the CPU here.
    """


# ---------------------------------------------------------------------------------------------- scripted rollouts
import zlib  # noqa: E402

import torch  # noqa: E402

from perception_rl.policy import tokenizer_of  # noqa: E402
from perception_rl.rollout import HFGenerateEngine, Rollouts  # noqa: E402
from perception_rl.rollout.base import completion_mask, encode_prompts, stop_token_ids  # noqa: E402


class ScriptedEngine(HFGenerateEngine):
    """Completions fixed by each record's id, not sampled: the same rollouts however prompts are split
    over processes or batches, so one process on the union of two ranks' prompts sees exactly their data.

    Completion k of a prompt is `1 + crc32(id) % 7 + 2k` digit words and an end token: lengths differ
    between prompts (and so between ranks). With `extra_abstained` the last completion of every group is
    instead the word "abstain", which `words_or_abstain` abstains on. `last_tokens` and `last_ids` keep the
    last batch's completion token count and record ids.
    """

    last_tokens = 0
    last_ids: list[str] = []

    def __init__(self, num_generations: int = 4, max_new_tokens: int = 24, extra_abstained: bool = False):
        super().__init__(num_generations=num_generations, max_new_tokens=max_new_tokens)
        self.extra_abstained = extra_abstained

    def generate(self, model, processor, samples, greedy=False, synced_devices=False) -> Rollouts:
        tokenizer = tokenizer_of(processor)
        prompts, inputs = encode_prompts(processor, samples, self.max_prompt_length)
        group = 1 if greedy else self.num_generations
        stop = stop_token_ids(model, processor)
        rows = []
        for sample in samples:
            base = 1 + zlib.crc32(sample.record.id.encode()) % 7
            for k in range(group):
                words = " ".join(str((base + k + t) % 10) for t in range(base + 2 * k))
                if self.extra_abstained and k == group - 1:
                    words = "abstain abstain"
                rows.append(tokenizer(words, add_special_tokens=False)["input_ids"][: self.max_new_tokens - 1] + [stop[0]])
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
        mask, truncated = completion_mask(ids, stop)
        ScriptedEngine.last_tokens = int(mask.sum())
        ScriptedEngine.last_ids = [s.record.id for s in samples]
        return Rollouts(
            samples=samples, prompts=prompts, prompt_inputs=inputs, completion_ids=ids, completion_mask=mask,
            completions=tokenizer.batch_decode(ids, skip_special_tokens=True),
            group_ids=torch.arange(len(samples)).repeat_interleave(group), group_size=group, truncated=truncated,
        )


def words_or_abstain(completions: list[str], records: list[dict]) -> list[float]:
    """Number of words, abstaining (NaN) on completions of 3 or 8 words or saying "abstain"."""
    return [float("nan") if len(t.split()) in (3, 8) or "abstain" in t else float(len(t.split())) for t in completions]


class GradientRecorder(Callback):
    """Saves each rank's flattened gradient before every optimizer step (and its rollout token count)
    to `<dirpath>/grad_rank<R>_step<S>.pt`, with the
    record ids it trained on."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad.detach().flatten() for p in pl_module.model.parameters() if p.grad is not None]
        os.makedirs(self.dirpath, exist_ok=True)
        torch.save(
            {"grad": torch.cat(grads).double(), "tokens": ScriptedEngine.last_tokens, "ids": ScriptedEngine.last_ids},
            os.path.join(self.dirpath, f"grad_rank{trainer.global_rank}_step{trainer.global_step}.pt"),
        )


class RolloutAllGatherBytes(Callback):
    """Counts the bytes FSDP2 all-gathers during each rollout (`GRPOModule.generate`) and saves them, with the
    model's full parameter bytes, to `<dirpath>/allgather_rank<R>.json` when training ends."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath
        self.per_rollout: list[int] = []

    def on_train_start(self, trainer, pl_module) -> None:
        original = pl_module.generate

        def counted(*args, **kwargs):
            real = torch.distributed.all_gather_single
            gathered = [0]

            def counting(output, *rest, **options):
                gathered[0] += output.numel() * output.element_size()
                return real(output, *rest, **options)

            torch.distributed.all_gather_single = counting
            try:
                return original(*args, **kwargs)
            finally:
                torch.distributed.all_gather_single = real
                self.per_rollout.append(gathered[0])

        pl_module.generate = counted

    def on_train_end(self, trainer, pl_module) -> None:
        import json

        full = sum(p.numel() * p.element_size() for p in pl_module.model.parameters())  # DTensor numel is global
        os.makedirs(self.dirpath, exist_ok=True)
        with open(os.path.join(self.dirpath, f"allgather_rank{trainer.global_rank}.json"), "w") as f:
            json.dump({"per_rollout": self.per_rollout, "param_bytes": full}, f)


class ShardBytes(Callback):
    """Saves the bytes of the policy's and the KL reference's parameters held by this rank (a DTensor's local
    shard) to `<dirpath>/shard_bytes_rank<R>.json` when training ends."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_end(self, trainer, pl_module) -> None:
        import json

        def local_bytes(model) -> int:
            tensors = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
            return sum(t.numel() * t.element_size() for t in tensors)

        os.makedirs(self.dirpath, exist_ok=True)
        with open(os.path.join(self.dirpath, f"shard_bytes_rank{trainer.global_rank}.json"), "w") as f:
            json.dump({"policy": local_bytes(pl_module.model), "reference": local_bytes(pl_module._reference[0])}, f)


class FullWeightsDigest(Callback):
    """Iterates `sharding.iter_full_weights` on every rank when training ends and saves each entry's shape and
    sum to `<dirpath>/full_weights_rank<R>.json`: every rank must see the same full weights."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_end(self, trainer, pl_module) -> None:
        import json

        from perception_rl.sharding import iter_full_weights

        digest = {name: [list(t.shape), float(t.double().sum())] for name, t in iter_full_weights(pl_module.model)}
        os.makedirs(self.dirpath, exist_ok=True)
        with open(os.path.join(self.dirpath, f"full_weights_rank{trainer.global_rank}.json"), "w") as f:
            json.dump(digest, f)


# ---------------------------------------------------------------------------------------------- vLLM checks
from perception_rl.rollout.vllm import VLLMEngine  # noqa: E402  (vllm itself is imported only on use)


class EngineAgreement(Callback):
    """After every optimizer step, asks the rollout engine for greedy completions of two fixed training prompts
    (through `GRPOModule.generate`, so a stale engine syncs exactly as in training) and compares them with the
    trainer's own forward pass: greedy tokens against the trainer's argmax (where its top two logits are
    more than 1e-4 apart) and the engine's log-probs against the trainer's. Appends one JSON line per step
    to `<dirpath>/agreement_rank<R>.jsonl`."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import json

        dataset = trainer.train_dataloader.dataset
        rank = trainer.global_rank
        probe = [dataset[(2 * rank + i) % len(dataset)] for i in range(2)]  # each rank its own prompts
        rollouts = pl_module.generate(probe, greedy=True)
        inputs = pl_module._family.sequence_inputs(rollouts, torch.arange(len(rollouts)))
        with torch.no_grad():
            logits = pl_module.model(**inputs, use_cache=False).logits[:, -rollouts.completion_ids.shape[1] - 1 : -1]
        logits = logits.float()
        if pl_module._suppressed is not None:
            logits[..., pl_module._suppressed] = float("-inf")
        logp = torch.log_softmax(logits, -1).gather(-1, rollouts.completion_ids.unsqueeze(-1)).squeeze(-1)
        mask = rollouts.completion_mask.bool()
        top2 = logits.topk(2, dim=-1).values
        decisive = mask & (top2[..., 0] - top2[..., 1] > 1e-4)
        greedy_equal = bool((logits.argmax(-1) == rollouts.completion_ids)[decisive].all())
        row = {
            "step": trainer.global_step, "rank": rank, "greedy_equal": greedy_equal, "tokens": int(mask.sum()),
            "max_abs_logprob_diff": float((logp - rollouts.logprobs)[mask].abs().max()),
        }
        os.makedirs(self.dirpath, exist_ok=True)
        with open(os.path.join(self.dirpath, f"agreement_rank{rank}.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")


class StaleVLLMEngine(VLLMEngine):
    """A deliberately broken engine for the tests: the one on `stale_rank` never learns that the weights
    changed, so it keeps sampling from the initial policy (what happened on every rank but 0 when only rank 0
    received the full state dict)."""

    def __init__(self, stale_rank: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.stale_rank = stale_rank

    def on_weights_updated(self) -> None:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank != self.stale_rank:
            super().on_weights_updated()


# ---------------------------------------------------------------------------------------------- judges that fail
from dataclasses import replace as _replace  # noqa: E402

from perception_rl.judge.rules import RuleJudge  # noqa: E402
from perception_rl.judge.types import JudgeReply, JudgeRequest  # noqa: E402


class PatchyJudge(RuleJudge):
    """`RuleJudge` whose replies sometimes cannot be read, decided by the response's hash (so the same
    response always gets the same reply): for a third of the responses the reply holds no verdict tag (an
    "unparsable" failure), for another third its last item's tag holds a word instead of a number."""

    def _reply(self, request: JudgeRequest) -> JudgeReply:
        reply = super()._reply(request)
        kind = zlib.crc32(request.response.encode()) % 3
        if kind == 0:
            return _replace(reply, text="I cannot tell from this response.")
        if kind == 1:
            tag, last = self.template.tag, len(request.annotations)
            kept = reply.text.rsplit(f"<{tag}{last}>", 1)[0]
            return _replace(reply, text=f"{kept}<{tag}{last}>present</{tag}{last}>")
        return reply


from perception_rl.rewards.accuracy import AccuracyReward  # noqa: E402
from perception_rl.rewards.base import RewardOutput  # noqa: E402


class AnyDigitAccuracy(AccuracyReward):
    """An `AccuracyReward` (so the rollout viewer treats it as the answer's accuracy) that counts a response
    right when it holds a digit: a random tiny policy then gets some answers "right" and some not."""

    def score(self, rollouts: Rollouts) -> RewardOutput:
        return RewardOutput(torch.tensor([float(any(ch.isdigit() for ch in text)) for text in rollouts.completions]))
