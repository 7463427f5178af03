"""The knapsack arm: its dynamic program finds the least summed cost within budget; its unit costs are preparation,
measured once per arena outside the run and charged to no run, so it proposes the allocation right after the prior;
a run recorded with in-run preparation still plays and pays for its probes when resumed."""

import itertools
import json

import numpy as np
import pytest

from agentqat.arena.config import load_arena
from agentqat.generators import make_generator
from agentqat.generators.knapsack import KnapsackGenerator, knapsack_prior, knapsack_units, ladder, probe_documents
from agentqat.rundir.store import RunStore
from agentqat.session import evolve_manifest, run_evolve
from agentqat.strategy.layout import layout_bits, layout_of
from agentqat.strategy.space import SearchSpace


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


def _arena(sensitive_llama_dir, small_corpus_file, tmp_path):
    path = tmp_path / "arena.toml"
    path.write_text(
        f'name = "ks"\nmodel = "{sensitive_llama_dir}"\ncorpus = "{small_corpus_file}"\nwindow_tokens = 64\n'
        'calibration_windows = 4\nbits_budget = 4.5\n[[stages]]\nname = "only"\nwindows = 2\n'
    )
    return load_arena(str(path))


def test_a_knapsack_run_gets_its_costs_as_preparation_charged_to_no_run(sensitive_llama_dir, small_corpus_file, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTQAT_CACHE_DIR", str(tmp_path / "cache"))
    arena = _arena(sensitive_llama_dir, small_corpus_file, tmp_path)
    manifest = evolve_manifest(arena, generator="knapsack", seed=0, population=2, generations=2, stop_when_clear=False, match_budget=4)
    assert manifest.preparation == "shared"
    outcome = run_evolve(tmp_path / "run", manifest, workers=0)
    store = RunStore.open(tmp_path / "run")
    results = store.read("results")
    assert not [r for r in results if r["strategy_name"].startswith("knapsack-probe")]
    space = SearchSpace(_facts(arena), 4.5)
    spent = json.loads((tmp_path / "run" / "preparation.json").read_text())
    assert spent["charged"] is False and spent["matches"] == len(knapsack_units(space)) * len(ladder(space))
    assert spent["tokens"] == 2 * 64 * spent["matches"] and (tmp_path / "cache" / "knapsack-costs").is_dir()
    assert outcome.matches == len(results) <= 4 and outcome.tokens == 2 * 64 * len(results)
    proposals = store.read("strategies")
    assert [p["generator"] for p in proposals] == ["prior"] * len(manifest.prior) + ["knapsack"] * (len(results) - len(manifest.prior))
    assert len(results) > len(manifest.prior) and "predicted KL" in proposals[len(manifest.prior)]["document"]["notes"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["tokens"] == outcome.tokens


def test_a_run_recorded_with_in_run_preparation_plays_and_pays_for_its_probes(sensitive_llama_dir, small_corpus_file, tmp_path):
    arena = _arena(sensitive_llama_dir, small_corpus_file, tmp_path)
    manifest = evolve_manifest(arena, generator="knapsack", seed=0, population=2, generations=2, stop_when_clear=False)
    manifest = manifest.model_copy(update={"preparation": "in-run"})  # as runs recorded before preparation was shared
    outcome = run_evolve(tmp_path / "run", manifest, workers=0)
    results = RunStore.open(tmp_path / "run").read("results")
    probes = [r for r in results if r["strategy_name"].startswith("knapsack-probe")]
    space = SearchSpace(_facts(arena), 4.5)
    assert len(probes) == len(knapsack_units(space)) * len(ladder(space))
    assert outcome.matches == len(results) and outcome.tokens == 2 * 64 * len(results)
    assert not (tmp_path / "run" / "preparation.json").exists()


def _facts(arena):
    from agentqat.models import load_facts

    return load_facts(arena.model)
