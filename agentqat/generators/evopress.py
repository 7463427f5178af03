"""The EvoPress-style generator: (1+λ) evolution of the bit allocation, by level switches that keep the budget.

After EvoPress (Sieberling et al., 2024), inside our arena: the loop's staged evaluation (few tokens for every
offspring, more tokens and window sets for the best share) plays the role of EvoPress's multi-step selection,
and KL to the base model leads the score.

    start      with an empty population: random proposals. The uniform GPTQ start EvoPress uses comes from the shared
               prior (`agentqat.generators.prior`), which the loop plays for every generator alike as generation 0
    parent     the best of the population (1+λ: the parent stays in the population until an offspring beats it):
               the best survivor by score, or while nothing survives (the loop then passes the collapsed
               strategies of lowest KL) the collapsed one of lowest KL
    offspring  λ per generation, each from the parent by
                 P 0.7   1-3 level switches (`level_switch`)
                 P 0.15  one of the other mutation operators (scales, outliers, rounding, group sizes, spans)
                 P 0.15  a crossover with another member of the population, then one level switch
               (with a population of one, crossover's share goes to level switches)

A level switch works on units: the attention or the MLP modules of one decoder layer (60 units on SmolLM2).
One unit, drawn uniformly among those that can rise, goes one level up (the next allowed bit width, its other
genes kept); while the layout is over budget, other units drawn uniformly go one level down. Like EvoPress's
switch of compression levels, the bits move between layers and the total stays at the budget.

With a ladder (an arena with a level database: `space.ladder`), evo searches EvoPress's space instead: every
module at a ladder level, fused sets (q/k/v, gate/up) moving together. The start is the costliest uniform level
within the budget, and the first generation is that start and its offspring (no random strategies). Every
offspring of the best is min(U{1,3}, U{1,3}) level switches of `agentqat.generators.switches` (EvoPress draws its
mutation count so), each over layers with P P_LAYER_SWITCH and over module units otherwise; a parent off the
ladder (a seeded strategy of another kind) is snapped onto it first. Where the ladder has levels of equal cost on
some module (two roundings of one GGML type), a switch is lateral with P P_LATERAL_SWITCH (a unit moves to the other
rounding), and also whenever no unit can rise within the budget. Unlike EvoPress, whose selection steps run
inside one generation, the staged tournament of the evolution loop selects: few tokens for every offspring, more
for the best share (the arena's stages).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from agentqat.generators.base import Evaluated, GeneratorRecord, ranked_parents, register_generator
from agentqat.generators.operators import CROSSOVERS, MUTATIONS
from agentqat.generators.random import RandomGenerator
from agentqat.generators.switches import (
    has_equal_cost_levels,
    ladder_switch,
    lateral_switch,
    layer_units,
    layout_at,
    module_units,
    snap_to_ladder,
)
from agentqat.strategy.document import strategy_id
from agentqat.strategy.layout import Layout, document_of, layout_bits, layout_of
from agentqat.strategy.repair import fix_config, repair_layout
from agentqat.strategy.resolve import pattern_matches
from agentqat.strategy.space import SearchSpace, pick

P_LEVEL_SWITCH = 0.7
P_OTHER_MUTATION = 0.15
MAX_SWITCHES = 3
UNIT_ROLES = ("attn", "mlp")
DRAWS_PER_PROPOSAL = 20
P_LAYER_SWITCH = 0.25  # ladder switches that move whole layers; the rest move module units
P_LATERAL_SWITCH = 0.25  # on a ladder with levels of equal cost: switches to another level of the same cost


def units_of(space: SearchSpace) -> list[list[int]]:
    """Returns the module indices of each unit: the attention, then the MLP modules of every layer."""
    linears = space.facts.linears
    units: dict[tuple[int, str], list[int]] = {}
    for index, info in enumerate(linears):
        role = next((r for r in UNIT_ROLES if pattern_matches(r, info)), "other")
        units.setdefault((info.layer, role), []).append(index)
    return [units[key] for key in sorted(units)]


def _shifted(layout: Layout, unit: list[int], space: SearchSpace, step: int) -> Layout | None:
    """Returns the layout with every module of `unit` one allowed bit width up (step 1) or down (-1), or None."""
    levels = sorted(space.choices.bits)
    configs = []
    for index in unit:
        config = layout.configs[index]
        position = levels.index(config.weight.bits) + step if config.weight.bits in levels else -1
        if not 0 <= position < len(levels):
            return None
        moved = replace(config, weight=replace(config.weight, bits=levels[position]))
        configs.append(fix_config(moved, space.facts.linears[index].in_features, space.choices))
    return layout.replaced(unit, configs)


def level_switch(layout: Layout, space: SearchSpace, rng: np.random.Generator) -> Layout | None:
    """Returns the layout with one unit a level up and, while over budget, other units a level down; None if stuck."""
    units = units_of(space)
    risers = [u for u in units if _shifted(layout, u, space, 1) is not None]
    if not risers:
        return None
    raised = pick(rng, risers)
    switched = _shifted(layout, raised, space, 1)
    while layout_bits(switched, space.facts) > space.bits_budget:
        fallers = [u for u in units if u is not raised and _shifted(switched, u, space, -1) is not None]
        if not fallers:
            return None
        switched = _shifted(switched, pick(rng, fallers), space, -1)
    return switched


@register_generator("evo")
@dataclass(frozen=True)
class EvoGenerator:
    """EvoPress-style (1+λ) search over bit allocations (see the module docstring)."""

    space: SearchSpace
    name: str = field(default="evo", init=False)

    def _offspring(self, population: Sequence[Evaluated], rng: np.random.Generator) -> dict | None:
        """Returns one child of the population's best, or None when the drawn operator found nothing to do."""
        parent = population[0].document
        draw = rng.random()
        if P_LEVEL_SWITCH <= draw < P_LEVEL_SWITCH + P_OTHER_MUTATION:
            name = pick(rng, sorted(MUTATIONS))
            return MUTATIONS[name](parent, self.space, rng)
        if draw >= P_LEVEL_SWITCH + P_OTHER_MUTATION and len(population) > 1:
            other = pick(rng, [member.document for member in population[1:]])
            parent = CROSSOVERS[pick(rng, sorted(CROSSOVERS))](parent, other, self.space, rng)
            switches = 1
        else:
            switches = int(rng.integers(1, MAX_SWITCHES + 1))
        layout = repair_layout(layout_of(parent, self.space.facts), self.space, rng)
        for _ in range(switches):
            layout = level_switch(layout, self.space, rng) or layout
        notes = f"{switches} level switch(es) of {parent.get('name', 'unnamed')}"
        return document_of(layout, self.space.facts, "evo", notes)

    def _ladder_offspring(self, parent: dict, rng: np.random.Generator) -> dict:
        """Returns a child of `parent` on the ladder: min(U{1,3}, U{1,3}) level switches of its snapped levels."""
        space = self.space
        levels = snap_to_ladder(layout_of(parent, space.facts), space, rng)
        switches = int(min(rng.integers(1, MAX_SWITCHES + 1), rng.integers(1, MAX_SWITCHES + 1)))
        lateral = has_equal_cost_levels(space)
        for _ in range(switches):
            units = layer_units(space.facts) if rng.random() < P_LAYER_SWITCH else module_units(space.facts)
            if lateral and rng.random() < P_LATERAL_SWITCH:
                levels = lateral_switch(levels, units, space, rng) or levels
                continue
            switched = ladder_switch(levels, units, space, rng)
            levels = switched or (lateral_switch(levels, units, space, rng) if lateral else None) or levels
        notes = f"{switches} ladder switch(es) of {parent.get('name', 'unnamed')}"
        return document_of(layout_at(levels, space), space.facts, "evo", notes)

    def propose(self, population: Sequence[Evaluated], count: int, rng: np.random.Generator) -> list[dict]:
        """Returns up to `count` new documents: random ones while the population is empty (the shared prior,
        played before any generator is asked, is where every arm starts), then offspring of the best (on a
        ladder: its ladder switches): the best survivor, or the lowest-KL collapse while nothing survives."""
        seen = {strategy_id(member.document) for member in population}
        ranked = ranked_parents(population)
        proposals: list[dict] = []

        def add(document: dict | None) -> None:
            if document is not None and len(proposals) < count and strategy_id(document) not in seen:
                seen.add(strategy_id(document))
                proposals.append(document)

        if self.space.ladder and ranked:
            parent = ranked[0].document
            for _ in range(DRAWS_PER_PROPOSAL * count):
                if len(proposals) == count:
                    break
                add(self._ladder_offspring(parent, rng))
            return proposals
        if not ranked:
            for document in RandomGenerator(self.space).propose(population, count, rng):
                add(document)
            return proposals
        for _ in range(DRAWS_PER_PROPOSAL * count):
            if len(proposals) == count:
                break
            add(self._offspring(ranked, rng))
        return proposals

    def tell(self, evaluated: Sequence[Evaluated]) -> None:
        """Learns nothing beyond the population it is given: (1+λ) keeps no state of its own."""

    def take_records(self) -> list[GeneratorRecord]:
        """Returns nothing: the evo generator notes nothing."""
        return []

    def restore(self, records: Sequence[GeneratorRecord]) -> None:
        """Takes nothing back: the evo generator notes nothing."""
