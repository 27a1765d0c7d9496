#!/usr/bin/env bash
# Set up (if needed) and run the CPU demo: GRPO teaches a tiny warm-started Qwen2.5-VL to count dots (configs/demo.yaml).
# Extra arguments go to `perception-rl fit`, e.g. --trainer.max_steps=3 --trainer.default_root_dir=/tmp/run
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/perception-rl fit --config configs/demo.yaml "$@"
