"""Generators and variation operators on a model of the default model's shape (meta device, no weights).

One contract runs over every registered generator, one over every registered mutation and crossover.
"""

import copy
import math
from dataclasses import replace

import numpy as np
import pytest

from agentqat.arena.scoring import Aggregate, Ranked
from agentqat.generators import CROSSOVERS, GENERATORS, MUTATIONS, Evaluated, apply_random_operator, make_generator
from agentqat.generators.operators import blockwise, layerwise
from agentqat.quant.base import ActivationQuant, OutlierPolicy, WeightQuant
from agentqat.strategy.bits import strategy_bits
from agentqat.strategy.document import MAX_RULES, StrategyError, parse_strategy, strategy_id
from agentqat.strategy.layout import Layout, compile_rules, document_of, layout_bits, layout_of
from agentqat.strategy.repair import repair, repair_layout
from agentqat.strategy.resolve import ModuleConfig, resolve_strategy
from agentqat.strategy.space import GeneChoices, SearchSpace

BUDGETS = (3.5, 4.5, 8.0)
COUNT = 6


@pytest.fixture(scope="module")
def facts(smollm2_shaped_facts):
    return smollm2_shaped_facts


def resolved_configs(document, facts):
    """Returns the document's config per module name; fails the test unless it resolves."""
    return resolve_strategy(parse_strategy(document), facts).modules


def assert_valid_within(document, space):
    resolved = resolve_strategy(parse_strategy(document), space.facts)
    bits = strategy_bits(resolved, space.facts).bits_per_weight
    assert bits <= space.bits_budget, (bits, document["name"])
    return resolved.modules


def rng(seed):
    return np.random.default_rng(seed)


# Hand-written starting points beside the random ones: overlapping rules, other formats, a uniform strategy.
HAND_DOCUMENTS = [
    {"schema_version": 1, "name": "uniform-gptq4", "default": {"weight": {"bits": 4, "group_size": 64, "rounding": "gptq"}}},
    {"schema_version": 1, "name": "mixed", "default": {"weight": {"bits": 4, "group_size": 64, "rounding": "gptq"}},
     "rules": [{"layers": "0-3", "modules": ["mlp.down_proj"], "weight": {"bits": 8}},
               {"layers": "all", "modules": ["v_proj"], "outliers": {"method": "keep_fp16", "fraction": 0.005}},
               {"layers": "20-29", "modules": ["mlp"], "activation": {"bits": 8, "smooth_alpha": 0.5}}],
     "arithmetic": {"compute_dtype": "bf16"}},
    {"schema_version": 1, "name": "nf4-then-int3", "default": {"weight": {"bits": 4, "format": "nf4", "group_size": 64}},
     "rules": [{"layers": "10-29", "modules": ["attn"], "weight": {"bits": 3, "format": "int", "group_size": 32}}]},
    {"schema_version": 1, "name": "shifted", "default": {"weight": {"bits": 3, "group_size": 96, "symmetric": True}},
     "rules": [{"layers": "0,29", "modules": ["all"], "weight": {"bits": 16}}], "arithmetic": {"shift_scales": True}},
]  # fmt: skip


@pytest.fixture(scope="module")
def starting_documents(facts):
    """Documents within a 4.5-bit budget: random proposals and the hand-written ones."""
    space = SearchSpace(facts, 4.5)
    for document in HAND_DOCUMENTS:
        assert_valid_within(document, space)
    return make_generator("random", space).propose([], 10, rng(123)) + HAND_DOCUMENTS


# --- the generator contract ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llm_backend(tiny_llama_dir):
    """The session's tiny random Llama behind in-process Outlines (one thread: fastest on a busy 2-core machine)."""
    from agentqat.serving.backends import TransformersBackend

    return TransformersBackend(tiny_llama_dir, threads=1)


# The LLM generator proposes with the tiny random Llama (and its control with random JSON): replies are schema-valid
# but arbitrary and often repeat, so within their bounded attempts they may return fewer than COUNT proposals (never
# an invalid or a repeated one).
MAY_RETURN_FEWER = {"llm", "llm-random-edits"}


