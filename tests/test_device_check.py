"""bench/device_check.sh, the GPU check that runs when a session has a device, run here on the CPU with a tiny model in
place of the 1B one: its agreement runs and its throughput figures are written, the agreement exact on one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_runs_on_the_cpu(tmp_path):
    environment = {**os.environ, "PYTHON": sys.executable, "DEVICE_CHECK_TESTS": "0"}
    command = ["bash", str(ROOT / "bench" / "device_check.sh"), str(tmp_path), "--device", "cpu", "--big", "tiny"]
    subprocess.run(command, check=True, env=environment, capture_output=True, timeout=600)
    result = json.loads((tmp_path / "device_check.json").read_text())
    differences = result["agreement"]["against_cpu_float32"]
    assert set(differences) == {"cpu float32", "cpu float32 sequential", "cpu float32 (the rule's dtype)"}
    assert all(entry["max_rel"] < 1e-6 for entry in differences.values())
    assert all(kl > 0 for kl in result["agreement"]["kl"]["cpu-float32"].values())
    throughput = result["throughput"]
    assert throughput["device"] == "cpu" and throughput["compare_tokens_per_s"] > 0 and throughput["peak_device_memory_bytes"] is None
    assert (tmp_path / "environment.txt").read_text().startswith("torch ")
