"""Framework-agnostic stage timing, peak memory and CPU-disturbance measurement for training steps.

`Probe` hooks the model and the optimizer, never the framework, so the same instrument times
perception-rl, TRL and the floor:

- rollout prefill: everything until the logits of the first completion token exist: `generate` called ->
  end of its first forward (input expansion, vision tower, prompt pass), plus the forwards of more than one
  position that an engine runs itself inside `Probe.rollout()` (e.g. a prompt prefilled once per group
  before `generate` continues from copies of its KV cache);
- rollout decode: the rest of `generate` (the other forwards, sampling, stopping checks), plus one-position
  forwards run inside `Probe.rollout()` outside `generate`;
- rewards: the reward function itself (`Probe.timed`);
- log-prob passes: forwards without gradient outside `generate` (old-policy / reference log-probs);
- update forward: forwards with gradient;
- loss + backward: end of a gradient forward -> the last parameter gradient accumulated after it;
- clip + glue: last gradient -> optimizer.step (gradient clipping, the framework's hooks);
- optimizer: AdamW's `step`;
- other: the step's wall time minus all of the above (prompt encoding, text decoding, advantages,
  bookkeeping, logging inside the step).

Peak memory is the process's peak resident set size (VmHWM from /proc/self/status), reset just before the
first step by writing 5 to /proc/self/clear_refs. It covers everything the process holds (tensors, Python
objects, libraries), not tensors alone. Disturbance: CPU seconds spent by *other* processes during each
step (machine-wide busy time from /proc/stat minus this process's CPU time).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections import defaultdict

import torch

STAGES = (
    "rollout_prefill", "rollout_decode", "rewards", "logprob_passes", "update_forward", "loss_backward",
    "clip_glue", "optimizer", "other",
)


def _proc_status_kib(field: str) -> int | None:
    """A `Vm*` field of /proc/self/status in KiB, or None where the file or field is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """Peak resident set size in MiB (since the last reset, else since the process started)."""
    kib = _proc_status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024


def rss_mib() -> float:
    """Current resident set size in MiB (NaN where /proc is unavailable)."""
    kib = _proc_status_kib("VmRSS")
    return float("nan") if kib is None else kib / 1024