# The knapsack allocates by its measured costs alone: the random generator does not change its proposals.
DETERMINISTIC = {"knapsack"}


def knapsack_costs(space):
    """Returns unit costs shaped like measured ones: early layers most sensitive, each bit more halving the KL."""
    from agentqat.generators.knapsack import knapsack_units, ladder

    levels = ladder(space)
    return {(unit, level): 2.0 ** -config.weight.bits / (1 + unit) for unit in range(len(knapsack_units(space)))
            for level, config in enumerate(levels)}  # fmt: skip


def generator_options(name, request, space):
    """Returns the keyword options a generator needs beyond the search space."""
    if name == "llm":
        return {"backend": request.getfixturevalue("tiny_llm_backend")}
    return {"costs": knapsack_costs(space)} if name == "knapsack" else {}


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generator_contract(facts, name, budget, request):
    space = SearchSpace(facts, budget)
    options = generator_options(name, request, space)
    generator = make_generator(name, space, **options)
    assert generator.name == name
    counts = range(1, COUNT + 1) if name in MAY_RETURN_FEWER else (COUNT,)

    proposals = generator.propose([], COUNT, rng(0))
    assert len(proposals) in counts
    assert len({strategy_id(document) for document in proposals}) == len(proposals)
    for document in proposals:
        assert_valid_within(document, space)
    assert make_generator(name, space, **options).propose([], COUNT, rng(0)) == proposals  # same seed, same proposals
    if name not in DETERMINISTIC:
        assert make_generator(name, space, **options).propose([], COUNT, rng(1)) != proposals

    population = [Evaluated(d, -0.1 * k, True, "ok", 0.1 * k, 4.0) for k, d in enumerate(proposals)]
    population.append(Evaluated({"schema_version": 1, "default": {"weight": {"bits": 7}}}, -math.inf, False,
                                "invalid", None, None))  # fmt: skip
    generator.tell(population)
    records = generator.take_records()
    # a resumed run replays that generation: the records handed back, then the same tell
    resumed = make_generator(name, space, **options)
    resumed.restore(records)
    resumed.tell(population)
    if name in MAY_RETURN_FEWER:  # the LLM pipeline's reflection comes back whole: lessons from the rejected replies, and the counts
        assert resumed.take_records() == [record for record in records if record.stream == "reflections"]
    later = generator.propose(population, COUNT, rng(2))
    assert len(later) in counts
    assert not {strategy_id(d) for d in later} & {strategy_id(e.document) for e in population}
    for document in later:
        assert_valid_within(document, space)
    assert resumed.propose(population, COUNT, rng(2)) == later  # it goes on as if it had never stopped


def test_make_generator_names_the_choices_for_an_unknown_name(facts):
    with pytest.raises(ValueError, match="unknown generator 'annealing'; choose one of .*random"):
        make_generator("annealing", SearchSpace(facts, 4.5))


def test_search_space_refuses_a_budget_no_strategy_fits(facts):
    with pytest.raises(ValueError, match="bit budget 2.0 is below the cheapest strategy's 2.012 bits"):
        SearchSpace(facts, 2.0)


def test_gene_choices_must_keep_what_repair_falls_back_on():
    assert GeneChoices().bits == (2, 3, 4, 5, 6, 8, 16)  # from the strategy schema
    with pytest.raises(ValueError, match="formats 'int'"):
        GeneChoices(formats=("nf4",))


def test_random_proposals_spend_most_of_the_budget(facts):
    space = SearchSpace(facts, 4.5)
    proposals = make_generator("random", space).propose([], 40, rng(7))
    bits = [strategy_bits(resolve_strategy(parse_strategy(d), facts), facts).bits_per_weight for d in proposals]
    assert 3.5 < np.mean(bits) <= 4.5
    assert all(d["name"].startswith("random-") for d in proposals)


