"""What the installed vLLM CPU build can serve on this machine's CPU, as pytest markers."""

from pathlib import Path

import pytest

# vLLM's CPU wheel loads its AVX2 kernels on a CPU without AVX-512, and those have no W4A16 GEMM
# (torch.ops._C.cpu_gemm_wna16): a W4A16 model's first request kills the engine there. Seen on an AMD EPYC (AVX2).
VLLM_CPU_W4A16 = pytest.mark.skipif(
    Path("/proc/cpuinfo").is_file() and "avx512f" not in Path("/proc/cpuinfo").read_text(),
    reason="vLLM CPU has no W4A16 kernel without AVX-512 (its AVX2 build lacks cpu_gemm_wna16)",
)
