"""A mixed winner exported to compressed-tensors and served by the real vLLM CPU server: it loads, answers, and
its perplexity from vLLM's prompt logprobs matches the arena's on the same windows.

Strategy: layers 0-19 W4A16 (int4, groups of 64, symmetric, RTN), layers 20-29 W8A8 (int8 per output channel,
dynamic per-token int8 activations), the real SmolLM2-135M, 4 windows of 256 tokens. The arena computes in float32
with fake quantization; vLLM computes in bfloat16 with its int4 and int8 kernels (CPUWNA16LinearKernel,
CPUInt8ScaledMMLinearKernel): it casts the exported fp16 scales to bf16 (up to 2^-9 relative error per group) and
quantizes activations to int8 from bf16 inputs. Measured on 2 cores: arena 40.432, vLLM 40.637 (+0.51%); the same
export served with --dtype float16 (scales exact) gave 40.476 (+0.11%), and the base model alone in bf16 differs
from fp32 by +0.03% here, so the bf16 scales account for most of it. PERPLEXITY_TOLERANCE (2%) is four times the
measured gap, small enough that a wrong scale, a swapped shard or a lost zero point (each several percent or
collapse) fails. The weight file is +0.05% over the bytes `agentqat.strategy.bits` counts (header, weight_shape).

$AGENTQAT_TEST_MODEL_CACHE, when set, is a cache that already holds the converted model (saves ~30 s).
"""

from __future__ import annotations

import json
import math
import os

import pytest
from vllm_cpu import VLLM_CPU_W4A16

from agentqat.arena.config import Arena, Stage
from agentqat.defaults import CACHE_ENV

PERPLEXITY_TOLERANCE = 0.02  # relative; see the module docstring
BYTES_TOLERANCE = 0.002  # the weight file over the counted model bytes (measured +0.05%)
WINDOWS = 4
WINDOW_TOKENS = 256
MIXED = {
    "schema_version": 1,
    "name": "w4a16-g64-sym-0-19-w8a8-20-29",
    "default": {"weight": {"bits": 4, "group_size": 64, "symmetric": True, "rounding": "rtn"}},
    "rules": [{
        "layers": "20-29", "modules": ["all"],
        "weight": {"bits": 8, "group_size": 0, "symmetric": True},
        "activation": {"bits": 8, "granularity": "per_token"},
    }],
}  # fmt: skip


@pytest.mark.slow
@VLLM_CPU_W4A16
def test_vllm_serves_the_mixed_export_at_the_arenas_perplexity(tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    from agentqat.arena.match import Workbench
    from agentqat.arena.request import MatchRequest
    from agentqat.export import export, prepare_source
    from agentqat.export.serve import post, window_nll
    from agentqat.serving.server import VllmServer

    if os.environ.get("AGENTQAT_TEST_MODEL_CACHE"):
        monkeypatch.setenv(CACHE_ENV, os.environ["AGENTQAT_TEST_MODEL_CACHE"])
    stage = Stage(name="check", windows=WINDOWS)
    arena = Arena(name="export-vllm", window_tokens=WINDOW_TOKENS, compute_threads=2, stages=(stage,))
    workbench = Workbench(arena)
    windows = workbench.windows(stage, arena.seed, 0)
    played = workbench.play(MatchRequest(MIXED, stage.name, arena.seed))
    assert played.outcome == "ok", played.message
    del workbench

    source = prepare_source(MIXED, arena, figures={"perplexity": played.quality.perplexity})
    out = export(source, "compressed-tensors", tmp_path / "export", deploy="vllm-cpu")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["format"] == "mixed-precision" and len(config["config_groups"]) == 2
    written, counted = json.loads((out / "agentqat-export.json").read_text())["weight_bytes"], played.cost.model_bytes
    assert 0 < written / counted - 1 < BYTES_TOLERANCE

    with VllmServer(out, log_path=tmp_path / "vllm.log") as server:
        answer = post(f"{server.base_url}/completions", {
            "model": server.model_name, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0.0,
        })["choices"][0]["text"]  # fmt: skip
        nll = [window_nll(server.base_url, server.model_name, window.tolist()) for window in windows]
    served = math.exp(sum(nll) / len(nll))
    arena_ppl = played.quality.perplexity
    print(f"\narena perplexity {arena_ppl:.3f}, vLLM {served:.3f} ({served / arena_ppl - 1:+.2%}); answer {answer!r}; "
          f"{written:,} bytes written, {counted:,} counted ({written / counted - 1:+.3%})")
    assert answer.strip()
    assert abs(served / arena_ppl - 1) < PERPLEXITY_TOLERANCE
