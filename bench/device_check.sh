#!/usr/bin/env bash
# The device check (issue 25, part 7): CPU-vs-device agreement on the tiny test Llama and throughput and memory of a
# random-initialised Llama-3.2-1B-shaped model, in under 10 minutes on one GPU. Needs only PyTorch on the machine:
# agentqat runs from this source tree (PYTHONPATH), and its other dependencies (transformers, safetensors, pydantic,
# filelock, tokenizers, gguf) are installed into a virtual environment over the system's torch, from the wheels in
# $WHEELS (a folder carried with the tree: `pip download -d bench/wheels transformers safetensors pydantic filelock
# tokenizers gguf --no-deps`, then their dependencies) when they are not importable already.
#
#   bash bench/device_check.sh [OUT_DIR] [--device cuda|cuda:N|cpu] [--big llama-1b|tiny]
#
# OUT_DIR defaults to $OUT (the device machine's output folder), else reports/device-check. It writes
# device_check.json (every figure), pytest.txt (tests/test_device.py on that device; DEVICE_CHECK_TESTS=0 skips it)
# and environment.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-reports/device-check}"
if [[ $# -gt 0 && "$1" != --* ]]; then out="$1"; shift; fi
mkdir -p "$out"
python="${PYTHON:-python3}"
if ! "$python" -c "import transformers, safetensors, pydantic, filelock" 2>/dev/null; then
    if [[ -z "${WHEELS:-}" ]]; then
        echo "device_check: transformers, safetensors, pydantic or filelock is missing; set WHEELS to a folder of their wheels" >&2
        exit 2
    fi
    "$python" -m venv --system-site-packages /tmp/device-check-venv
    python=/tmp/device-check-venv/bin/python
    "$python" -m pip install --quiet --no-index --find-links "$WHEELS" transformers safetensors pydantic filelock gguf pytest
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ "$python" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('transformers', transformers.__version__)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; } > "$out/environment.txt"
cat "$out/environment.txt"
timeout 480 "$python" bench/device_check.py --out "$out" "$@"
if [[ "${DEVICE_CHECK_TESTS:-1}" == 1 ]] && "$python" -c "import pytest" 2>/dev/null; then
    timeout 90 "$python" -m pytest -q -p no:cacheprovider tests/test_device.py > "$out/pytest.txt" 2>&1 || true
    tail -3 "$out/pytest.txt"
fi
