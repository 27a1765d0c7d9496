"""One-GPU check of perception-rl's CUDA-only paths. Prints one PASS / FAIL / SKIP line per check.

    python benchmarks/gpu/check.py                    # from the repository root, on a machine with a CUDA GPU
    python benchmarks/gpu/check.py --wheels DIR       # first install extra wheels offline from DIR
    CHECK_ACCELERATOR=cpu python benchmarks/gpu/check.py --only fsdp2_bf16 lora_bf16   # dry run of the script on CPU

Self-contained: needs PyTorch with CUDA, lightning, transformers, peft, torchmetrics, pillow and pyarrow,
which the lent GPU machine has; no network. The package is imported from this checkout. Optional:
bitsandbytes (QLoRA check) and vllm (vLLM check) run when importable and SKIP otherwise.

Each check runs in its own subprocess (a crash or hang fails that check only), on a tiny random
Qwen2.5-VL with head dim 64 and the synthetic dots task, both written offline first:
- fsdp2_bf16: 3 GRPO steps under FSDP2 (ModelParallelStrategy) with bf16 compute and fp32 master
  weights, HF-generate rollouts, a sharded (distributed) checkpoint and a full Hugging Face export;
- fsdp1_bf16: the same under Lightning's FSDPStrategy (FSDP1, decoder/vision blocks wrapped,
  bf16-mixed, sharded checkpoint, full export);
- lora_bf16: LoRA on CUDA in bf16, adapters saved and merged on export;
- qlora_4bit: QLoRA with bitsandbytes NF4 on CUDA;
- vllm_rollout: VLLMEngine with images (bf16): G samples with engine log-probs within 0.1 of the trainer's,
  greedy tokens that are the trainer's argmax, and after an update of every weight, synced into the engine,
  greedy outputs that change and match the updated trainer (SKIP where vllm is not importable).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHECKS = ["fsdp2_bf16", "fsdp1_bf16", "lora_bf16", "qlora_4bit", "vllm_rollout"]
STEPS = 3


def prepare_assets(work: Path) -> None:
    from perception_rl.data.synthetic import write_dots_dataset
    from perception_rl.tiny import write_tiny_qwen2_5_vl

    write_tiny_qwen2_5_vl(work / "model", hidden_size=256, num_layers=2, vision_hidden_size=128)
    write_dots_dataset(work / "data", num_train=16, num_val=4, num_test=4)


def digit_share(completions: list[str], records: list[dict]) -> list[float]:
    """A reward the random policy earns unevenly, so advantages (and updates) are non-zero."""
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in completions]


def run_grpo(work: Path, name: str, strategy, precision: str | None, **policy_kwargs) -> dict:
    """STEPS GRPO steps on one GPU; returns facts about the run for the caller to assert on."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from perception_rl import FunctionReward, GRPOModule, HFGenerateEngine, Policy, RecordDataModule

    root = work / name
    fsdp_dtype = policy_kwargs.pop("fsdp_param_dtype", None)
    module = GRPOModule(
        policy=Policy(str(work / "model"), max_pixels=12544, **policy_kwargs),
        rewards=[FunctionReward(digit_share, name="digits")],
        rollout=HFGenerateEngine(num_generations=8, max_new_tokens=32),
        learning_rate=1e-3,
        micro_batch_size=8,
        fsdp_param_dtype=fsdp_dtype,
    )
    trainer = L.Trainer(
        accelerator=os.environ.get("CHECK_ACCELERATOR", "gpu"), devices=1, strategy=strategy, precision=precision, max_steps=STEPS,
        logger=CSVLogger(root, name="logs"), log_every_n_steps=1, limit_val_batches=0, enable_progress_bar=False,
        callbacks=[ModelCheckpoint(save_last=True, every_n_train_steps=STEPS)], default_root_dir=root,
    )
    data = RecordDataModule(str(work / "data" / "train.jsonl"), batch_size=2, max_pixels=12544)
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    metrics = [r for r in _csv_rows(root / "logs" / "version_0" / "metrics.csv") if r.get("train/policy/loss")]
    checkpoint = root / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    return {
        "steps": trainer.global_step,
        "fit_s": round(seconds, 2),
        "step_s": [round(float(r["train/time/step_s"]), 3) for r in metrics],
        "losses_finite": all(_finite(r["train/policy/loss"]) and _finite(r["train/policy/grad_norm"]) for r in metrics),
        "checkpoint_sharded": checkpoint.is_dir() and any(checkpoint.glob("*.distcp")),
        "checkpoint_exists": checkpoint.exists(),
        "export": str(root / "hf_model"),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None,
    }


def _csv_rows(path: Path) -> list[dict]:
    import csv

    return list(csv.DictReader(path.open())) if path.is_file() else []


def _finite(value: str) -> bool:
    import math

    return value != "" and math.isfinite(float(value))