def test_restricted_choices_are_respected(facts):
    choices = GeneChoices(bits=(3, 4), formats=("int",), roundings=("rtn", "gptq"), group_sizes=(0, 32, 64))
    space = SearchSpace(facts, 4.5, choices)
    for document in make_generator("random", space).propose([], 10, rng(3)):
        for config in assert_valid_within(document, space).values():
            weight = config.weight
            assert (weight.bits, weight.format) in {(3, "int"), (4, "int")}
            assert weight.rounding in ("rtn", "gptq") and weight.group_size in (0, 32, 64)


def test_evaluated_from_a_leaderboard_row():
    agg = Aggregate("id", "name", "arena", "screen", "ok", "", 1, (0,), (0,), 1024, kl=0.2, bits_per_weight=4.3)
    evaluated = Evaluated.from_ranked({"name": "x"}, Ranked(1, "id", -0.5, True, "", 0, agg))
    assert evaluated == Evaluated({"name": "x"}, -0.5, True, "ok", 0.2, 4.3)


# --- layouts and repair ----------------------------------------------------------------------------------------


def test_a_layout_compiles_back_to_the_same_configs(facts, starting_documents):
    for document in starting_documents:
        compiled = document_of(layout_of(document, facts), facts, "compiled")
        expected = resolved_configs(document, facts)
        assert resolved_configs(compiled, facts) == expected, document["name"]


@pytest.mark.parametrize(
    "document, problem",
    [
        ({"default": {"weight": {"group_size": 128}}}, "invalid"),
        ({"default": {"weight": {"format": "nf4", "bits": 3, "clip": "mse", "scale": "pow2"}}}, "invalid"),
        ({"default": {"weight": {"format": "llm_int8", "bits": 8, "group_size": 64}}}, "invalid"),
        ({"default": {"weight": {"format": "fp4", "group_size": 192, "rounding": "gptq"}}}, "invalid"),
        ({"default": {"activation": {"format": "fp8_e4m3", "bits": 4}}}, "invalid"),
        ({"rules": [{"modules": ["q_proj"], "weight": {"group_size": 384}}]}, "invalid"),
        ({"default": {"weight": {"bits": 8, "group_size": 16}}, "rules": [{"layers": "0-30", "weight": {"bits": 2}}]},
         "invalid"),
        ({"default": {"weight": {"bits": 6}, "outliers": {"method": "keep_fp16", "fraction": 0.05}}}, "over budget"),
        ({"default": {"weight": {"bits": 16}}}, "over budget"),
    ],
    ids=["group-128", "nf4-3bit", "llm-int8-grouped", "fp4-192-gptq", "fp8-act-4bit", "q-384", "bad-layers",
         "outliers", "unquantized"],
)  # fmt: skip
def test_repair_makes_a_document_valid_and_within_budget(facts, document, problem):
    space = SearchSpace(facts, 3.5)
    if problem == "invalid":
        with pytest.raises(StrategyError):
            resolved_configs(document, facts)
    else:
        assert layout_bits(layout_of(document, facts), facts) > space.bits_budget
    before = copy.deepcopy(document)
    repaired = repair(document, space, rng(0))
    assert document == before
    assert_valid_within(repaired, space)
    assert repair(document, space, rng(0)) == repaired  # deterministic for a seed


def test_repair_returns_a_valid_document_unchanged_as_a_copy(facts):
    document = copy.deepcopy(HAND_DOCUMENTS[1])
    repaired = repair(document, SearchSpace(facts, 4.5), rng(0))
    assert repaired == document and repaired is not document


