"""Lightning's TensorBoard and W&B (offline) loggers through `--trainer.logger`, against the default CSV logger.

Each logger gets the same three-step demo fit (tiny random model, a varied test reward, a validation at step 2,
the same seed and data); what it wrote is read back with the logger's own format reader (TensorBoard's
EventAccumulator; the W&B run's `.wandb` transaction log parsed into wandb's own `Record` protobufs) and must
hold every metric the CSV logger writes, under the same names, one value per step. The W&B run also holds
the rollout log's table of every step (`perception_rl.RolloutLog`, key `rollouts`), images included.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import struct
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT
from test_cli import run_cli

pytestmark = pytest.mark.slow

STEPS = 3
ROLLOUT_GROUPS, GROUP_SIZE = 2, 8  # RolloutLog's max_groups; the demo config's G
# Metrics every logger must carry per training step (a subset of GRPOModule.log_step's, all finite here).
REWARD_METRICS = [
    "train/reward/total", "train/reward/accuracy/mean", "train/reward/format/mean", "train/reward/digits/mean",
]
# Deterministic metrics: the same seed gives the same values whichever logger records them (timings excluded).
SAME_VALUES = [*REWARD_METRICS, "train/advantage/mean", "train/advantage/std", "train/policy/loss", "train/policy/lr",
               "train/response_length/mean"]
WANDB_TIMEOUT_S = 180
# Checked at collection, so that a missing package skips before the module's CSV baseline fit runs.
INSTALL = "it is in the test extra: pip install -e '.[test]'"
needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason=f"tensorboard not installed ({INSTALL})")
needs_wandb = pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason=f"wandb not installed ({INSTALL})")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One OpenMP thread per fit: on a busy 2-core machine torch's spinning threads make a 5 s fit take 45 s."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
        yield


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loggers")
    (root / "extra.yaml").write_text(yaml.safe_dump({
        "trainer": {"callbacks": [  # the demo's, with the rollout log on every step
            {"class_path": "perception_rl.RolloutLog", "init_args": {"every_n_steps": 1, "max_groups": ROLLOUT_GROUPS}},
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"save_last": True, "every_n_train_steps": 50}},
        ]},
        "model": {"rewards": [
            {"class_path": "perception_rl.AccuracyReward", "init_args": {"weight": 0.9}},
            {"class_path": "perception_rl.FormatReward", "init_args": {"weight": 0.1}},
            {"class_path": "perception_rl.FunctionReward",
             "init_args": {"function": "helpers.digit_share", "name": "digits"}},
        ]},
    }))
    return root


def fit(root: Path, model_dir: Path, name: str, *logger_args: str, timeout: int = 300) -> Path:
    """Three GRPO steps of the demo config (validation at step 2) into `root/name`, with `logger_args`."""
    out = root / name
    run_cli(
        "fit", "--config", str(REPO_ROOT / "configs/demo.yaml"), "--config", str(root / "extra.yaml"),
        f"--trainer.max_steps={STEPS}", f"--trainer.default_root_dir={out}", "--trainer.val_check_interval=2",
        f"--model.policy.model_path={model_dir}", "--model.export_hf_model=false",
        f"--data.data_dir={root / 'dots'}", "--data.num_train=8", "--data.num_val=4", "--data.num_test=4",
        *logger_args, timeout=timeout,
    )
    return out


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.fixture(scope="module")
def csv_run(run_root: Path, tiny_model_dir: Path) -> dict[str, dict[int, float]]:
    """The default CSV logger's metrics: name -> {step: value}."""
    out = fit(run_root, tiny_model_dir, "fit_csv")
    series: dict[str, dict[int, float]] = {}
    for row in csv.DictReader((out / "logs" / "version_0" / "metrics.csv").open()):
        for key, value in row.items():
            if key not in ("step", "epoch") and value not in ("", None):
                series.setdefault(key, {})[int(row["step"])] = float(value)
    assert all(len(series[m]) == STEPS for m in REWARD_METRICS), {m: series.get(m) for m in REWARD_METRICS}
    return series


def assert_matches_csv(series: dict[str, dict[int, float]], csv_series: dict[str, dict[int, float]]) -> None:
    missing = sorted(set(csv_series) - set(series))
    assert not missing, f"logged to CSV but not to this logger: {missing}"
    for metric in REWARD_METRICS:
        assert sorted(series[metric]) == list(range(STEPS)), f"{metric}: one value per step, got {series[metric]}"
    for metric in SAME_VALUES:
        assert series[metric] == pytest.approx(csv_series[metric], rel=1e-5, abs=1e-6), metric
    assert any(series["train/reward/digits/mean"].values()), "the digit-share reward varies: not all zeros"
    assert any(m.startswith("val/") for m in series), "the validation at step 2 logged"


