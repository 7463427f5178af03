"""Level switches over a ladder (issue 15, after EvoPress): units move one level up or down, in pairs that hold
the bit budget by themselves.

A layout is on the ladder when every module's config is one of `space.ladder`'s levels (cheapest first). Units:

    module units   per decoder layer, the fused sets that a serving engine computes as one matrix (q/k/v;
                   gate/up) and every other module alone: 4 units a layer on a Llama
    layer units    every module of one decoder layer

A step up moves a module to a level of the next higher cost on it, a step down to one of the next lower cost; where
several levels cost the same on a module (GPTQ's IQ4_NL beside llama-quantize's, or a type that falls back to
another's size on this width), one draw picks among them for the whole unit. A switch draws a unit that can rise
(one whose rise some other unit's fall pays for) and moves it a step up; then it draws another unit that can fall
and moves it a step down, among those whose saving pays for the rise. It prefers a faller whose saving equals the
rise's cost exactly (the total stays where it was, as EvoPress's switch of equal-sized levels does), otherwise the
cheapest faller that keeps the layout within the budget. No later repair is needed. A lateral switch moves one unit
to another level of the same cost: the budget is untouched, the rounding or type changes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict
from functools import lru_cache

import numpy as np

from agentqat.models import ModelFacts
from agentqat.strategy.layout import FUSED_SETS, Layout, module_cost
from agentqat.strategy.resolve import ModuleConfig, module_role_name
from agentqat.strategy.space import SearchSpace, pick

Unit = tuple[int, ...]


@lru_cache(maxsize=8)
def module_units(facts: ModelFacts) -> tuple[Unit, ...]:
    """Returns the module units: per layer, the fused sets (q/k/v, gate/up) and every other module alone."""
    fused = {name: position for position, members in enumerate(FUSED_SETS) for name in members}
    units: dict[tuple, list[int]] = {}
    for index, info in enumerate(facts.linears):
        name = module_role_name(info)
        key = (info.layer, fused[name]) if name in fused else (info.layer, name)
        units.setdefault(key, []).append(index)
    return tuple(tuple(members) for members in units.values())


@lru_cache(maxsize=8)
def layer_units(facts: ModelFacts) -> tuple[Unit, ...]:
    """Returns the layer units: the modules of each decoder layer."""
    units: dict[int, list[int]] = {}
    for index, info in enumerate(facts.linears):
        units.setdefault(info.layer, []).append(index)
    return tuple(tuple(units[layer]) for layer in sorted(units))


def unit_closure(indices: Collection[int], facts: ModelFacts) -> list[int]:
    """Returns `indices` with the rest of every module unit they touch (a fused set moves as one)."""
    return sorted({i for unit in module_units(facts) if set(unit) & set(indices) for i in unit})


def _weights(facts: ModelFacts) -> int:
    return sum(info.in_features * info.out_features for info in facts.linears)


def _cost(levels: Sequence[int], space: SearchSpace) -> int:
    """Returns the storage bits of a level assignment."""
    return sum(module_cost(space.ladder[level], info) for level, info in zip(levels, space.facts.linears, strict=True))


def layout_at(levels: Sequence[int], space: SearchSpace, compute_dtype: str = "fp32") -> Layout:
    """Returns the layout giving each module its ladder level."""
    return Layout(tuple(space.ladder[level] for level in levels), compute_dtype)


@lru_cache(maxsize=8)
def _level_costs(space: SearchSpace) -> tuple[tuple[int, ...], ...]:
    """Returns, per module, the storage bits of every ladder level on it."""
    return tuple(tuple(module_cost(level, info) for level in space.ladder) for info in space.facts.linears)


def _choices(costs: Sequence[int], level: int, direction: int) -> list[int]:
    """Returns the levels a module at `level` can move to: those of the next costlier cost (direction 1), of the next
    cheaper cost (-1), or the other levels of its own cost (0)."""
    now = costs[level]
    if direction == 0:
        return [position for position, cost in enumerate(costs) if cost == now and position != level]
    beyond = [cost for cost in costs if (cost - now) * direction > 0]
    if not beyond:
        return []
    target = min(beyond) if direction > 0 else max(beyond)
    return [position for position, cost in enumerate(costs) if cost == target]


def _step(levels: Sequence[int], unit: Unit, space: SearchSpace, direction: int) -> int | None:
    """Returns the change in storage bits when every module of `unit` makes one move in `direction` (see
    `_choices`), or None when one of them cannot."""
    costs = _level_costs(space)
    change = 0
    for index in unit:
        choices = _choices(costs[index], levels[index], direction)
        if not choices:
            return None
        change += costs[index][choices[0]] - costs[index][levels[index]]
    return change


def _move(levels: list[int], unit: Unit, space: SearchSpace, direction: int, rng: np.random.Generator) -> None:
    """Moves every module of `unit` in `direction`; among levels of equal cost one draw picks for the whole unit
    (a fused set stays at one level). Draws nothing when no module has a choice."""
    costs = _level_costs(space)
    choices = {index: _choices(costs[index], levels[index], direction) for index in unit}
    draw = rng.random() if any(len(options) > 1 for options in choices.values()) else 0.0
    for index, options in choices.items():
        levels[index] = options[int(draw * len(options))]


def has_equal_cost_levels(space: SearchSpace) -> bool:
    """Returns whether some module has two ladder levels of equal cost (a lateral move is possible)."""
    return any(len(set(costs)) < len(costs) for costs in _level_costs(space))


def snap_to_ladder(
    layout: Layout, space: SearchSpace, rng: np.random.Generator, spared: Collection[int] = ()
) -> list[int]:
    """Returns a level per module for `layout`: a module unit whose modules share a ladder level keeps it; any
    other takes the costliest level that costs no more than its configs do now (the cheapest level when none does),
    among levels of that cost the one sharing the most weight fields with its configs (a draw among equals); while
    that is over budget, random units move to a cheaper level, those without a module in `spared` first."""
    facts, ladder = space.facts, space.ladder
    position = {config: index for index, config in enumerate(ladder)}
    levels = [0] * len(facts.linears)
    for unit in module_units(facts):
        configs = [layout.configs[i] for i in unit]
        if len(set(configs)) == 1 and configs[0] in position:
            chosen = position[configs[0]]
        else:
            now = sum(module_cost(config, facts.linears[i]) for config, i in zip(configs, unit, strict=True))
            costs = [sum(module_cost(level, facts.linears[i]) for i in unit) for level in ladder]
            ceiling = max((cost for cost in costs if cost <= now), default=min(costs))
            tied = [index for index, cost in enumerate(costs) if cost == ceiling]
            shared = [sum(_shared_fields(ladder[index], config) for config in configs) for index in tied]
            best = [index for index, count in zip(tied, shared, strict=True) if count == max(shared)]
            chosen = best[0] if len(best) == 1 else pick(rng, best)
        for index in unit:
            levels[index] = chosen
    limit = space.bits_budget * _weights(facts)
    while _cost(levels, space) > limit:
        fallers = [unit for unit in module_units(facts) if _step(levels, unit, space, -1) is not None]
        if not fallers:
            break
        others = [unit for unit in fallers if not set(unit) & set(spared)]
        _move(levels, pick(rng, others or fallers), space, -1, rng)
    return levels


def _shared_fields(level: ModuleConfig, config: ModuleConfig) -> int:
    """Returns how many weight fields a ladder level shares with a module's config."""
    return sum(value == getattr(config.weight, key) for key, value in asdict(level.weight).items())