def test_repair_merges_configs_beyond_the_rule_limit(facts):
    clips = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, "mse")
    configs = []
    for index, info in enumerate(facts.linears):  # dozens of configs scattered over layers and roles
        weight = WeightQuant(bits=(2, 3, 4, 5)[info.layer % 4], group_size=(32, 64, 96)[info.layer // 10],
                             rounding="gptq", clip=clips[index % len(clips)])  # fmt: skip
        outliers = OutlierPolicy("keep_fp16", fraction=0.001) if info.layer % 2 else OutlierPolicy()
        configs.append(ModuleConfig(weight, ActivationQuant(), outliers))
    space = SearchSpace(facts, 4.5)
    layout = Layout(tuple(configs), "fp32")
    assert len(compile_rules(layout, facts)[1]) > MAX_RULES
    document = document_of(repair_layout(layout, space, rng(0)), facts, "merged")
    assert 1 < len(document["rules"]) <= MAX_RULES
    assert_valid_within(document, space)


def test_repair_spares_the_modules_an_operator_changed(facts):
    space = SearchSpace(facts, 4.3125)
    layout = layout_of(HAND_DOCUMENTS[0], facts)  # W4 g64 asymmetric everywhere: exactly 4.3125
    raised = replace(layout.configs[0], weight=replace(layout.configs[0].weight, bits=5))
    repaired = repair_layout(layout.replaced([0], [raised]), space, rng(0), spared=[0])
    assert repaired.configs[0] == raised
    assert layout_bits(repaired, facts) <= 4.3125


# --- mutations ---------------------------------------------------------------------------------------------------


def _profiles(configs, facts):
    """Returns each layer's configs, in module order."""
    profiles = {}
    for info in facts.linears:
        profiles.setdefault(info.layer, []).append(configs[info.name])
    return {layer: tuple(values) for layer, values in profiles.items()}


def _some_field_changed(group, key):
    def changed(before, after, facts):
        return any(getattr(getattr(after[n], group), key) != getattr(getattr(before[n], group), key) for n in before)

    return changed


def _layers_reassigned(before, after, facts):
    """Whether some layer now holds the configs another layer held before."""
    old, new = _profiles(before, facts), _profiles(after, facts)
    return any(new[layer] != old[layer] and new[layer] in old.values() for layer in old)


def _quantized_with(predicate):
    return lambda configs, facts: any(c.weight.bits != 16 and predicate(c.weight) for c in configs.values())


# What each mutation must change, and when it has something to act on (otherwise it returns its input).
EFFECTS = {
    "bit_shift": (_some_field_changed("weight", "bits"), lambda configs, facts: True),
    "layer_reassign": (_layers_reassigned, lambda configs, facts: len(set(_profiles(configs, facts).values())) > 1),
    "scale_swap": (_some_field_changed("weight", "scale"), _quantized_with(lambda w: w.format in ("int", "fp8_e4m3"))),
    "outlier_toggle": (_some_field_changed("outliers", "method"), _quantized_with(lambda w: True)),
    "rounding_swap": (_some_field_changed("weight", "rounding"), _quantized_with(lambda w: w.format == "int")),
    "group_size_change": (_some_field_changed("weight", "group_size"), _quantized_with(lambda w: w.format != "llm_int8")),
}  # fmt: skip


def test_every_mutation_states_its_effect():
    assert set(EFFECTS) == set(MUTATIONS)


@pytest.mark.parametrize("budget", (3.5, 4.5))
@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_mutation_contract(facts, starting_documents, name, budget):
    space = SearchSpace(facts, budget)
    effect, applicable = EFFECTS[name]
    for index, document in enumerate(starting_documents):
        document = repair(document, space, rng(index))  # within this budget
        before = copy.deepcopy(document)
        old = resolved_configs(document, facts)
        for seed in range(3):
            child = MUTATIONS[name](document, space, rng(seed))
            assert document == before, "the input was modified"
            new = assert_valid_within(child, space)
            if applicable(old, facts):
                assert effect(old, new, facts), (name, document["name"], seed)
                assert child["name"].startswith(f"{name}-") and document["name"] in child["notes"]
            else:
                assert child == document


def test_a_raised_bit_is_paid_for_by_other_modules(facts):
    space = SearchSpace(facts, 4.3125)  # exactly W4 g64 asymmetric: no room
    switched = 0
    for seed in range(12):
        child = MUTATIONS["bit_shift"](HAND_DOCUMENTS[0], space, rng(seed))
        switched += {3, 5} <= {c.weight.bits for c in assert_valid_within(child, space).values()}
    assert switched  # a level switch: some modules up, others down


def test_apply_random_operator_changes_the_document(facts, starting_documents):
    space = SearchSpace(facts, 4.5)
    for seed, document in enumerate(starting_documents):
        child = apply_random_operator(document, space, rng(seed))
        assert strategy_id(child) != strategy_id(document)
        assert_valid_within(child, space)


# --- crossovers ----------------------------------------------------------------------------------------------------


def _genes_from_parents(child, first, second, facts):
    parents = [_profiles(first, facts), _profiles(second, facts)]
    return all(profile in (parents[0][layer], parents[1][layer]) for layer, profile in _profiles(child, facts).items())


# Two parents within 4.5 bits whose expensive halves differ: a child can take both and must give some back.
FRONT_HEAVY = {"schema_version": 1, "name": "front", "default": {"weight": {"bits": 3, "group_size": 64, "symmetric": True}},
               "rules": [{"layers": "0-14", "weight": {"bits": 5}}]}  # fmt: skip
BACK_HEAVY = {"schema_version": 1, "name": "back", "default": {"weight": {"bits": 3, "group_size": 64, "symmetric": True}},
              "rules": [{"layers": "15-29", "weight": {"bits": 5}}], "arithmetic": {"compute_dtype": "bf16"}}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CROSSOVERS))
