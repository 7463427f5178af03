"""Prints how well the sensitivity map (agentqat sensitivity: Fisher, gradient norm, RTN probe KL) ranks the decoder
layers against the KL the arena measured for the levels the search really uses: a knapsack run's unit costs, each
layer alone at each GPTQ level of the ladder (everything else at 16 bits) on that arena's first stage.

    .venv/bin/python bench/sensitivity_vs_levels.py --map reports/sensitivity/smollm2-default.json \
        --knapsack-run reports/compare-3bit/runs/knapsack-seed0

Spearman's rho over layers (30 on SmolLM2-135M) for every map measure against every level's costs, and the
overlap of the 5 most sensitive layers by each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scipy.stats import spearmanr

from agentqat.generators.knapsack import knapsack_units, ladder, probe_documents
from agentqat.levels import level_name
from agentqat.rundir.journal import read_results
from agentqat.rundir.manifest import read_manifest
from agentqat.rundir.store import RunStore
from agentqat.session.evolve import search_space
from agentqat.strategy.document import strategy_id
from agentqat.study.sensitivity_map import read_map

TOP = 5


def level_costs(run: Path) -> tuple[dict[str, dict[int, float]], str]:
    """Returns, per ladder level name, each layer's measured KL in the knapsack run `run`, and its arena's name."""
    arena = read_manifest(run).arena
    space = search_space(arena)
    if len(knapsack_units(space)) != space.facts.num_layers:
        raise SystemExit(f"{run}: the knapsack's units are not decoder layers")
    first = arena.stages[0].name
    kl = {result.strategy_id: result.quality.kl for result in read_results(RunStore(run)) if result.stage == first and result.quality}
    names = [level_name(level) for level in ladder(space)]
    costs: dict[str, dict[int, float]] = {name: {} for name in names}
    for (unit, level), document in probe_documents(space).items():
        if strategy_id(document) in kl:
            costs[names[level]][unit] = kl[strategy_id(document)]
    missing = [name for name, layers in costs.items() if len(layers) != space.facts.num_layers]
    if missing:
        raise SystemExit(f"{run}: no probe results for every layer at {missing}: is it a knapsack run of this model?")
    return costs, arena.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--map", type=Path, required=True, help="a sensitivity map JSON (agentqat sensitivity; the cache or reports/sensitivity/)")
    parser.add_argument("--knapsack-run", type=Path, required=True, help="a knapsack evolve run (e.g. a comparison's runs/knapsack-seed0)")
    args = parser.parse_args()
    measured = read_map(args.map)
    costs, arena = level_costs(args.knapsack_run)
    layers = sorted(measured.layers)
    series = {"Fisher": {l: measured.layers[l].fisher for l in layers}, "gradient norm": {l: measured.layers[l].gradient_norm for l in layers}}
    series.update({f"RTN KL@{b}": {l: measured.layers[l].kl[b] for l in layers} for b in measured.bits})
    print(f"map: {measured.arena} ({args.map}); level costs: {arena}, {args.knapsack_run}")
    print(f"Spearman rho over {len(layers)} layers, and how many of the {TOP} most sensitive layers agree")
    print(f"{'map measure':<16}" + "".join(f"{name:>19}" for name in costs))
    for measure, values in series.items():
        cells = []
        for by_layer in costs.values():
            rho = spearmanr([values[l] for l in layers], [by_layer[l] for l in layers]).statistic
            cells.append(f"{rho:.3f} ({len(most_sensitive(values) & most_sensitive(by_layer))}/{TOP})")
        print(f"{measure:<16}" + "".join(f"{cell:>19}" for cell in cells))
    for name, values in {**series, **costs}.items():
        print(f"most sensitive by {name}: layers {sorted(most_sensitive(values))}")


def most_sensitive(values: dict[int, float]) -> set[int]:
    """Returns the TOP layers with the largest values."""
    return set(sorted(values, key=lambda layer: -values[layer])[:TOP])


if __name__ == "__main__":
    main()
