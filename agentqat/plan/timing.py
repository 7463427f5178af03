"""Time estimates for a model on an arena: measured (or assumed) rates times the work each step does.

Work units: a forward pass costs tokens x forward parameters (agentqat.plan.shape); collecting calibration adds
tokens x Hessian entries; quantizing costs per weight (RTN) or per module shape (GPTQ); level files cost per byte.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentqat import defaults
from agentqat.arena.config import Arena
from agentqat.evolution.loop import tournament_cost
from agentqat.levels import level_config, level_name
from agentqat.plan.memory import reference_windows
from agentqat.plan.rates import Rates
from agentqat.plan.shape import ModelShape, hessian_entries
from agentqat.plan.storage import EXAMPLE_LEVEL, FLOAT32_BYTES, level_size
from agentqat.strategy.document import WeightGene
from agentqat.strategy.resolve import ModuleConfig, module_needs_calibration

ON_THE_FLY = (WeightGene(bits=4, group_size=64, rounding="rtn"), WeightGene(bits=4, group_size=64, rounding="gptq"))


@dataclass(frozen=True)
class Estimate:
    """The estimated seconds of one step, and what they cover."""

    name: str
    seconds: float
    detail: str


def forward_seconds(shape: ModelShape, rates: Rates, tokens: int) -> float:
    """Returns the seconds of evaluating `tokens` tokens (forward and KL against the references)."""
    return tokens * shape.forward_parameters * rates.forward_s_per_token_param


def calibration_seconds(shape: ModelShape, rates: Rates, tokens: int) -> float:
    """Returns the seconds of collecting calibration statistics on `tokens` tokens."""
    return tokens * (shape.forward_parameters + hessian_entries(shape.facts)) * rates.calibration_s_per_token_param


def quantize_seconds(shape: ModelShape, rates: Rates, config: ModuleConfig) -> float:
    """Returns the seconds of quantizing every linear module at `config` (GPTQ by its shape model, the other
    methods at RTN's rate per weight)."""
    if config.weight.bits == 16:
        return 0.0
    if config.weight.rounding == "gptq":
        return sum(rates.gptq_seconds(info.out_features, info.in_features) for info in shape.facts.linears)
    return shape.linear_weights * rates.rtn_s_per_weight


def read_seconds(shape: ModelShape, rates: Rates) -> float:
    """Returns the seconds of reading every linear module of one level from the database, as float32 bytes from disk.
    A packed level reads 4-10x fewer bytes and unpacks them (about 0.5-1.5 ns a weight on the CPU bench/rates.py
    measured, bench/levels_packed.py): on that machine this is an upper bound, 2-4x a packed level's read."""
    return FLOAT32_BYTES * shape.linear_weights * rates.level_read_s_per_byte


def build_estimate(shape: ModelShape, rates: Rates, ladder: tuple[ModuleConfig, ...]) -> Estimate:
    """Returns the time to build the level database of `ladder` (calibration not included); of one example level
    (agentqat.plan.storage.EXAMPLE_LEVEL) when the ladder is empty."""
    levels = ladder or (level_config(EXAMPLE_LEVEL),)
    seconds = sum(quantize_seconds(shape, rates, config) for config in levels)
    seconds += sum(level_size(shape, config).bytes for config in levels) * rates.level_write_s_per_byte
    detail = f"{len(levels)} levels x {len(shape.facts.linears)} modules, quantized and written"
    if not ladder:
        detail = f"none: the arena declares no ladder; one level ({level_name(levels[0])}) would take this"
    return Estimate("build the level database", seconds, detail)


def match_quantize_seconds(shape: ModelShape, rates: Rates, arena: Arena) -> tuple[float, str]:
    """Returns the seconds a match spends swapping in its quantized modules, and how: read from the level database
    (arenas with a ladder) or quantized on the fly by RTN; every module counted (no layer-cache hit)."""
    if arena.levels is not None:
        return read_seconds(shape, rates), "every module read from the level database"
    return quantize_seconds(shape, rates, level_config(ON_THE_FLY[0])), "every module quantized on the fly (RTN, no layer-cache hit)"


def screen_estimate(shape: ModelShape, rates: Rates, arena: Arena) -> Estimate:
    """Returns the time of one screening match: one window set of the first stage."""
    stage = arena.stages[0]
    tokens = stage.windows * arena.window_tokens
    quantize, how = match_quantize_seconds(shape, rates, arena)
    return Estimate(f"screen a candidate ({stage.name})", forward_seconds(shape, rates, tokens) + quantize, f"{tokens:,} tokens; {how}")


def search_estimate(shape: ModelShape, rates: Rates, arena: Arena, matches: int, workers: int) -> Estimate:
    """Returns the time of a search of `matches` matches as `evolve --budget` counts them (every stage's), at the
    mean tokens per match of the arena's tournaments, on `workers` workers in parallel."""
    offspring = arena.levels.offspring if arena.levels is not None else defaults.POPULATION
    tournament = tournament_cost(arena, offspring)
    tokens = tournament.tokens / tournament.matches
    quantize, how = match_quantize_seconds(shape, rates, arena)
    seconds = matches * (forward_seconds(shape, rates, tokens) + quantize) / max(workers, 1)
    detail = f"{tokens:,.0f} tokens per match in tournaments of {offspring}; {how}; {workers} worker(s)"
    return Estimate(f"search of {matches:,} matches", seconds, detail)


def estimates(shape: ModelShape, rates: Rates, arena: Arena, ladder: tuple[ModuleConfig, ...], matches: int, workers: int) -> tuple[Estimate, ...]:
    """Returns the plan's time estimates: base references, calibration, level database, one screening match, the
    same match quantizing on the fly (RTN, GPTQ), and a search."""
    reference_tokens = reference_windows(arena) * arena.window_tokens
    calibration_tokens = arena.calibration_windows * arena.window_tokens
    needs = any(module_needs_calibration(config) for config in ladder)
    on_the_fly = [
        Estimate(f"quantize on the fly ({gene.rounding} w{gene.bits} g{gene.group_size})", quantize_seconds(shape, rates, level_config(gene)),
                 "every module, once per config per worker (the layer cache keeps it)")
        for gene in ON_THE_FLY
    ]  # fmt: skip
    return (
        Estimate("base references", forward_seconds(shape, rates, reference_tokens), f"{reference_tokens:,} tokens, once per worker"),
        Estimate("calibration statistics", calibration_seconds(shape, rates, calibration_tokens),
                 f"{calibration_tokens:,} tokens, once per model and calibration (cached on disk)" + ("; the ladder needs them" if needs else "")),
        build_estimate(shape, rates, ladder),
        screen_estimate(shape, rates, arena),
        *on_the_fly,
        search_estimate(shape, rates, arena, matches, workers),
    )  # fmt: skip
