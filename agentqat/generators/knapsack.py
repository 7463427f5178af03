"""The knapsack generator: the allocator the strongest non-search tools use (AutoRound's AutoScheme, llama.cpp's
proposed per-tensor --target-bpw, HIGGS), as a baseline every search arm has to beat.

    units        each decoder layer's linear modules (UNITS "layer"), or its attention and its MLP ("role")
    ladder       the levels a unit may take: the levels of the arena's ladder within LADDER_SPAN bits of the budget
                 where it declares one (at 3.3 bits: 2 to 5 bits, 7 of smollm2-3bit's 9 levels: 210 probes of 30
                 layers), else uniform int weights at each allowed width within LADDER_SPAN of the budget, GPTQ rounding (the default rounding where
                 the choices lack it), with the group size and symmetry of the best uniform strategy within budget
                 (the shared prior's); fp32 compute
    costs        measured once per arena, before any search (`shared_preparation`): per unit and level, the KL to
                 the base model on the arena's first stage when that unit alone takes the level and every other
                 module stays at 16 bits (a failed probe counts twice the largest measured KL). They are
                 preparation, like the sensitivities: kept in the cache directory with what measuring them cost,
                 recorded in the run (preparation.json) and charged to no run, so the arm plays allocations from
                 its first generation within its whole budget. Runs recorded before (manifest `preparation`
                 "in-run") played the probes through their recorded player and paid for them (`prepare`)
    allocation   the levels minimising the summed costs (costs assumed to add up) within the bit budget, by
                 dynamic programming over the bits each unit stores, counted in steps of their greatest common
                 divisor (exact; on SmolLM2-135M 55,296 bits, 6,336 steps at 3.3 bits per weight), or in
                 MAX_CAPACITY steps of the budget with each unit's bits rounded up where that is finer (the
                 allocation always fits)
    proposals    first the allocation, then the next-best allocations under the same model: for each unit and
                 each other level, the best allocation that gives that unit that level, by predicted KL. When they
                 are spent it proposes nothing (the run stops: "the generator proposed nothing new").

It ignores the population (beyond never repeating it) and the random generator: for the same costs, the same
proposals. What it has proposed so far is recorded ("knapsack" stream) and restored on resume.

As a shared warm start (`agentqat compare --prior uniform+knapsack`), the costs are measured once per arena and
kept in the cache directory (`shared_costs`, `knapsack-costs/<arena key>.json`, with what measuring them cost), and
the allocation (`knapsack_prior`) joins every arm's prior.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from agentqat.arena.config import Arena
from agentqat.arena.probes import arena_key, play_probes
from agentqat.arena.tournament import Player
from agentqat.generators.base import Cost, Evaluated, GeneratorRecord, register_generator
from agentqat.generators.evopress import units_of
from agentqat.generators.prior import best_uniform
from agentqat.progress import Reporter
from agentqat.quant.base import DEFAULT_ROUNDING, ActivationQuant, OutlierPolicy, WeightQuant
from agentqat.rundir.store import read_json_object, write_json_atomic
from agentqat.strategy.document import strategy_id
from agentqat.strategy.layout import Layout, document_of, module_cost
from agentqat.strategy.repair import fix_config
from agentqat.strategy.resolve import ModuleConfig
from agentqat.strategy.space import SearchSpace

UNITS = "layer"
LADDER_SPAN = 2  # widths within [budget - 2, budget + 2]
LADDER_ROUNDING = "gptq"
MAX_CAPACITY = 100_000
STREAM = "knapsack"
CACHE_FOLDER = "knapsack-costs"

Costs = Mapping[tuple[int, int], float]  # (unit index, level index) -> KL


def knapsack_units(space: SearchSpace, units: str = UNITS) -> list[list[int]]:
    """Returns the module indices of each unit: per decoder layer ("layer") or per layer and role ("role")."""
    if units == "role":
        return units_of(space)
    layers: dict[int, list[int]] = {}
    for index, info in enumerate(space.facts.linears):
        layers.setdefault(info.layer, []).append(index)
    return [layers[layer] for layer in sorted(layers)]


def ladder(space: SearchSpace) -> tuple[ModuleConfig, ...]:
    """Returns the levels a unit may take, fewest bits first: the arena's ladder levels within LADDER_SPAN bits of the
    budget when it has one (the level database's levels), else the ladder the module docstring describes."""
    if space.ladder:
        near = tuple(level for level in space.ladder if abs(level.weight.bits - space.bits_budget) <= LADDER_SPAN)
        return near or space.ladder
    rounding = LADDER_ROUNDING if LADDER_ROUNDING in space.choices.roundings else DEFAULT_ROUNDING
    uniform = best_uniform(space, rounding).configs[0].weight
    widths = [b for b in sorted(space.choices.bits) if b != 16 and abs(b - space.bits_budget) <= LADDER_SPAN]
    widths = widths or [max(b for b in space.choices.bits if b != 16)]
    return tuple(
        ModuleConfig(WeightQuant(b, uniform.group_size, uniform.symmetric, rounding=rounding), ActivationQuant(), OutlierPolicy())
        for b in widths
    )


def _layout(space: SearchSpace, units: Sequence[list[int]], levels: Sequence[int | None]) -> Layout:
    """Returns the layout giving each unit its ladder level (None: 16 bits)."""
    rungs = ladder(space)
    configs: list[ModuleConfig] = [ModuleConfig(WeightQuant(bits=16), ActivationQuant(), OutlierPolicy())] * len(space.facts.linears)
    for unit, level in zip(units, levels, strict=True):
        for index in unit if level is not None else ():
            configs[index] = fix_config(rungs[level], space.facts.linears[index].in_features, space.choices)
    return Layout(tuple(configs), "fp32")


def probe_documents(space: SearchSpace, units: str = UNITS) -> dict[tuple[int, int], dict]:
    """Returns, per (unit, level), the strategy giving that unit alone that level (the rest at 16 bits)."""
    members = knapsack_units(space, units)
    probes = {}
    for unit in range(len(members)):
        for level in range(len(ladder(space))):
            levels = [level if other == unit else None for other in range(len(members))]
            notes = f"knapsack probe: unit {unit} at level {level}"
            probes[(unit, level)] = document_of(_layout(space, members, levels), space.facts, "knapsack-probe", notes)
    return probes


def measure_costs(
    play: Player, arena: Arena, space: SearchSpace, units: str = UNITS, reporter: Reporter | None = None
) -> tuple[dict[tuple[int, int], float], int]:
    """Returns each (unit, level)'s KL, measured by playing its probe on the arena's first stage, and the
    number of probe matches."""
    probes = probe_documents(space, units)
    detail = f"{len(probes)} matches: each unit alone at each level of the ladder"
    results = play_probes(play, arena, list(probes.values()), "knapsack unit costs", detail, reporter)
    quality = {result.strategy_id: result.quality for result in results}
    measured = {key: quality.get(strategy_id(document)) for key, document in probes.items()}
    worst = 2 * max((q.kl for q in measured.values() if q is not None), default=1.0)
    return {key: worst if q is None else q.kl for key, q in measured.items()}, len(results)


def costs_file(arena: Arena, cache: Path) -> Path:
    """Returns the file in `cache` (a folder) that keeps the arena's unit costs."""
    return Path(cache) / CACHE_FOLDER / f"{arena_key(arena)}-{UNITS}.json"


def shared_costs(
    play: Player, arena: Arena, space: SearchSpace, cache: Path, reporter: Reporter | None = None
) -> tuple[dict[tuple[int, int], float], Cost]:
    """Returns the arena's unit costs and what measuring them cost: read from `cache` (a folder), else measured
    with `play` (the probes of `measure_costs`) and stored there first."""
    path = costs_file(arena, cache)
    if path.is_file():
        data = read_json_object(path)
        costs = {(int(unit), int(level)): float(kl) for unit, level, kl in data["costs"]}
        return costs, Cost(int(data["matches"]), int(data["tokens"]))
    costs, matches = measure_costs(play, arena, space, UNITS, reporter)
    spent = Cost(matches, matches * arena.stages[0].windows * arena.window_tokens)
    rows = [[unit, level, kl] for (unit, level), kl in sorted(costs.items())]
    write_json_atomic(path, {"arena": arena.name, "units": UNITS, "costs": rows, "matches": spent.matches, "tokens": spent.tokens})
    return costs, spent


@register_generator("knapsack")
class KnapsackGenerator:
    """Proposes the KL-optimal allocation of ladder levels to units within budget, then the next-best ones."""

    name = "knapsack"
    uses_seed = False  # the same costs give the same proposals: a comparison plays it at its first seed only

    def __init__(self, space: SearchSpace, costs: Costs, units: str = UNITS):
        self.space, self.costs, self.units = space, dict(costs), units
        self._members = knapsack_units(space, units)
        levels = len(ladder(space))
        missing = [(u, l) for u in range(len(self._members)) for l in range(levels) if (u, l) not in self.costs]
        if missing:
            raise ValueError(f"the knapsack needs a cost for every unit and level; missing {missing[:3]}")
        self._next = 0  # allocations proposed so far, in `ranked` order

    @classmethod
    def prepare(cls, space: SearchSpace, arena: Arena, play: Player, reporter: Reporter | None = None):
        """Returns the options the generator needs (its measured costs) and what measuring them cost the run: the
        probes played through the run's own player, for runs recorded with preparation "in-run"."""
        costs, matches = measure_costs(play, arena, space, UNITS, reporter)
        return {"costs": costs}, Cost(matches, matches * arena.stages[0].windows * arena.window_tokens)

    @classmethod
    def shared_preparation(cls, space: SearchSpace, arena: Arena, play: Player, cache: Path, reporter: Reporter | None = None):
        """Returns the options the generator needs (the arena's unit costs, `shared_costs`: from the cache, else
        measured with `play` outside any run) and what measuring them cost: preparation, charged to no run."""
        costs, spent = shared_costs(play, arena, space, cache, reporter)
        return {"costs": costs}, spent

    @cached_property
    def _bits_table(self) -> np.ndarray:
        """Returns the storage bits of each unit at each level: shape (units, levels)."""
        levels = range(len(ladder(self.space)))
        layouts = [_layout(self.space, self._members, [level] * len(self._members)).configs for level in levels]
        linears = self.space.facts.linears
        return np.array([[sum(module_cost(configs[i], linears[i]) for i in unit) for configs in layouts] for unit in self._members])

    def solve(self, forced: tuple[int, int] | None = None) -> tuple[tuple[int, ...], float] | None:
        """Returns the allocation (a level per unit) with the least summed cost within budget and that cost, with
        unit forced[0] at level forced[1] when given; None when nothing fits."""
        bits = self._bits_table
        cost = np.array([[self.costs[(u, l)] for l in range(bits.shape[1])] for u in range(len(self._members))])
        if forced is not None:
            cost[forced[0]] = np.where(np.arange(cost.shape[1]) == forced[1], cost[forced[0]], math.inf)
        total = self.space.bits_budget * sum(info.in_features * info.out_features for info in self.space.facts.linears)
        step = max(math.gcd(*(int(b) for b in bits.flat)), total / MAX_CAPACITY)
        capacity = int(total // step)
        weights = np.ceil(bits / step - 1e-9).astype(int)
        best = np.zeros(capacity + 1)  # least cost of the units so far within each capacity
        choices = []
        for unit in range(len(self._members)):
            options = np.full((cost.shape[1], capacity + 1), math.inf)
            for level in range(cost.shape[1]):
                w = weights[unit, level]
                if w <= capacity:
                    options[level, w:] = best[: capacity + 1 - w] + cost[unit, level]
            choices.append(options.argmin(axis=0))
            best = options.min(axis=0)
        if not math.isfinite(best[capacity]):
            return None
        levels, optimum = [], float(best[capacity])
        for unit in reversed(range(len(self._members))):
            level = int(choices[unit][capacity])
            levels.append(level)
            capacity -= weights[unit, level]
        return tuple(reversed(levels)), optimum

    @cached_property
    def ranked(self) -> list[tuple[tuple[int, ...], float]]:
        """Returns the allocations it proposes, in order: the best, then the best per forced (unit, other level)
        by predicted cost (distinct allocations only)."""
        best = self.solve()
        if best is None:
            return []
        others = [self.solve((u, l)) for u in range(len(best[0])) for l in range(self._bits_table.shape[1]) if l != best[0][u]]
        found = {best[0]: best[1]}
        for allocation, cost in sorted((o for o in others if o is not None), key=lambda o: (o[1], o[0])):
            found.setdefault(allocation, cost)
        return list(found.items())

    def document(self, allocation: tuple[int, ...], predicted: float) -> dict:
        """Returns the strategy document of an allocation, its notes giving the predicted (summed) KL."""
        notes = f"knapsack allocation over {len(allocation)} {self.units} units; predicted KL {predicted:.4f}"
        return document_of(_layout(self.space, self._members, allocation), self.space.facts, "knapsack", notes)

    def propose(self, population: Sequence[Evaluated], count: int, rng: np.random.Generator) -> list[dict]:
        """Returns up to `count` of the next allocations not in the population (none when they are spent)."""
        seen = {strategy_id(member.document) for member in population}
        proposals: list[dict] = []
        while len(proposals) < count and self._next < len(self.ranked):
            document = self.document(*self.ranked[self._next])
            self._next += 1
            if strategy_id(document) not in seen:
                seen.add(strategy_id(document))
                proposals.append(document)
        return proposals

    def tell(self, evaluated: Sequence[Evaluated]) -> None:
        """Learns nothing: the allocation follows from the measured costs alone."""

    def take_records(self) -> list[GeneratorRecord]:
        """Returns how many allocations it has proposed so far."""
        return [GeneratorRecord(STREAM, {"proposed": self._next})]

    def restore(self, records: Sequence[GeneratorRecord]) -> None:
        """Takes back how many allocations it had proposed."""
        for record in records:
            if record.stream == STREAM:
                self._next = record.data["proposed"]


def knapsack_prior(space: SearchSpace, costs: Costs, units: str = UNITS) -> dict | None:
    """Returns the knapsack allocation as a document for a shared prior, or None when nothing fits."""
    generator = KnapsackGenerator(space, costs, units)
    return generator.document(*generator.ranked[0]) if generator.ranked else None

