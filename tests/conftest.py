"""Shared fixtures: a tiny random Qwen2.5-VL and the synthetic dots task, built offline once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEV_DATA = REPO_ROOT.parent / "shared" / "data" / "dev"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from perception_rl.tiny import write_tiny_qwen2_5_vl

    return write_tiny_qwen2_5_vl(tmp_path_factory.mktemp("models") / "tiny-qwen2_5_vl")


@pytest.fixture(scope="session")
def dots_dir(tmp_path_factory) -> Path:
    from perception_rl.data.synthetic import write_dots_dataset

    return write_dots_dataset(tmp_path_factory.mktemp("data") / "dots", num_train=16, num_val=4, num_test=4, seed=0)


@pytest.fixture(scope="session")
def dev_data() -> Path:
    if not (DEV_DATA / "dev.jsonl").is_file():
        pytest.skip(f"shared dev data not found at {DEV_DATA}")
    return DEV_DATA