def machine_busy_s() -> float:
    """CPU seconds all processes of the machine have been busy (every core, from /proc/stat)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Probe:
    """Per-step stage times of whatever trains `model`; see the module docstring for the stages.

    Call `begin_step` / `end_step` around each training step (a framework callback does), wrap the reward
    function with `timed`, and hand the optimizer to `watch_optimizer` once it exists.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.steps: list[dict] = []
        self.peak_reset = False
        self.rss_before_mib = float("nan")
        self._step: dict | None = None
        self._in_generate = False
        self._in_rollout = False  # inside an engine's rollout (Probe.rollout), generate or not
        self._forward_start = 0.0
        self._backward_open_at: float | None = None  # end of the last gradient forward
        self._last_grad = 0.0
        self._forward_positions = 1  # sequence length of the forward under way
        self._prefill_end: float | None = None  # end of the current generate's first forward
        self._decode_forwards = 0
        self._optimizer_start = 0.0
        self._step_start = 0.0
        self._step_cpu = (0.0, 0.0)  # machine busy seconds, own CPU seconds at the step's start
        self._watched: set[int] = set()
        self._install()

    # ------------------------------------------------------------------ hooks
    def _install(self) -> None:
        """Forward hooks on the model, a post-accumulate hook on each trainable parameter, a wrapped `generate`."""
        self.model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        self.model.register_forward_hook(self._after_forward)
        for param in self.model.parameters():
            if param.requires_grad:
                param.register_post_accumulate_grad_hook(self._on_grad)
        generate = self.model.generate

        @functools.wraps(generate)
        def timed_generate(*args, **kwargs):
            return self._generate(generate, *args, **kwargs)

        self.model.generate = timed_generate  # an instance attribute: every caller of model.generate gets it

    def watch_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Time `optimizer.step` (idempotent)."""
        if id(optimizer) in self._watched:
            return
        self._watched.add(id(optimizer))
        optimizer.register_step_pre_hook(lambda *_: self._optimizer_begin())
        optimizer.register_step_post_hook(lambda *_: self._optimizer_end())

    def timed(self, function):
        """`function` with its calls timed as the rewards stage."""

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._add("rewards", time.perf_counter() - start)

        return wrapper

    @contextlib.contextmanager
    def rollout(self):
        """Mark an engine's whole rollout: forwards without gradient in it count as rollout, not log-prob passes."""
        self._in_rollout = True
        try:
            yield
        finally:
            self._in_rollout = False

    def _generate(self, generate, *args, **kwargs):
        start = time.perf_counter()
        self._in_generate = True
        self._prefill_end = None
        self._decode_forwards = 0
        try:
            out = generate(*args, **kwargs)
        finally:
            self._in_generate = False
        end = time.perf_counter()
        prefill_end = self._prefill_end or end
        self._add("rollout_prefill", prefill_end - start)
        self._add("rollout_decode", end - prefill_end)
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        prompt_length = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else args[0].shape[1]
        self._note("generated_shape", [int(sequences.shape[0]), int(sequences.shape[1] - prompt_length)])
        self._note("decode_forwards", self._decode_forwards)
        return out

    def _before_forward(self, module, args, kwargs) -> None:
        now = time.perf_counter()
        self._forward_start = now
        ids = kwargs.get("input_ids", args[0] if args else None)
        shape = list(ids.shape) if isinstance(ids, torch.Tensor) else None
        if self._in_generate:
            if self._prefill_end is None:
                self._note("prefill_shape", shape)
            else:
                self._decode_forwards += 1
        elif self._rollout_forward():
            self._note_append("rollout_forward_shapes", shape)
            self._forward_positions = shape[1] if shape and len(shape) > 1 else 1
        elif torch.is_grad_enabled():
            self._close_backward()
            self._note_append("update_forward_shapes", shape)
        else:
            self._note_append("logprob_pass_shapes", shape)

    def _after_forward(self, module, args, output) -> None:
        now = time.perf_counter()
        if self._in_generate:
            if self._prefill_end is None:
                self._prefill_end = now
            return
        if self._rollout_forward():
            stage = "rollout_prefill" if self._forward_positions > 1 else "rollout_decode"
            self._add(stage, now - self._forward_start)
            return
        if torch.is_grad_enabled():
            self._add("update_forward", now - self._forward_start)
            self._backward_open_at = now
        else:
            self._add("logprob_passes", now - self._forward_start)

    def _rollout_forward(self) -> bool:
        """A forward an engine runs itself during its rollout (outside `generate`)."""
        return self._in_rollout and not torch.is_grad_enabled()

    def _on_grad(self, param) -> None:
        self._last_grad = time.perf_counter()

    def _close_backward(self) -> float:
        """Book loss + backward since the last gradient forward; returns when the last gradient arrived."""
        if self._backward_open_at is not None and self._last_grad > self._backward_open_at:
            self._add("loss_backward", self._last_grad - self._backward_open_at)
            self._backward_open_at = None
            return self._last_grad
        return time.perf_counter()

    def _optimizer_begin(self) -> None:
        backward_end = self._close_backward()
        self._optimizer_start = time.perf_counter()
        self._add("clip_glue", max(self._optimizer_start - backward_end, 0.0))

    def _optimizer_end(self) -> None:
        self._add("optimizer", time.perf_counter() - self._optimizer_start)

    # ------------------------------------------------------------------ steps
    def begin_run(self) -> None:
        """Reset the peak-RSS mark; call right before the first step."""
        self.rss_before_mib = rss_mib()
        self.peak_reset = reset_peak_rss()

    def begin_step(self) -> None:
        self._step = {"times": defaultdict(float), "work": {}}
        self._backward_open_at = None
        self._step_cpu = (machine_busy_s(), time.process_time())
        self._step_start = time.perf_counter()

    def end_step(self, extra: dict | None = None) -> dict:
        """Close the step: its wall time, per-stage times, `other`, work shapes and foreign CPU seconds."""
        wall = time.perf_counter() - self._step_start
        busy, own = machine_busy_s() - self._step_cpu[0], time.process_time() - self._step_cpu[1]
        step = self._step
        self._step = None
        times = {stage: step["times"].get(stage, 0.0) for stage in STAGES if stage != "other"}
        times["other"] = wall - sum(times.values())
        record = {"step_s": wall, "stages_s": times, "work": step["work"],
                  "foreign_cpu_s": max(busy - own, 0.0), "own_cpu_s": own, **(extra or {})}
        self.steps.append(record)
        return record

    def summary(self) -> dict:
        """Everything measured in this run."""
        return {"steps": self.steps, "peak_rss_mib": peak_rss_mib(), "rss_before_mib": self.rss_before_mib,
                "peak_rss_since": "first step" if self.peak_reset else "process start"}

    def _add(self, stage: str, seconds: float) -> None:
        if self._step is not None:
            self._step["times"][stage] += seconds

    def _note(self, key: str, value) -> None:
        if self._step is not None:
            self._step["work"].setdefault(key, value)

    def _note_append(self, key: str, value) -> None:
        if self._step is not None:
            self._step["work"].setdefault(key, []).append(value)
