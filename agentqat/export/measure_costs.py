"""Engine costs measured: for each scheme of a vLLM deployment target, one uniform model (every linear module in that
scheme, quantized by RTN: rounding does not change the kernels; bf16: the unquantized model) is exported to
compressed-tensors and served alone by vLLM (agentqat.export.serve): decode milliseconds per token (median of 3 greedy
requests of 128 tokens), time to the first token, the server's peak resident memory, and the bytes of its weight
files. The profile is cached where agentqat.arena.engine_costs looks it up.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from agentqat import defaults
from agentqat.arena.engine_costs import ENGINE_TARGETS, EngineProfile, SchemeCost, profile_key, profile_path, vllm_version
from agentqat.errors import UserError
from agentqat.export import export, prepare_source
from agentqat.export.serve import measure_served
from agentqat.models import ModelFacts, load_facts, resolve_model_directory
from agentqat.progress import Reporter, phase
from agentqat.quant.base import ActivationQuant, OutlierPolicy, WeightQuant
from agentqat.strategy.deploy import BF16, TARGETS, Scheme, Target, describe_config, missing_kernels
from agentqat.strategy.layout import Layout, document_of
from agentqat.strategy.resolve import ModuleConfig

DECODE_TOKENS = 128
REPEATS = 3
REFERENCE = ModuleConfig(WeightQuant(bits=4, group_size=64, symmetric=True, rounding="rtn"), ActivationQuant(), OutlierPolicy())


def why_not_measurable(target: str) -> str | None:
    """Returns why this machine cannot measure the target's engine (None: it can)."""
    if target not in ENGINE_TARGETS:
        return f"{target} is not served by vLLM; engine costs exist for {', '.join(ENGINE_TARGETS)}"
    if not vllm_version():
        return "vLLM is not installed (make setup installs it)"
    if target == "vllm-cuda":
        import torch

        if not torch.cuda.is_available():
            return "vllm-cuda needs a CUDA GPU and this machine has none"
    missing = missing_kernels(target)
    return "; ".join(f"{scheme} cannot be served here: {why}" for scheme, why in missing.items()) or None


def scheme_config(scheme: Scheme) -> ModuleConfig:
    """Returns the config measured for a scheme: the reference (int4 g64 symmetric RTN) moved into it."""
    return scheme.nearest(REFERENCE)


def uniform_document(target: Target, scheme: Scheme, facts: ModelFacts) -> dict:
    """Returns the strategy putting every linear module in `scheme` (16 bits where the kernels need wider widths)."""
    config = scheme_config(scheme)
    configs = tuple(target.nearest(config, info.in_features, info.out_features) for info in facts.linears)
    return document_of(Layout(configs, "fp32"), facts, f"engine-{scheme.name.lower()}")


def measure_profile(target_name: str, arena, reporter: Reporter | None = None, keep: Path | None = None) -> EngineProfile:
    """Returns the target's profile of the arena's model, measured now (every scheme served alone) and cached;
    UserError when this machine cannot run the engine. `keep`: a directory to keep the exports and logs in."""
    reason = why_not_measurable(target_name)
    if reason is not None:
        raise UserError(f"cannot measure engine costs of {target_name}: {reason}", "measure them on a machine that runs the engine, or deploy to any")
    target = TARGETS[target_name]
    facts = load_facts(arena.model)
    work = Path(keep or tempfile.mkdtemp(prefix="agentqat-engine-costs-"))
    schemes = {}
    try:
        with phase(reporter, "engine costs", total=len(target.schemes), detail=f"{target.engine}: {target.describe()}") as step:
            for scheme in target.schemes:
                if scheme.weight_bits is None:  # an open scheme (gguf's block formats): no single representative
                    continue
                if scheme is BF16:
                    directory = resolve_model_directory(arena.model)
                else:
                    directory = work / scheme.name
                    if not (directory / "config.json").exists():
                        export(prepare_source(uniform_document(target, scheme, facts), arena), "compressed-tensors", directory, deploy=target_name)
                served = measure_served(directory, work / f"{scheme.name}.log", DECODE_TOKENS, REPEATS)
                schemes[scheme.name] = SchemeCost(
                    config=describe_config(scheme_config(scheme)),
                    decode_ms_per_token=served.decode_ms_per_token,
                    first_token_s=served.first_token_s,
                    peak_memory_bytes=served.peak_memory_bytes,
                    weight_bytes=served.weight_bytes,
                )
                step()
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    profile = EngineProfile(
        target=target_name, model=arena.model, key=profile_key(arena.model), vllm=vllm_version(),
        threads=defaults.LLM_THREADS, measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), schemes=schemes,
    )  # fmt: skip
    path = profile_path(target_name, arena.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profile.to_json())
    return profile
