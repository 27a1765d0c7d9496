"""The GRPO gradient does not depend on how a mini-batch is cut: micro-batch size, abstained rows, or data parallelism.

Runs go through `perception-rl fit` with `helpers.ScriptedEngine`, whose completions are fixed by each record's
id (lengths differ between prompts and ranks) and `helpers.words_or_abstain`, which abstains on some of them;
`helpers.GradientRecorder` saves every rank's gradient before the optimizer step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from test_cli import run_cli

pytestmark = pytest.mark.slow
MODES = ["token_mean", "seq_mean_token_mean", "constant"]


def fit_one_step(
    root: Path, model_dir: Path, train_file: Path, *, devices: int, batch_size: int, rollout: dict | None = None, **model
) -> dict:
    """One optimizer step; returns rank 0's recorded gradient and every rank's completion token count."""
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto", "max_steps": 1,
            "logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "limit_val_batches": 0,
            "default_root_dir": str(root),
            "callbacks": [{"class_path": "helpers.GradientRecorder", "init_args": {"dirpath": str(root / "grads")}}],
        },
        "model": {
            "policy": {"class_path": "perception_rl.Policy", "init_args": {"model_path": str(model_dir), "max_pixels": 12544}},
            "rewards": [{"class_path": "perception_rl.FunctionReward", "init_args": {"function": "helpers.words_or_abstain"}}],
            "rollout": {"class_path": "helpers.ScriptedEngine", "init_args": rollout or {"num_generations": 4}},
            "export_hf_model": False, "max_grad_norm": None, "preflight": False, **model,
        },
        "data": {
            "class_path": "perception_rl.RecordDataModule",
            "init_args": {"train_files": str(train_file), "batch_size": batch_size, "shuffle": False,
                          "max_pixels": 12544},
        },
    }
    path = root / "config.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    run_cli("fit", "--config", str(path))
    records = [torch.load(root / "grads" / f"grad_rank{r}_step0.pt") for r in range(devices)]
    return {"grad": records[0]["grad"], "tokens": [r["tokens"] for r in records], "ids": [r["ids"] for r in records],
            "all": records}


def assert_same_gradient(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = b.abs().max().item()
    assert scale > 0, "the recorded gradient is zero: the test would prove nothing"
    worst = (a - b).abs().max().item()
    assert worst <= 1e-5 * scale, f"gradients differ by {worst:.3g} (largest entry {scale:.3g})"


@pytest.mark.parametrize("mode", MODES)
def test_micro_batch_size_leaves_the_gradient_unchanged(tmp_path, tiny_model_dir, dots_dir, mode):
    # 4 prompts x G=4 = 16 completions, some abstained, lengths 2..21 tokens.
    whole = fit_one_step(tmp_path / "mb16", tiny_model_dir, dots_dir / "train.jsonl", devices=1, batch_size=4,
                         loss_aggregation=mode, micro_batch_size=16)
    single = fit_one_step(tmp_path / "mb1", tiny_model_dir, dots_dir / "train.jsonl", devices=1, batch_size=4,
                          loss_aggregation=mode, micro_batch_size=1)
    assert_same_gradient(single["grad"], whole["grad"])


@pytest.mark.parametrize("mode", MODES)
def test_abstained_completions_count_for_nothing(tmp_path, tiny_model_dir, dots_dir, mode):
    # G = 4 whose 4th completion abstains gives the gradient of G = 3 without it (group statistics skip NaN).
    with_abstained = fit_one_step(tmp_path / "g4", tiny_model_dir, dots_dir / "train.jsonl", devices=1, batch_size=4,
                                  rollout={"num_generations": 4, "extra_abstained": True}, loss_aggregation=mode)
    without = fit_one_step(tmp_path / "g3", tiny_model_dir, dots_dir / "train.jsonl", devices=1, batch_size=4,
                           rollout={"num_generations": 3}, loss_aggregation=mode)
    assert_same_gradient(with_abstained["grad"], without["grad"])


@pytest.mark.parametrize("mode", MODES)
def test_two_ddp_ranks_with_unequal_lengths_update_as_one_process_on_the_union(tmp_path, tiny_model_dir, dots_dir, mode):
    # Two ranks take two prompts each; then one process takes the four prompts they saw, in one batch.
    ddp = fit_one_step(tmp_path / "ddp", tiny_model_dir, dots_dir / "train.jsonl", devices=2, batch_size=2,
                       loss_aggregation=mode, micro_batch_size=3)
    seen = set(ddp["ids"][0] + ddp["ids"][1])
    lines = [line for line in (dots_dir / "train.jsonl").read_text().splitlines() if json.loads(line)["id"] in seen]
    union_file = dots_dir / f"union-{mode}.jsonl"  # beside train.jsonl: image paths are relative to it
    union_file.write_text("\n".join(lines) + "\n")
    union = fit_one_step(tmp_path / "one", tiny_model_dir, union_file, devices=1, batch_size=4, loss_aggregation=mode)
    assert ddp["tokens"][0] != ddp["tokens"][1], "the ranks must see unequal completion lengths"
    assert sorted(ddp["ids"][0] + ddp["ids"][1]) == sorted(union["ids"][0]), "the ranks share out the union's prompts"
    assert sum(ddp["tokens"]) == union["tokens"][0]
    assert_same_gradient(ddp["all"][1]["grad"], ddp["grad"])  # DDP all-reduced: every rank holds the same gradient
    assert_same_gradient(ddp["grad"], union["grad"])