# ---------------------------------------------------------------------------------------------- TensorBoard
@needs_tensorboard
def test_tensorboard_event_file_holds_the_csv_metrics(run_root: Path, tiny_model_dir: Path, csv_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    save_dir = run_root / "tensorboard"
    fit(run_root, tiny_model_dir, "fit_tb", "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.save_dir={save_dir}")
    events = sorted(save_dir.rglob("events.out.tfevents.*"))
    assert len(events) == 1, events
    accumulator = EventAccumulator(str(events[0]), size_guidance={"scalars": 0})  # 0: keep every event
    accumulator.Reload()
    series = {tag: {e.step: e.value for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}
    for metric in REWARD_METRICS:  # exactly one event per step, not merely one kept per step
        assert len(accumulator.Scalars(metric)) == STEPS, (metric, accumulator.Scalars(metric))
    assert_matches_csv(series, csv_run)
    assert (events[0].parent / "checkpoints" / "last.ckpt").is_file(), "ModelCheckpoint follows the logger's folder"


# ---------------------------------------------------------------------------------------------- W&B offline
def wandb_records(path: Path):
    """The records of a `.wandb` transaction log, as wandb's own `Record` protobufs.

    The file is a 7-byte `:W&B` header, then LevelDB's log format: 32 KiB blocks of chunks, each a 7-byte
    header (CRC-32C, little-endian length, type: 1 full, 2 first, 3 middle, 4 last) and its bytes. wandb
    >= 0.2x writes it from Go (wandb-core) and no longer ships a Python reader.
    """
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    pos, parts = 7, []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # preallocated zeros: nothing more in this block
            pos += left
            continue
        parts.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


@needs_wandb
def test_wandb_offline_run_holds_the_csv_metrics(run_root: Path, tiny_model_dir: Path, csv_run, monkeypatch):
    save_dir = run_root / "wandb_run"
    home = run_root / "wandb_home"  # keep wandb's settings, cache and artifacts out of the user's home
    for var, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false",
                       "WANDB_DISABLE_GIT": "true", "WANDB_CONFIG_DIR": home / "config",
                       "WANDB_CACHE_DIR": home / "cache", "WANDB_DATA_DIR": home / "data",
                       "WANDB_ARTIFACT_DIR": home / "artifacts"}.items():
        monkeypatch.setenv(var, str(value))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    try:
        fit(run_root, tiny_model_dir, "fit_wandb", "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
            "--trainer.logger.offline=true", f"--trainer.logger.save_dir={save_dir}", timeout=WANDB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"the offline W&B run did not finish within {WANDB_TIMEOUT_S} s (wandb waiting on the network?)")

    runs = sorted((save_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"one offline run folder under {save_dir / 'wandb'}: {runs}"
    logs = list(runs[0].glob("run-*.wandb"))
    assert len(logs) == 1, logs
    history, kinds, records = [], set(), list(wandb_records(logs[0]))
    for record in records:
        kinds.add(record.WhichOneof("record_type"))
        if record.HasField("history"):
            items = record.history.item
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    assert {"run", "history", "exit"} <= kinds, f"a complete run: {sorted(kinds)}"
    series: dict[str, dict[int, float]] = {}
    for row in history:
        for key, value in row.items():
            if finite(value) and not key.startswith("_") and key not in ("epoch", "trainer/global_step"):
                series.setdefault(key, {})[int(row["trainer/global_step"])] = float(value)
    for metric in REWARD_METRICS:
        assert sum(metric in row for row in history) == STEPS, f"{metric}: one history row per step"
    assert_matches_csv(series, csv_run)
    assert_rollout_tables(history, records)


def assert_rollout_tables(history: list[dict], records: list) -> None:
    """RolloutLog logged one `rollouts` table per step (a history entry, and the run-table artifact wandb
    stores it in, with the table's JSON and its PNGs): rows = groups x G, completions and images."""
    tables = [row for row in history if row.get("rollouts/_type") == "table-file"]
    assert sorted(row["trainer/global_step"] for row in tables) == list(range(1, STEPS + 1)), "one table per step"
    assert all(row["rollouts/nrows"] == ROLLOUT_GROUPS * GROUP_SIZE for row in tables)
    artifacts = [r.artifact for r in records if r.HasField("artifact") and r.artifact.name.endswith("-rollouts")]
    assert len(artifacts) == STEPS and all(a.type == "run_table" for a in artifacts)
    for artifact in artifacts:
        files = {entry.path: Path(entry.local_path) for entry in artifact.manifest.contents}
        table = json.loads(files["rollouts.table.json"].read_text())
        assert {"image", "completion", "total", "advantage", "reward/digits"} <= set(table["columns"])
        assert len(table["data"]) == ROLLOUT_GROUPS * GROUP_SIZE
        images = [cells[table["columns"].index("image")] for cells in table["data"]]
        assert all(cell["_type"] == "image-file" for cell in images)
        assert all(files[cell["path"]].read_bytes()[:4] == b"\x89PNG" for cell in images)
