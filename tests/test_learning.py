"""GRPO learns: a short run of the demo config raises held-out accuracy by more than noise can explain.

The demo's warm-started tiny Qwen2.5-VL is built once (about a minute), evaluated greedily on the held-out
split, trained with `perception-rl fit --config configs/demo.yaml` for a few dozen steps and evaluated
again on the same items. The gain is tested with the exact McNemar test on the paired outcomes, the test
`perception-rl compare` runs. Seeds are fixed, so the run is the same every time on a given machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT
from test_cli import run_cli

from perception_rl.data.datamodule import RecordDataModule
from perception_rl.eval.compare import mcnemar
from perception_rl.judge import RuleJudge
from perception_rl.policy import Policy
from perception_rl.rewards import AccuracyReward, PerceptionReward, score_all
from perception_rl.rollout import HFGenerateEngine
from perception_rl.warm_start import write_warm_started_model

pytestmark = pytest.mark.slow

RL_STEPS = 60
HELD_OUT = 200


@pytest.fixture(scope="module")
def learning_run(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("learning")
    warm = write_warm_started_model(root / "warm")
    run_cli(
        "fit", "--config", str(REPO_ROOT / "configs/demo.yaml"), f"--trainer.max_steps={RL_STEPS}",
        f"--trainer.default_root_dir={root / 'run'}", "--trainer.val_check_interval=1000",
        "--trainer.enable_progress_bar=false",
        f"--model.policy.model_path={warm}", f"--data.data_dir={root / 'dots'}", f"--data.num_test={HELD_OUT}",
        timeout=600,
    )
    return {"warm": warm, "trained": root / "run" / "hf_model", "data": root / "dots", "run": root / "run"}


def held_out_outcomes(model_path: Path, data_dir: Path) -> tuple[list[bool], list[bool]]:
    """Greedy answers to every held-out item: (answer correct, every gold visual fact stated) per item."""
    policy = Policy(str(model_path), max_pixels=12544)
    model, processor = policy.load_model().eval(), policy.load_processor()
    data = RecordDataModule(test_files=str(data_dir / "test.jsonl"), eval_batch_size=50, shuffle=False)
    data.setup("test")
    rewards = [AccuracyReward(), PerceptionReward(RuleJudge())]
    engine = HFGenerateEngine(num_generations=1, max_new_tokens=48)
    correct, perceived = [], []
    for batch in data.test_dataloader():
        scores = score_all(rewards, engine.generate(model, processor, batch, greedy=True)).outputs
        correct += [bool(v) for v in scores["accuracy"].scores]
        perceived += [bool(v == 1.0) for v in scores["visual"].scores]
    return correct, perceived


def test_a_short_grpo_run_raises_held_out_accuracy_beyond_noise(learning_run):
    before, perceived_before = held_out_outcomes(learning_run["warm"], learning_run["data"])
    after, perceived_after = held_out_outcomes(learning_run["trained"], learning_run["data"])
    assert len(before) == len(after) == HELD_OUT
    accuracy = (sum(before) / HELD_OUT, sum(after) / HELD_OUT)
    table = mcnemar(before, after)
    summary = f"held-out accuracy {accuracy[0]:.3f} -> {accuracy[1]:.3f}, b={table.b} c={table.c} p={table.p_value:.2g}"
    print(summary)
    assert accuracy[0] < 0.45, f"the warm start must leave room to learn: {summary}"
    assert accuracy[1] - accuracy[0] >= 0.15, summary
    assert table.c > table.b and table.p_value < 1e-3, summary
    assert sum(perceived_after) > sum(perceived_before), "the stated facts improve too"


def test_the_run_logs_a_rising_reward_and_plots_it(learning_run):
    curve = learning_run["run"] / "reward_curve.csv"
    assert (learning_run["run"] / "reward_curve.png").stat().st_size > 0
    rows = curve.read_text().splitlines()
    header, values = rows[0].split(","), [list(map(float, r.split(","))) for r in rows[1:]]
    assert len(values) == RL_STEPS and {"total", "accuracy", "format", "visual"} <= set(header)
    total = [v[header.index("total")] for v in values]
    tenth = RL_STEPS // 10
    assert sum(total[-tenth:]) / tenth > sum(total[:tenth]) / tenth


def test_same_seed_same_run(learning_run, tmp_path):
    """Two short runs from the same warm start and seed log the same rewards and end with the same weights."""
    runs = []
    for name in ("a", "b"):
        run_cli(
            "fit", "--config", str(REPO_ROOT / "configs/demo.yaml"), "--trainer.max_steps=2",
            f"--trainer.default_root_dir={tmp_path / name}", "--trainer.enable_progress_bar=false",
            f"--model.policy.model_path={learning_run['warm']}", f"--data.data_dir={learning_run['data']}",
            f"--data.num_test={HELD_OUT}",
        )
        runs.append(tmp_path / name)
    curves = [(run / "reward_curve.csv").read_text() for run in runs]
    assert curves[0] == curves[1]
    from safetensors.torch import load_file

    a, b = (load_file(run / "hf_model" / "model.safetensors") for run in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((learning_run["warm"] / "warm_start.json").read_text())["settings"]["seed"] == 0
