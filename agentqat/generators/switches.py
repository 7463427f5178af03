"""Level switches over a ladder (issue 15, after EvoPress): units move one level up or down, in pairs that hold
the bit budget by themselves.

A layout is on the ladder when every module's config is one of `space.ladder`'s levels (cheapest first). Units:

    module units   per decoder layer, the fused sets that a serving engine computes as one matrix (q/k/v;
                   gate/up) and every other module alone: 4 units a layer on a Llama
    layer units    every module of one decoder layer

A switch draws a unit that can rise (one whose rise some other unit's fall pays for) and moves each of its modules
one level up; then it draws another unit that can fall and moves it one level down, among those whose saving
pays for the rise. It prefers a faller whose
saving equals the rise's cost exactly (the total stays where it was, as EvoPress's switch of equal-sized levels
does), otherwise the cheapest faller that keeps the layout within the budget. No later repair is needed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from functools import lru_cache

import numpy as np

from agentqat.models import ModelFacts
from agentqat.strategy.layout import FUSED_SETS, Layout, module_cost
from agentqat.strategy.resolve import module_role_name
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


def snap_to_ladder(
    layout: Layout, space: SearchSpace, rng: np.random.Generator, spared: Collection[int] = ()
) -> list[int]:
    """Returns a level per module for `layout`: each module unit takes the costliest level that costs no more than
    its configs do now (the cheapest level when none does); while that is over budget, random units fall a level,
    those without a module in `spared` first."""
    facts, ladder = space.facts, space.ladder
    levels = [0] * len(facts.linears)
    for unit in module_units(facts):
        now = sum(module_cost(layout.configs[i], facts.linears[i]) for i in unit)
        costs = [sum(module_cost(level, facts.linears[i]) for i in unit) for level in ladder]
        chosen = max((position for position, cost in enumerate(costs) if cost <= now), default=0)
        for index in unit:
            levels[index] = chosen
    limit = space.bits_budget * _weights(facts)
    while _cost(levels, space) > limit:
        fallers = [unit for unit in module_units(facts) if all(levels[i] > 0 for i in unit)]
        others = [unit for unit in fallers if not set(unit) & set(spared)]
        for index in pick(rng, others or fallers):
            levels[index] -= 1
    return levels


def _step(levels: Sequence[int], unit: Unit, space: SearchSpace, direction: int) -> int:
    """Returns the change in storage bits when every module of `unit` moves one level in `direction`."""
    ladder, linears = space.ladder, space.facts.linears
    return sum(module_cost(ladder[levels[i] + direction], linears[i]) - module_cost(ladder[levels[i]], linears[i]) for i in unit)


def _faller(
    levels: Sequence[int], riser: Unit, units: Sequence[Unit], space: SearchSpace, rng: np.random.Generator
) -> Unit | None:
    """Returns a unit whose fall pays for `riser`'s rise (an exact payer if any, else the cheapest), or None."""
    rise = _step(levels, riser, space, 1)
    room = space.bits_budget * _weights(space.facts) - _cost(levels, space) - rise  # bits the faller must save
    savings = {unit: -_step(levels, unit, space, -1) for unit in units if unit != riser and all(levels[i] > 0 for i in unit)}
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
    top = len(space.ladder) - 1
    risers = [unit for unit in units if all(levels[i] < top for i in unit)]
    for position in rng.permutation(len(risers)):
        riser = risers[int(position)]
        faller = _faller(levels, riser, units, space, rng)
        if faller is not None:
            switched = list(levels)
            for index in riser:
                switched[index] += 1
            for index in faller:
                switched[index] -= 1
            return switched
    return None


def best_uniform_level(space: SearchSpace) -> int:
    """Returns the costliest ladder level that fits the budget on every module (the cheapest when none does)."""
    limit = space.bits_budget * _weights(space.facts)
    fitting = [p for p in range(len(space.ladder)) if _cost([p] * len(space.facts.linears), space) <= limit]
    return max(fitting, default=0)
