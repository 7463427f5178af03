"""Deployment targets: the engines' tables name every module they cannot run with the fix; every generator, under
every target, only makes strategies the target serves; the CLI refuses an unservable strategy with exit code 2."""

import json

import numpy as np
import pytest

from agentqat.cli import main
from agentqat.generators import make_generator
from agentqat.generators.knapsack import knapsack_units, ladder
from agentqat.generators.on_ladder import Mapped
from agentqat.strategy import deploy
from agentqat.strategy.document import parse_strategy
from agentqat.strategy.resolve import resolve_strategy
from agentqat.strategy.space import GeneChoices, SearchSpace

GPTQ3 = {"schema_version": 1, "default": {"weight": {"bits": 3, "group_size": 64, "symmetric": False, "rounding": "gptq"}}}
W4A16 = {"schema_version": 1, "default": {"weight": {"bits": 4, "group_size": 64, "symmetric": True, "rounding": "gptq"}}}
MIXED = {  # the example: layers 0-19 W4A16 g64 symmetric, layers 20-29 W8A8
    "schema_version": 1,
    "default": {"weight": {"bits": 4, "group_size": 64, "symmetric": True}},
    "rules": [{"layers": "20-29", "weight": {"bits": 8, "group_size": 0}, "activation": {"bits": 8}}],
}
SPLIT_QKV = {**MIXED, "rules": [*MIXED["rules"], {"layers": "3", "modules": ["self_attn.k_proj"], "weight": {"bits": 8}}]}
BUDGETS = {"any": 4.6, "vllm-cpu": 4.6, "vllm-cuda": 4.6, "gguf": 4.6}  # Q4_0 (int4 g32 symmetric) costs 4.5
OUTLIERS = {**W4A16, "rules": [{"layers": "0", "outliers": {"method": "keep_fp16", "fraction": 0.01}}]}


def problems(document, facts, target):
    return deploy.problems(resolve_strategy(parse_strategy(document), facts), facts, target)


@pytest.mark.parametrize(
    "document, target, expected",
    [
        (GPTQ3, "any", []),
        (W4A16, "vllm-cpu", []),
        (MIXED, "vllm-cpu", []),
        (MIXED, "vllm-cuda", []),
        (GPTQ3, "vllm-cpu", ["layers 0-29: self_attn.q_proj", "3-bit int g64 asymmetric (gptq) weights", "W4A16", "for example 4-bit int g64 symmetric"]),
        (SPLIT_QKV, "vllm-cpu", ["layer 3: self_attn.k_proj: 8-bit int g64", "fuses q/k/v and gate/up into one weight"]),
        (OUTLIERS, "vllm-cuda", ["layer 0: ", "outlier weights in fp16 (keep_fp16) are not exported", "set outliers.method none"]),
        (W4A16, "gguf", ["is none of llama.cpp (GGUF)'s schemes", "for example 4-bit int g32 symmetric"]),  # Q4_0
        ({**W4A16, "default": {"weight": {"bits": 4, "group_size": 32, "symmetric": True}}}, "gguf", []),
    ],
)
def test_each_target_names_the_modules_it_cannot_run_and_the_fix(smollm2_shaped_facts, document, target, expected):
    lines = problems(document, smollm2_shaped_facts, target)
    text = "\n".join(lines)
    assert bool(lines) == bool(expected)
    for part in expected:
        assert part in text


@pytest.mark.parametrize("target", deploy.DEPLOY_CHOICES)
@pytest.mark.parametrize("document", [GPTQ3, MIXED, SPLIT_QKV, OUTLIERS])
def test_a_strategy_made_servable_is_served_and_no_dearer_than_the_budget(smollm2_shaped_facts, target, document):
    space = SearchSpace(smollm2_shaped_facts, BUDGETS[target], deploy.target_choices(GeneChoices(), target))
    made = deploy.servable_document(document, space, target, np.random.default_rng(0))
    assert problems(made, smollm2_shaped_facts, target) == []
    if not problems(document, smollm2_shaped_facts, target):
        assert made is document  # a servable strategy is left as it is


def _knapsack(space):
    units, levels = len(knapsack_units(space)), len(ladder(space))
    rng = np.random.default_rng(0)
    costs = {(u, level): float(rng.uniform(0, 1)) / (1 + level) for u in range(units) for level in range(levels)}
    return make_generator("knapsack", space, costs=costs)


GENERATORS = {
    "random": lambda space: make_generator("random", space),
    "evo": lambda space: make_generator("evo", space),
    "llm-random-edits": lambda space: make_generator("llm-random-edits", space),  # the LLM pipeline, sampled replies
    "knapsack": _knapsack,
}


@pytest.mark.parametrize("target", deploy.DEPLOY_CHOICES)
@pytest.mark.parametrize("name", GENERATORS)
def test_every_generator_under_every_target_makes_only_servable_strategies(smollm2_shaped_facts, name, target):
    from agentqat.generators import Evaluated

    budget = BUDGETS[target]
    space = SearchSpace(smollm2_shaped_facts, budget, deploy.target_choices(GeneChoices(), target))
    generator = Mapped(GENERATORS[name](space), lambda document, rng: deploy.servable_document(document, space, target, rng))
    rng = np.random.default_rng(1)
    population = []
    for generation in range(2):  # a first generation, then offspring of its survivors
        proposals = generator.propose(population, 6, rng)
        assert proposals or generation, f"{name} proposed nothing under {target}"  # a knapsack's allocations run out
        for document in proposals:
            assert problems(document, smollm2_shaped_facts, target) == [], f"{name} under {target}: {document}"
        population = [Evaluated(d, -k, True, "ok", 0.1 * k, budget) for k, d in enumerate(proposals)]
        generator.tell(population)


def test_validate_and_quantize_refuse_an_unservable_strategy_with_exit_2(tmp_path, capsys):
    path = tmp_path / "gptq3.json"
    path.write_text(json.dumps(GPTQ3))
    assert main(["validate", str(path), "--deploy", "any"]) == 0
    assert main(["validate", str(path), "--deploy", "vllm-cpu"]) == 2
    assert "not servable on vllm-cpu: layers 0-29" in capsys.readouterr().out
    assert main(["quantize", "--strategy", str(path), "--deploy", "vllm-cpu"]) == 2
    assert "not servable on vllm-cpu" in capsys.readouterr().err


def test_a_budget_no_servable_strategy_fits_is_one_line(tmp_path, capsys):
    """The 3.3-bit arena cannot deploy to vLLM on CPU: its cheapest kernel is int4 per channel (4.03 bits)."""
    code = main(["evolve", "--arena", "smollm2-3bit", "--deploy", "vllm-cpu", "--generator", "random", "--runs", str(tmp_path)])
    assert code == 2
    assert "no level of its ladder runs on vLLM on CPU" in capsys.readouterr().err
