"""The knapsack arm: its dynamic program finds the least summed cost within budget; in a run, its unit costs are
measured through the recorded player and charged to the run, then it proposes the allocation after the prior."""

import itertools
import json

import numpy as np
import pytest

from agentqat.arena.config import load_arena
from agentqat.generators import SearchSpace, make_generator
from agentqat.generators.knapsack import KnapsackGenerator, knapsack_prior, knapsack_units, ladder, probe_documents
from agentqat.generators.layout import layout_bits, layout_of
from agentqat.session import evolve_manifest, run_evolve
from agentqat.store import RunStore


@pytest.fixture(scope="module")
def tiny_space(sensitive_llama_dir):
    from agentqat.models import load_facts

    return SearchSpace(load_facts(str(sensitive_llama_dir)), 4.5)


def test_the_allocation_is_the_cheapest_within_budget_by_brute_force(tiny_space):
    units, levels = len(knapsack_units(tiny_space)), len(ladder(tiny_space))
    rng = np.random.default_rng(0)
    costs = {(u, level): float(rng.uniform(0, 1)) / (1 + level) ** 2 for u in range(units) for level in range(levels)}
    generator = KnapsackGenerator(tiny_space, costs)
    allocation, predicted = generator.solve()
    bits = generator._bits_table
    budget = tiny_space.bits_budget * sum(i.in_features * i.out_features for i in tiny_space.facts.linears)
    feasible = [a for a in itertools.product(range(levels), repeat=units) if sum(bits[u, a[u]] for u in range(units)) <= budget]
    best = min(feasible, key=lambda a: sum(costs[(u, a[u])] for u in range(units)))
    assert predicted == pytest.approx(sum(costs[(u, best[u])] for u in range(units)))
    assert allocation == best
    document = knapsack_prior(tiny_space, costs)
    assert layout_bits(layout_of(document, tiny_space.facts), tiny_space.facts) <= tiny_space.bits_budget
    ranked = generator.ranked
    assert ranked[0] == (best, pytest.approx(predicted)) and [c for _, c in ranked] == sorted(c for _, c in ranked)


def test_a_probe_quantizes_one_unit_at_one_level(tiny_space):
    probes = probe_documents(tiny_space)
    assert len(probes) == len(knapsack_units(tiny_space)) * len(ladder(tiny_space))
    layout = layout_of(probes[(1, 0)], tiny_space.facts)
    quantized = {i for i, config in enumerate(layout.configs) if config.weight.bits != 16}
    assert quantized == set(knapsack_units(tiny_space)[1])
    assert {layout.configs[i].weight.bits for i in quantized} == {ladder(tiny_space)[0].weight.bits}


def test_a_missing_cost_is_refused(tiny_space):
    with pytest.raises(ValueError, match="needs a cost for every unit and level"):
        make_generator("knapsack", tiny_space, costs={(0, 0): 1.0})


def test_a_knapsack_run_measures_its_costs_in_the_run_and_pays_for_them(sensitive_llama_dir, small_corpus_file, tmp_path):
    path = tmp_path / "arena.toml"
    path.write_text(
        f'name = "ks"\nmodel = "{sensitive_llama_dir}"\ncorpus = "{small_corpus_file}"\nwindow_tokens = 64\n'
        'calibration_windows = 4\nbits_budget = 4.5\n[[stages]]\nname = "only"\nwindows = 2\n'
    )
    arena = load_arena(str(path))
    manifest = evolve_manifest(arena, generator="knapsack", seed=0, population=2, generations=2, stop_when_clear=False)
    outcome = run_evolve(tmp_path / "run", manifest, workers=0)
    store = RunStore.open(tmp_path / "run")
    results = store.read("results")
    probes = [r for r in results if r["strategy_name"].startswith("knapsack-probe")]
    space = SearchSpace(_facts(arena), 4.5)
    assert len(probes) == len(knapsack_units(space)) * len(ladder(space))
    assert outcome.matches == len(results) and outcome.tokens == 2 * 64 * len(results)
    proposals = store.read("strategies")
    assert [p["generator"] for p in proposals] == ["prior"] * len(manifest.prior) + ["knapsack"] * 2
    assert "predicted KL" in proposals[len(manifest.prior)]["document"]["notes"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["tokens"] == outcome.tokens


def _facts(arena):
    from agentqat.models import load_facts

    return load_facts(arena.model)