def _export_changed(work: Path, export: str) -> bool:
    """The export loads as a Hugging Face model with the base's names and trained (changed) weights."""
    from safetensors.torch import load_file

    exported, initial = load_file(Path(export) / "model.safetensors"), load_file(work / "model" / "model.safetensors")
    return exported.keys() == initial.keys() and any(not (exported[k] == initial[k]).all() for k in exported)


def check_fsdp2_bf16(work: Path) -> str:
    from lightning.pytorch.strategies import ModelParallelStrategy

    facts = run_grpo(
        work, "fsdp2", ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1), None,
        gradient_checkpointing=True, fsdp_param_dtype="bfloat16",
    )
    _require(facts, "steps", STEPS)
    _require(facts, "losses_finite", True)
    _require(facts, "checkpoint_sharded", True)
    if not _export_changed(work, facts["export"]):
        raise AssertionError("HF export missing, incomplete or unchanged")
    return json.dumps(facts)


def check_fsdp1_bf16(work: Path) -> str:
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLDecoderLayer, Qwen2_5_VLVisionBlock

    strategy = FSDPStrategy(
        auto_wrap_policy={Qwen2_5_VLDecoderLayer, Qwen2_5_VLVisionBlock},
        activation_checkpointing_policy={Qwen2_5_VLDecoderLayer},
        state_dict_type="sharded",
    )
    facts = run_grpo(work, "fsdp1", strategy, "bf16-mixed")
    _require(facts, "steps", STEPS)
    _require(facts, "losses_finite", True)
    _require(facts, "checkpoint_exists", True)
    if not _export_changed(work, facts["export"]):
        raise AssertionError("HF export missing, incomplete or unchanged")
    return json.dumps(facts)


def check_lora_bf16(work: Path) -> str:
    from perception_rl.policy import LoRA

    facts = run_grpo(work, "lora", "auto", None, dtype="bfloat16", lora=LoRA(rank=8, alpha=16))
    _require(facts, "steps", STEPS)
    _require(facts, "losses_finite", True)
    if not (Path(facts["export"]) / "adapter" / "adapter_config.json").is_file():
        raise AssertionError("adapter not saved")
    if not _export_changed(work, facts["export"]):
        raise AssertionError("merged export missing or unchanged")
    return json.dumps(facts)


def check_qlora_4bit(work: Path) -> str:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return "SKIP bitsandbytes is not installed"
    from perception_rl.policy import LoRA

    facts = run_grpo(work, "qlora", "auto", None, dtype="bfloat16", lora=LoRA(rank=8, alpha=16), load_in_4bit=True)
    _require(facts, "steps", STEPS)
    _require(facts, "losses_finite", True)
    return json.dumps(facts)


def check_vllm_rollout(work: Path) -> str:
    """VLLMEngine on the tiny Qwen2.5-VL with images, against the trainer's own forward pass.

    G samples per prompt at T = 0.7 whose engine log-probs (processed: after temperature) agree with the
    trainer's tempered ones; greedy outputs that are the trainer's greedy choice at every token (up to bf16
    near-ties); then an update of every weight, streamed into the engine: its greedy outputs on the same
    prompts (prefix cache reset) change and agree with the updated trainer again.
    """
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "SKIP vllm is not installed"
    import torch

    from perception_rl import Policy, RecordDataModule, VLLMEngine

    device = "cpu" if os.environ.get("CHECK_ACCELERATOR") == "cpu" else "cuda"
    policy = Policy(str(work / "model"), dtype="bfloat16", max_pixels=12544)
    model, processor = policy.load_model().to(device).eval(), policy.load_processor()
    data = RecordDataModule(test_files=str(work / "data" / "test.jsonl"), eval_batch_size=4, max_pixels=12544)
    data.setup("test")
    samples = next(iter(data.test_dataloader()))
    engine = VLLMEngine(num_generations=4, max_new_tokens=16, temperature=0.7, dtype="bfloat16",
                        gpu_memory_utilization=0.3, max_model_len=2048, sleep_between_rollouts=True)
    facts: dict = {}
    start = time.perf_counter()
    sampled = engine.generate(model, processor, samples)  # starts the engine; checks prompt ids on first use
    facts["first_rollout_s"] = round(time.perf_counter() - start, 1)
    facts["rows"] = sampled.completion_ids.shape[0]
    _require(facts, "rows", 4 * len(samples))
    facts["logprob_max_abs_gap"] = round(_logprob_gap(model, processor, sampled, device, temperature=0.7), 4)
    if facts["logprob_max_abs_gap"] > 0.1:
        raise AssertionError(f"engine and trainer log-probs differ by up to {facts['logprob_max_abs_gap']}: {facts}")

    before = engine.generate(model, processor, samples, greedy=True)
    facts["greedy_agreement_before"] = _greedy_agreement(model, before, device)
    with torch.no_grad():  # the "update": every weight moves, enough to change greedy outputs
        generator = torch.Generator(device=device).manual_seed(1)
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator, device=device, dtype=param.dtype) * 0.05)
    engine.on_weights_updated()
    start = time.perf_counter()
    after = engine.generate(model, processor, samples, greedy=True)  # syncs the weights first
    facts["sync_and_rollout_s"] = round(time.perf_counter() - start, 2)
    facts["sync"] = engine.pop_sync_stats()
    facts["greedy_agreement_after"] = _greedy_agreement(model, after, device)
    facts["outputs_changed"] = before.completions != after.completions
    _require(facts, "outputs_changed", True)
    for key in ("greedy_agreement_before", "greedy_agreement_after"):
        if facts[key] < 1.0:
            raise AssertionError(f"{key}: the engine's greedy tokens are not the trainer's: {facts}")
    return json.dumps(facts)


