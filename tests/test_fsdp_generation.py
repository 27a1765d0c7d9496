"""FSDP2 on two gloo ranks: `generate` gathers the policy's weights once per rollout, and the KL reference is
sharded like the policy.

FSDP2 reshards every block after its forward; left alone, each decoding step of `generate` would all-gather
every block again (for a 7B on 8 GPUs about 13 GB per rank per token).
"""

from __future__ import annotations

import json

import pytest
import yaml

from test_cli import run_cli

pytestmark = pytest.mark.slow


FSDP2 = {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
         "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1}}
FSDP1 = {"class_path": "helpers.CPUFSDPStrategy", "init_args": {"state_dict_type": "sharded"}}


def fit_sharded(tmp_path, tiny_model_dir, dots_dir, callback: str, strategy: dict = FSDP2, **model) -> None:
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 2, "max_steps": 2, "logger": False, "enable_checkpointing": False,
            "enable_progress_bar": False, "limit_val_batches": 0, "default_root_dir": str(tmp_path),
            "strategy": strategy,
            "callbacks": [{"class_path": callback, "init_args": {"dirpath": str(tmp_path)}}],
        },
        "model": {
            "policy": {"class_path": "perception_rl.Policy", "init_args": {"model_path": str(tiny_model_dir), "max_pixels": 12544}},
            "rewards": [{"class_path": "perception_rl.FunctionReward", "init_args": {"function": "helpers.digit_share"}}],
            "rollout": {"class_path": "perception_rl.HFGenerateEngine",
                        "init_args": {"num_generations": 2, "max_new_tokens": 16}},
            "export_hf_model": False, "preflight": False, **model,
        },
        "data": {"class_path": "perception_rl.RecordDataModule",
                 "init_args": {"train_files": str(dots_dir / "train.jsonl"), "batch_size": 2, "max_pixels": 12544}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run_cli("fit", "--config", str(tmp_path / "config.yaml"))


def test_fsdp2_rollout_gathers_the_weights_once(tmp_path, tiny_model_dir, dots_dir):
    fit_sharded(tmp_path, tiny_model_dir, dots_dir, "helpers.RolloutAllGatherBytes")
    for rank in (0, 1):
        counts = json.loads((tmp_path / f"allgather_rank{rank}.json").read_text())
        full = counts["param_bytes"]
        print(f"rank {rank}: all-gathered per rollout {counts['per_rollout']} bytes; full weights {full} bytes")
        assert len(counts["per_rollout"]) == 2
        for gathered in counts["per_rollout"]:
            # once: every parameter's full tensor (shard padding allows a little more)
            assert full <= gathered <= 1.05 * full, f"gathered {gathered / full:.1f}x the weights in one rollout"


@pytest.mark.parametrize("strategy", [FSDP2, FSDP1], ids=["fsdp2", "fsdp1"])
def test_fsdp_shards_the_kl_reference_like_the_policy(tmp_path, tiny_model_dir, dots_dir, strategy):
    fit_sharded(tmp_path, tiny_model_dir, dots_dir, "helpers.ShardBytes", strategy, kl_coef=0.1)
    full = sum(json.loads((tmp_path / f"shard_bytes_rank{r}.json").read_text())["policy"] for r in (0, 1))
    for rank in (0, 1):
        held = json.loads((tmp_path / f"shard_bytes_rank{rank}.json").read_text())
        print(f"rank {rank}: policy {held['policy']} bytes, reference {held['reference']} bytes (whole model {full})")
        assert held["reference"] == held["policy"] < 0.6 * full, "each rank holds half of the reference"


@pytest.mark.parametrize("strategy", [FSDP2, FSDP1], ids=["fsdp2", "fsdp1"])
def test_every_rank_streams_the_full_weights(tmp_path, tiny_model_dir, dots_dir, strategy):
    # What a colocated rollout engine on each rank needs after every update: all weights, full size, the same.
    from perception_rl import Policy

    fit_sharded(tmp_path, tiny_model_dir, dots_dir, "helpers.FullWeightsDigest", strategy, learning_rate=1e-3)
    ranks = [json.loads((tmp_path / f"full_weights_rank{r}.json").read_text()) for r in (0, 1)]
    initial = Policy(str(tiny_model_dir)).load_model().state_dict()
    print(f"{len(ranks[0])} / {len(ranks[1])} tensors on ranks 0 / 1, {len(initial)} in the model")
    assert set(ranks[0]) == set(ranks[1]) == set(initial), "every rank gets every weight, under its plain name"
    for name, (shape, total) in ranks[0].items():
        assert shape == ranks[1][name][0] == list(initial[name].shape), name
        assert ranks[1][name][1] == pytest.approx(total, rel=1e-6, abs=1e-6), name
    assert any(ranks[0][n][1] != pytest.approx(float(initial[n].double().sum())) for n in initial), "trained weights"
