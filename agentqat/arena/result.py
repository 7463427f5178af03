"""The outcome of one match: a frozen, JSON-serializable record. A failed match is a result, not an error."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

RESULT_SCHEMA_VERSION = 1

Outcome = Literal["ok", "nan", "overflow", "collapse", "error", "timeout", "invalid"]
FAILURES: tuple[Outcome, ...] = ("nan", "overflow", "collapse", "error", "timeout", "invalid")


@dataclass(frozen=True)
class Quality:
    """How close the quantized model stays to the base model on this match's tokens."""

    perplexity: float
    kl: float  # mean KL(base || quantized), nats per token
    top1: float  # share of positions where the argmax token agrees with the base's
    window_nll: tuple[float, ...]  # mean NLL of each evaluation window, for confidence intervals
    window_kl: tuple[float, ...]
    base_perplexity: float  # the base model's on the same windows
    cloze_accuracy: float | None = None  # last-word prediction on held-out passages
    base_cloze_accuracy: float | None = None
    qa_exact_match: float | None = None  # on the questions the base model answers correctly (base: 1.0)


@dataclass(frozen=True)
class EngineCost:
    """Decode latency and peak memory on a deployment target's engine, read from its measured scheme costs
    (agentqat.arena.engine_costs), beside the unquantized model's on the same engine."""

    target: str
    decode_ms_per_token: float
    peak_memory_bytes: int
    base_decode_ms_per_token: float
    base_peak_memory_bytes: int


@dataclass(frozen=True)
class Cost:
    """What the quantized model costs. Latency is simulated on CPU with fake quantization: label it so. `engine`
    holds the real engine's figures under a vllm-* deployment target whose costs were measured."""

    bits_per_weight: float
    model_bytes: int
    bytes_per_token: int  # estimated bytes read per decoded token: every weight once (a tied head reads the embeddings)
    peak_memory_bytes: int
    simulated_latency_ms_per_token: float
    quantize_seconds: float
    evaluate_seconds: float
    engine: EngineCost | None = None


@dataclass(frozen=True)
class MatchResult:
    """One strategy on one stage of one arena with one seed and window set."""

    strategy_id: str  # canonical hash of the strategy document
    strategy_name: str
    arena: str
    stage: str
    seed: int
    window_set: int
    tokens: int
    outcome: Outcome
    message: str = ""
    quality: Quality | None = None
    cost: Cost | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    worker: str = ""
    seconds: float = 0.0
    schema_version: int = RESULT_SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.outcome != "ok"

    def to_json(self) -> str:
        """Returns the result as one line of JSON."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> MatchResult:
        """Returns the result a `to_json` dict describes."""
        data = dict(data)
        if data.get("schema_version") != RESULT_SCHEMA_VERSION:
            raise ValueError(f"match result schema_version {data.get('schema_version')} is not {RESULT_SCHEMA_VERSION}")
        quality = data.pop("quality")
        cost = data.pop("cost")
        if quality is not None:
            quality = Quality(**{**quality, "window_nll": tuple(quality["window_nll"]), "window_kl": tuple(quality["window_kl"])})
        if cost is not None:
            engine = cost.get("engine")
            cost = Cost(**{**cost, "engine": None if engine is None else EngineCost(**engine)})
        return cls(**data, quality=quality, cost=cost)
