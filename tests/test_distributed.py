"""Two-process training on gloo (CPU): ddp, and FSDP2 through Lightning's ModelParallelStrategy.

Both run generation inside `training_step` (FSDP2 needs the root unsharded around `generate`), checkpoint,
and export full weights. With the same seed they see the same data and samples, so their trained weights
must agree, and differ from the initial ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO_ROOT
from test_cli import run_cli

pytestmark = pytest.mark.slow

STRATEGIES = {
    "ddp": "ddp",
    "fsdp2": {
        "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
        "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1},
    },
}


def fit_two_processes(root: Path, strategy: str, model_dir: Path) -> Path:
    extra = root / f"{strategy}.yaml"
    extra.write_text(yaml.safe_dump({
        "trainer": {"devices": 2, "strategy": STRATEGIES[strategy], "enable_progress_bar": False},
        "model": {"rewards": [{"class_path": "perception_rl.FunctionReward", "init_args": {"function": "helpers.digit_share"}}]},
    }))
    out = root / strategy
    run_cli(
        "fit", "--config", str(REPO_ROOT / "configs/demo.yaml"), "--config", str(extra),
        "--trainer.max_steps=2", f"--trainer.default_root_dir={out}", "--trainer.val_check_interval=2",
        f"--model.policy.model_path={model_dir}", "--model.micro_batch_size=4",
        f"--data.data_dir={root / 'shapes'}", "--data.num_train=8", "--data.num_val=4", "--data.num_test=4",
    )
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distributed")
    return {name: fit_two_processes(root, name, tiny_model_dir) for name in STRATEGIES}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_two_process_fit_checkpoints_and_exports(runs, strategy, tiny_model_dir):
    out = runs[strategy]
    checkpoint = out / "logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert checkpoint.exists()
    if strategy == "fsdp2":
        assert checkpoint.is_dir() and list(checkpoint.glob("*.distcp")), "FSDP2 saves a sharded checkpoint"
    exported = load_file(out / "hf_model" / "model.safetensors")
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert exported.keys() == initial.keys(), "export holds full (unsharded) weights under the HF names"
    assert all(exported[k].shape == initial[k].shape for k in exported)
    assert any(not torch.equal(exported[k], initial[k]) for k in exported)


def test_ddp_and_fsdp2_train_the_same_weights(runs):
    ddp = load_file(runs["ddp"] / "hf_model" / "model.safetensors")
    fsdp2 = load_file(runs["fsdp2"] / "hf_model" / "model.safetensors")
    worst = max((ddp[k] - fsdp2[k]).abs().max().item() for k in ddp)
    assert worst < 1e-4, f"ddp and FSDP2 weights differ by up to {worst}"
