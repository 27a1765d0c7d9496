"""Faults during training: a judge server that errors, hangs or babbles on 30% of requests neither stops nor
stalls a fit; the failures are counted in the logs and the affected completions leave the loss (abstain, the
default) or score 0 ("zero")."""

from __future__ import annotations

import csv
import time

import lightning as L
import pytest
from lightning.pytorch.loggers import CSVLogger

from judge_server import JudgeServer, ServerScript
from perception_rl import GRPOModule, HFGenerateEngine, OpenAIJudge, PerceptionReward, Policy, DotsDataModule
from perception_rl.rewards import FunctionReward


@pytest.mark.parametrize("policy", ["abstain", "zero"])
def test_fit_survives_a_judge_failing_30_percent(tmp_path, tiny_model_dir, dots_dir, policy):
    script = ServerScript(fault_rate=0.3, faults=("http500", "hang", "unparsable"), sticky_faults=True, hang_s=30.0, seed=1)
    with JudgeServer(script, lifetime_s=120, max_requests=2000) as server:
        judge = OpenAIJudge(
            base_url=server.url, model="judge", request_timeout=0.5, max_retries=1, backoff_base=0.01, backoff_max=0.05,
            failure_policy=policy, batch_timeout=10.0,
        )
        module = GRPOModule(
            policy=Policy(str(tiny_model_dir), max_pixels=12544),
            rewards=[FunctionReward("helpers.digit_share", name="digits"), PerceptionReward(judge)],
            rollout=HFGenerateEngine(num_generations=4, max_new_tokens=12),
            learning_rate=1e-3, export_hf_model=False,
        )
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_steps=3, logger=CSVLogger(tmp_path, name="logs"), log_every_n_steps=1,
            limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )
        start = time.perf_counter()
        trainer.fit(module, datamodule=DotsDataModule(str(dots_dir.parent / "faults"), num_train=8, max_pixels=12544))
        elapsed = time.perf_counter() - start
        judge.close()
    assert trainer.global_step == 3
    assert elapsed < 60, f"a hanging judge stalled the fit ({elapsed:.0f} s)"
    rows = [r for r in csv.DictReader((tmp_path / "logs" / "version_0" / "metrics.csv").open()) if r.get("train/reward/total")]
    failures = sum(float(r["train/reward/visual/judge/failures"]) for r in rows)
    requests = sum(float(r["train/reward/visual/judge/requests"]) for r in rows)
    assert requests == 3 * 2 * 4 and 0 < failures < requests, (failures, requests)
    assert sum(float(r["train/reward/visual/judge/failures/timeout"]) for r in rows) > 0, "hangs end as timeouts"
    # Item outcomes are logged; every failed request abstains under "abstain" (the completion leaves the loss).
    assert sum(float(r["train/reward/visual/judge/items/answered"]) for r in rows) > 0
    abstained = sum(float(r.get("train/reward/visual/abstained") or 0) for r in rows)
    # (>=: a completion identical to a failed one within a step is served the same verdict, counted as a cache hit)
    assert (abstained >= failures) if policy == "abstain" else abstained == 0, (abstained, failures)
