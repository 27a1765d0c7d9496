"""Rollouts with vLLM, colocated in the training process (the `vllm` extra; imported only when used).

The engine is built lazily from the policy's folder on the first `generate`. After every optimizer step
the module calls `on_weights_updated()`; the next `generate` then pushes the current weights into the
engine (gathered from shards, LoRA merged, in batches of bounded size). Between rollouts the engine can
sleep, releasing its weights and KV cache to make room for the update.

GPU only: vLLM's CPU build serves no Qwen2.5-VL. Everything below that does not need a live engine
(request building, sampling parameters, output conversion, LoRA merging, weight batching) is a pure
function tested on CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from perception_rl.data.datamodule import Sample
from perception_rl.policy import is_peft_model, tokenizer_of
from perception_rl.rollout.base import RolloutEngine, encode_prompts, suppressed_token_ids
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


def merged_lora_weights(model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights a plain (adapter-free) model would have: W + scale * B @ A for each adapted layer.

    Names are the base model's (peft's `base_model.model.` prefix and `.base_layer` removed). Reads
    `state` (e.g. gathered from shards) or the model's own state dict; never modifies the model.
    """
    state = state if state is not None else model.state_dict()
    scales = _lora_scales(model)
    for name, tensor in state.items():
        if "lora_" in name:
            continue
        base_name = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
        layer = name.removesuffix(".weight").removesuffix(".base_layer") if ".base_layer.weight" in name else None
        if layer is not None and f"{layer}.lora_A.default.weight" in state:
            a, b = state[f"{layer}.lora_A.default.weight"], state[f"{layer}.lora_B.default.weight"]
            tensor = tensor + scales[layer] * (b.float() @ a.float()).to(tensor.dtype)
        yield base_name, tensor


def _lora_scales(model: torch.nn.Module) -> dict[str, float]:
    if not is_peft_model(model):
        return {}
    return {name: module.scaling["default"] for name, module in model.named_modules() if hasattr(module, "lora_A")}


def weight_batches(items: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group (name, tensor) pairs into batches of at most `max_bytes` (a larger tensor travels alone)."""
    batch, size = [], 0
    for name, tensor in items:
        nbytes = tensor.numel() * tensor.element_size()
        if batch and size + nbytes > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append((name, tensor))
        size += nbytes
    if batch:
        yield batch


class VLLMEngine(RolloutEngine):
    """Colocated vLLM rollouts (GPU; install the `vllm` extra).

    Args:
        num_generations: G, completions per prompt.
        max_new_tokens: completion length limit.
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        top_k: keep the k most likely tokens; 0 disables it.
        max_prompt_length: prompts longer than this (image tokens included) are an error.
        gpu_memory_utilization: share of GPU memory vLLM may take (weights + KV cache).
        tensor_parallel_size: GPUs per engine.
        dtype: engine weights dtype.
        max_model_len: context length (prompt + completion); None uses the model's.
        sleep_between_rollouts: release engine memory while the policy updates (vLLM sleep mode).
        sync_batch_bytes: weights pushed into the engine per call, bounding the extra memory of a sync.
        seed: base sampling seed; each rollout call uses seed + call index, so runs repeat exactly.
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
        tensor_parallel_size: int = 1,
        dtype: str = "bfloat16",
        max_model_len: int | None = None,
        sleep_between_rollouts: bool = True,
        sync_batch_bytes: int = 1 << 30,
        seed: int = 0,
        importance_sampling_cap: float | None = None,
    ):
        super().__init__(num_generations, max_new_tokens, temperature, top_p, top_k, max_prompt_length)
        self.gpu_memory_utilization = gpu_memory_utilization
        self.tensor_parallel_size = tensor_parallel_size
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.sleep_between_rollouts = sleep_between_rollouts
        self.sync_batch_bytes = sync_batch_bytes
        self.seed = seed
        self.importance_sampling_cap = importance_sampling_cap
        self._llm = None
        self._stale = False
        self._calls = 0

    def on_weights_updated(self) -> None:
        self._stale = True

    def state_dict(self) -> dict:
        return {"calls": self._calls}  # the next call's seed offset

    def load_state_dict(self, state: dict) -> None:
        self._calls = int(state.get("calls", 0))
        self._stale = True  # the engine was started from the base weights, not the checkpoint's

    def generate(
        self, model: torch.nn.Module, processor, samples: list[Sample], greedy: bool = False, synced_devices: bool = False
    ) -> Rollouts:
        SamplingParams = _vllm().SamplingParams
        prompts, inputs = encode_prompts(processor, samples, self.max_prompt_length)
        llm = self._engine(model)
        if self.sleep_between_rollouts:
            llm.wake_up()
        if self._stale:
            self.sync_weights(model)
        params = SamplingParams(**sampling_kwargs(self, greedy, suppressed_token_ids(processor), self.seed + self._calls))
        self._calls += 1
        outputs = llm.generate(build_requests(prompts, samples), params, use_tqdm=False)
        if self._calls == 1:
            check_prompt_ids(outputs, inputs, samples)
        if self.sleep_between_rollouts:
            llm.sleep(level=1)
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
            base = model.get_base_model() if is_peft_model(model) else model
            multimodal = getattr(base.config, "vision_config", None) is not None
            self._llm = LLM(
                model=base.name_or_path, dtype=self.dtype, tensor_parallel_size=self.tensor_parallel_size,
                gpu_memory_utilization=self.gpu_memory_utilization, max_model_len=self.max_model_len,
                enable_sleep_mode=self.sleep_between_rollouts, seed=self.seed,
                **({"limit_mm_per_prompt": {"image": 4}} if multimodal else {}),
            )
        return self._llm

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push the policy's current weights (gathered, LoRA merged) into the engine, batch by batch."""
        from perception_rl.sharding import full_state_dict

        state = full_state_dict(model)
        runner_model = self._llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
        device = next(runner_model.parameters()).device
        for batch in weight_batches(merged_lora_weights(model, state), self.sync_batch_bytes):
            runner_model.load_weights([(name, tensor.detach().to(device, non_blocking=True)) for name, tensor in batch])
        self._stale = False


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