def _trainer_logits(model, rollouts, device):
    """The trainer's logits for every completion token of `rollouts`, by its own forward pass: [N, L, V]."""
    import torch

    from perception_rl.families import family_of

    inputs = {k: v.to(device) for k, v in family_of(model).sequence_inputs(rollouts, torch.arange(len(rollouts))).items()}
    with torch.no_grad():
        logits = model(**inputs, logits_to_keep=rollouts.completion_ids.shape[1] + 1).logits[:, :-1]
    return logits.float().cpu()


def _logprob_gap(model, processor, rollouts, device, temperature: float) -> float:
    """Largest |engine - trainer| log-prob over the sampled tokens, the trainer's at `temperature` without the
    vision placeholders the engine suppresses (what GRPOModule computes)."""
    from perception_rl import grpo
    from perception_rl.rollout.base import suppressed_token_ids

    logits = _trainer_logits(model, rollouts, device) / temperature
    logits[..., suppressed_token_ids(processor)] = float("-inf")
    logp = grpo.token_logprobs(logits, rollouts.completion_ids)
    mask = rollouts.completion_mask.bool()
    return float((logp[mask] - rollouts.logprobs[mask].float()).abs().max())


def _greedy_agreement(model, rollouts, device, tie: float = 0.05) -> float:
    """Share of the engine's greedy tokens that are the trainer's argmax on the same prefix (within `tie`
    logits of it: bf16 kernels differ, and a random model has near-ties)."""
    import torch

    logits = _trainer_logits(model, rollouts, device)  # [N, L, V]
    chosen = logits.gather(-1, rollouts.completion_ids.unsqueeze(-1)).squeeze(-1)  # [N, L]
    near_best = chosen >= logits.max(-1).values - tie
    mask = rollouts.completion_mask.bool()
    return round(float(near_best[mask].float().mean()), 4) if mask.any() else float(torch.nan)


def _require(facts: dict, key: str, expected) -> None:
    if facts.get(key) != expected:
        raise AssertionError(f"{key} = {facts.get(key)!r}, expected {expected!r}; facts: {json.dumps(facts)}")


def run_one(name: str, work: Path) -> None:
    """Child process: run one check and print its verdict as the last line."""
    import torch

    if not torch.cuda.is_available() and os.environ.get("CHECK_ACCELERATOR") != "cpu":
        print("SKIP no CUDA device")
        return
    result = globals()[f"check_{name}"](work)
    print(result if result.startswith("SKIP") else f"PASS {result}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", help="folder of wheels to install offline first (pip --no-index)")
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    parser.add_argument("--only", nargs="*", choices=CHECKS, help="run these checks only")
    parser.add_argument("--timeout", type=int, default=150,
                        help="seconds allowed per check (twice that for vllm_rollout: the engine compiles on start)")
    parser.add_argument("--run", choices=CHECKS, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work or tempfile.mkdtemp(prefix="perception-rl-gpu-"))
    if args.run:
        run_one(args.run, work)
        return 0
    if args.wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", args.wheels,
                        *[str(w) for w in Path(args.wheels).glob("*.whl")]], check=True)
    import torch

    print(f"torch {torch.__version__}, cuda {torch.version.cuda}, device "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}", flush=True)
    start = time.perf_counter()
    prepare_assets(work)
    print(f"assets written to {work} in {time.perf_counter() - start:.1f}s", flush=True)
    failures = 0
    for name in args.only or CHECKS:
        failures += run_check(name, work, args.timeout * (2 if name == "vllm_rollout" else 1))
    return 1 if failures else 0


def run_check(name: str, work: Path, timeout: int) -> int:
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    try:
        proc = subprocess.run([sys.executable, __file__, "--run", name, "--work", str(work)],
                              capture_output=True, text=True, timeout=timeout, env=env)
        lines = [line for line in proc.stdout.strip().splitlines() if line.split(" ")[0] in ("PASS", "SKIP")]
        verdict = lines[-1] if proc.returncode == 0 and lines else f"FAIL exit {proc.returncode}: {_tail(proc.stderr)}"
    except subprocess.TimeoutExpired:
        verdict = f"FAIL timed out after {timeout}s"
    word, _, detail = verdict.partition(" ")
    print(f"{word:4} {name:13} {time.perf_counter() - start:6.1f}s  {detail}", flush=True)
    return word == "FAIL"


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


if __name__ == "__main__":
    sys.exit(main())
