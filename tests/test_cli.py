"""The `perception-rl` command end to end: help, every config parses, fit the demo, test from the saved config."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT

# Training configs; configs/annotate/ holds `perception-rl annotate` configs, parsed in tests/test_annotate.py.
CONFIGS = sorted(c for c in (REPO_ROOT / "configs").rglob("*.yaml") if c.parent.name != "annotate")
TRAIN_METRICS = [
    "train/reward/total", "train/reward/accuracy/mean", "train/reward/format/mean", "train/reward/digits/mean",
    "train/advantage/mean", "train/advantage/std", "train/policy/loss", "train/policy/clip_fraction",
    "train/policy/approx_kl_to_rollout", "train/policy/kl", "train/policy/entropy", "train/policy/grad_norm",
    "train/policy/lr", "train/response_length/mean", "train/time/rollout_s", "train/time/update_s",
    "train/throughput/tokens_per_s",
]


def run_cli(*args: str, cwd: Path = REPO_ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "tests"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "perception_rl.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"perception-rl {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def test_help_lists_subcommands():
    out = run_cli("--help").stdout
    for command in ("fit", "validate", "test", "make-tiny-model", "make-demo-data", "warm-start"):
        assert command in out


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(REPO_ROOT)) for c in CONFIGS])
def test_every_config_parses(config: Path):
    header = config.read_text().splitlines()[:3]
    assert any("perception-rl " in line for line in header), f"{config} must open with the command that runs it"
    printed = yaml.safe_load(run_cli("fit", "--config", str(config), "--print_config").stdout)
    assert printed["model"]["rewards"], "a config without rewards trains nothing"


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory, tiny_model_dir) -> Path:
    """Three GRPO steps of the demo config with a KL term and a varied reward, in a subprocess."""
    root = tmp_path_factory.mktemp("run")
    extra = root / "extra.yaml"
    extra.write_text(yaml.safe_dump({"model": {"rewards": [
        {"class_path": "perception_rl.AccuracyReward", "init_args": {"weight": 0.9}},
        {"class_path": "perception_rl.FormatReward", "init_args": {"weight": 0.1}},
        {"class_path": "perception_rl.FunctionReward", "init_args": {"function": "helpers.digit_share", "name": "digits"}},
        {"class_path": "perception_rl.PerceptionReward",
         "init_args": {"weight": 0.5, "judge": {"class_path": "perception_rl.RuleJudge"}}},
    ]}}))
    result = run_cli(
        "fit", "--config", str(REPO_ROOT / "configs/demo.yaml"), "--config", str(extra),
        "--trainer.max_steps=3", f"--trainer.default_root_dir={root}", "--trainer.val_check_interval=2",
        f"--model.policy.model_path={tiny_model_dir}", "--model.kl_coef=0.05",
        f"--data.data_dir={root / 'dots'}", "--data.num_train=8", "--data.num_val=4", "--data.num_test=4",
    )
    (root / "fit-output.txt").write_text(result.stdout + result.stderr)
    return root


def test_a_normal_run_prints_steps_and_no_noise(fitted_run: Path):
    printed = (fitted_run / "fit-output.txt").read_text()
    assert "step 3/3" in printed, "the progress bar counts optimizer steps"
    for noise in ("Epoch 0/-2", "v_num", "💡 Tip", "LeafSpec", "Loading weights", "Writing model shards",
                  "across ranks is zero", "index_reduce"):
        assert noise not in printed, f"{noise!r} printed on a normal run"


def test_a_bad_setting_ends_with_one_line_naming_it():
    args = ["fit", "--config", str(REPO_ROOT / "configs/demo.yaml"), "--data.batch_size=-1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    short = subprocess.run([sys.executable, "-m", "perception_rl.cli", *args], capture_output=True, text=True, env=env)
    assert short.returncode == 2
    assert short.stderr.strip().splitlines()[-2:] == [
        "perception-rl: error: data.batch_size must be >= 1, got -1", "(run again with --debug for the traceback)"]
    assert "Traceback" not in short.stderr
    full = subprocess.run([sys.executable, "-m", "perception_rl.cli", *args, "--debug"], capture_output=True, text=True, env=env)
    assert full.returncode != 0 and "Traceback" in full.stderr and "data.batch_size must be >= 1" in full.stderr


def test_fit_logs_metrics_and_leaves_checkpoint_and_export(fitted_run: Path, tiny_model_dir: Path):
    version = fitted_run / "logs" / "version_0"
    rows = list(csv.DictReader((version / "metrics.csv").open()))
    train_rows = [r for r in rows if r.get("train/reward/total")]
    assert len(train_rows) == 3
    missing = [m for m in TRAIN_METRICS if m not in rows[0]]
    assert not missing, f"metrics not logged: {missing}"
    assert any(r.get("val/total") for r in rows), "validation ran at step 2 and logged"
    assert (version / "checkpoints" / "last.ckpt").is_file()
    assert (version / "config.yaml").is_file()
    assert (fitted_run / "reward_curve.png").is_file() and (fitted_run / "reward_curve.csv").is_file()

    from safetensors.torch import load_file

    exported, initial = load_file(fitted_run / "hf_model" / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert exported.keys() == initial.keys()
    assert any(not (exported[k] == initial[k]).all() for k in exported), "three GRPO steps must change the weights"


def test_export_loads_as_a_hugging_face_model(fitted_run: Path):
    from perception_rl.policy import Policy

    policy = Policy(str(fitted_run / "hf_model"))
    model, processor = policy.load_model(), policy.load_processor()
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert processor.tokenizer.eos_token == "<|im_end|>"


def test_test_subcommand_reuses_saved_config(fitted_run: Path):
    version = fitted_run / "logs" / "version_0"
    out = run_cli("test", "--config", str(version / "config.yaml"), "--ckpt_path", str(version / "checkpoints" / "last.ckpt"))
    for metric in ("test/accuracy", "test/format", "test/digits", "test/total", "test/response_length"):
        assert metric in out.stdout
    assert (fitted_run / "eval" / "logs" / "version_0" / "metrics.csv").is_file(), "test logs go beside eval/"
    assert not (fitted_run / "logs" / "version_1").exists(), "not a new version of the training run"
    assert "dirpath has changed" not in out.stdout + out.stderr
    rows = [json.loads(line) for line in (fitted_run / "eval" / "test" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(isinstance(r["perception_correct"], bool) for r in rows), "the visual reward scores"
    assert all(r["perception_correct"] == (r["perception"] == 1.0) for r in rows)
