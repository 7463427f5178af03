"""A ladder: the levels an arena declares (weight genes over the base default), checked against a model by the
method registry and ordered by what they cost on it."""

from __future__ import annotations

from dataclasses import asdict

from agentqat.arena.config import Levels
from agentqat.errors import UserError
from agentqat.models import ModelFacts
from agentqat.quant.base import ActivationQuant, OutlierPolicy, WeightQuant
from agentqat.strategy.bits import module_bits
from agentqat.strategy.document import BASE_DEFAULT, StrategyError, WeightGene, parse_strategy
from agentqat.strategy.resolve import ModuleConfig, resolve_strategy


def level_config(gene: WeightGene) -> ModuleConfig:
    """Returns the module config of a level: the gene's fields over the base default's weight, activations and
    outliers left at their defaults (a level is a weight quantization and nothing else)."""
    weight = {**BASE_DEFAULT.weight.model_dump(), **gene.model_dump(exclude_none=True)}
    return ModuleConfig(WeightQuant(**weight), ActivationQuant(), OutlierPolicy())


def level_name(config: ModuleConfig) -> str:
    """Returns a short readable name of a level, e.g. "gptq-w3-g64-asym" (g0 is per channel)."""
    weight = config.weight
    base = WeightQuant()
    extras = [f"{key}-{value}" for key, value in asdict(weight).items()
              if key in ("format", "scale", "clip") and value != getattr(base, key)]  # fmt: skip
    symmetric = "sym" if weight.symmetric else "asym"
    return "-".join([weight.rounding, f"w{weight.bits}", f"g{weight.group_size}", symmetric, *map(str, extras)])


def _uniform_bits(config: ModuleConfig, facts: ModelFacts) -> float:
    total = sum(module_bits(config, info, 0).total for info in facts.linears)
    return total / sum(info.in_features * info.out_features for info in facts.linears)


def ladder_configs(ladder: tuple[WeightGene, ...], facts: ModelFacts) -> tuple[ModuleConfig, ...]:
    """Returns the ladder's levels as module configs, cheapest first on this model; raises UserError naming the
    first level the registry refuses on one of its modules."""
    configs = []
    for index, gene in enumerate(ladder):
        config = level_config(gene)
        document = {"name": "level", "default": {"weight": asdict(config.weight)}}
        try:
            resolve_strategy(parse_strategy(document), facts)
        except StrategyError as error:
            raise UserError(
                f"levels.ladder[{index}] ({level_name(config)}) cannot quantize {facts.name}: {error.lines[0]}",
                "change or remove that level in the arena's [levels] ladder",
            ) from None
        configs.append(config)
    if len(set(configs)) != len(configs):
        raise UserError("levels.ladder names one level twice (after the base defaults)", "remove the repeated level")
    return tuple(sorted(configs, key=lambda config: (_uniform_bits(config, facts), level_name(config))))


def arena_ladder(levels: Levels | None, facts: ModelFacts) -> tuple[ModuleConfig, ...]:
    """Returns an arena's ladder on this model (cheapest level first), or () when the arena declares none."""
    return ladder_configs(levels.ladder, facts) if levels is not None else ()