def test_crossover_contract(facts, starting_documents, name):
    space = SearchSpace(facts, 4.5)
    pairs = list(zip(starting_documents, starting_documents[1:])) + [(FRONT_HEAVY, BACK_HEAVY)]
    mixed = 0
    for index, (first, second) in enumerate(pairs):
        before = copy.deepcopy((first, second))
        configs = resolved_configs(first, facts), resolved_configs(second, facts)
        for seed in range(3):
            child = CROSSOVERS[name](first, second, space, rng(100 * index + seed))
            assert (first, second) == before, "a parent was modified"
            new = assert_valid_within(child, space)
            assert _genes_from_parents(new, *configs, facts), (name, first["name"], second["name"], seed)
            assert parse_strategy(child).arithmetic.compute_dtype in {
                parse_strategy(p).arithmetic.compute_dtype for p in (first, second)
            }
            mixed += new != configs[0] and new != configs[1]
    assert mixed >= len(pairs)  # children usually differ from both parents


def test_a_child_over_budget_gives_layers_back(facts):
    space = SearchSpace(facts, 4.5)  # 5.25 bits on up to 18 of the 30 layers, 3.25 on the others
    both_halves = 0
    for seed in range(10):
        child = CROSSOVERS["blockwise"](FRONT_HEAVY, BACK_HEAVY, space, rng(seed))
        configs = assert_valid_within(child, space)
        wide = {facts.linear(name).layer for name, c in configs.items() if c.weight.bits == 5}
        assert len(wide) <= 18
        both_halves += min(wide, default=30) < 15 <= max(wide, default=0)
    assert both_halves  # children keep wide layers of both parents, within budget


def test_crossover_masks():
    for seed in range(20):
        blocks = blockwise(30, rng(seed))
        assert 1 <= np.count_nonzero(blocks[1:] != blocks[:-1]) <= 3  # 2-4 contiguous blocks
    coins = np.concatenate([layerwise(30, rng(seed)) for seed in range(20)])
    assert 0.4 < coins.mean() < 0.6
    assert blockwise(1, rng(0)).shape == (1,)


def test_layout_id_finds_documents_that_configure_every_module_alike(facts):
    from agentqat.strategy.layout import layout_id

    plain = {"schema_version": 1, "default": {"weight": {"bits": 4, "group_size": 64}}}
    no_op_rule = {**plain, "rules": [{"layers": "0-29", "modules": ["attn", "mlp"], "weight": {"bits": 4}}]}
    other = {**plain, "rules": [{"layers": "3", "modules": ["mlp"], "weight": {"bits": 5}}]}
    assert strategy_id(plain) != strategy_id(no_op_rule)
    assert layout_id(plain, facts) == layout_id(no_op_rule, facts) != layout_id(other, facts)
    assert layout_id({"default": {"weight": {"bits": 7}}}, facts) == strategy_id({"default": {"weight": {"bits": 7}}})