def _faller(
    levels: Sequence[int], riser: Unit, units: Sequence[Unit], space: SearchSpace, rng: np.random.Generator
) -> Unit | None:
    """Returns a unit whose fall pays for `riser`'s rise (an exact payer if any, else the cheapest), or None."""
    rise = _step(levels, riser, space, 1)
    assert rise is not None
    room = space.bits_budget * _weights(space.facts) - _cost(levels, space) - rise  # bits the faller must save
    steps = {unit: _step(levels, unit, space, -1) for unit in units if unit != riser}
    savings = {unit: -step for unit, step in steps.items() if step is not None}
    payers = [unit for unit, saving in savings.items() if saving >= -room]
    if not payers:
        return None
    exact = [unit for unit in payers if savings[unit] == rise]
    cheapest = min(savings[unit] for unit in payers)
    return pick(rng, exact or [unit for unit in payers if savings[unit] == cheapest])


def ladder_switch(
    levels: Sequence[int], units: Sequence[Unit], space: SearchSpace, rng: np.random.Generator
) -> list[int] | None:
    """Returns the levels with one unit a level up and another a level down, within the budget (see the module
    docstring): the riser is drawn uniformly among the units that can rise and whose rise some faller pays for.
    Returns None when there is none."""
    risers = [unit for unit in units if _step(levels, unit, space, 1) is not None]
    for position in rng.permutation(len(risers)):
        riser = risers[int(position)]
        faller = _faller(levels, riser, units, space, rng)
        if faller is not None:
            switched = list(levels)
            _move(switched, riser, space, 1, rng)
            _move(switched, faller, space, -1, rng)
            return switched
    return None


def lateral_switch(
    levels: Sequence[int], units: Sequence[Unit], space: SearchSpace, rng: np.random.Generator
) -> list[int] | None:
    """Returns the levels with one unit, drawn uniformly among those that have one, moved to another level of the
    same cost (another rounding of the same type: the budget is unchanged); None when no unit has one."""
    movable = [unit for unit in units if _step(levels, unit, space, 0) is not None]
    if not movable:
        return None
    switched = list(levels)
    _move(switched, pick(rng, movable), space, 0, rng)
    return switched


def best_uniform_level(space: SearchSpace) -> int:
    """Returns the costliest ladder level that fits the budget on every module (the cheapest when none does)."""
    limit = space.bits_budget * _weights(space.facts)
    fitting = [p for p in range(len(space.ladder)) if _cost([p] * len(space.facts.linears), space) <= limit]
    return max(fitting, default=0)
