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
