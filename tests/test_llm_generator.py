"""The LLM generator: edit documents and recombinations applied to layouts, reflections, and real proposals from
the session's tiny random-weight Llama under constrained decoding (in-process Outlines, no server)."""

import json
import math
import threading
import time

import numpy as np
import pytest
from outlines_core.json_schema import build_regex_from_schema
from pydantic import ValidationError

from agentqat.generators import Evaluated, make_generator
from agentqat.generators.llm import LlmGenerator
from agentqat.generators.llm.edits import (
    EditDocument,
    EditError,
    Recombination,
    apply_edits,
    apply_recombination,
    edit_schema,
    parse_reply,
    propose_schema,
    recombine_schema,
)
from agentqat.generators.llm.reflection import Reflection, features
from agentqat.generators.random_edits import RandomJsonBackend
from agentqat.serving.backends import TransformersBackend
from agentqat.strategy.bits import strategy_bits
from agentqat.strategy.document import parse_strategy, strategy_id
from agentqat.strategy.resolve import resolve_strategy
from agentqat.strategy.space import SearchSpace


@pytest.fixture(scope="module")
def facts(smollm2_shaped_facts):
    return smollm2_shaped_facts


@pytest.fixture(scope="module")
def backend(tiny_llama_dir):
    """The session's tiny random Llama behind Outlines in this process: schema-valid but arbitrary replies."""
    return TransformersBackend(tiny_llama_dir, threads=1)


def rng(seed):
    return np.random.default_rng(seed)


def configs(document, facts):
    """Returns {module name: config}; fails the test unless the document resolves."""
    return resolve_strategy(parse_strategy(document), facts).modules


def bits_of(document, facts):
    return strategy_bits(resolve_strategy(parse_strategy(document), facts), facts).bits_per_weight


def assert_within(document, space):
    assert bits_of(document, space.facts) <= space.bits_budget, document


def edits(*items):
    document = {"edits": [dict(zip(("operator", "layers", "modules", "value"), e, strict=True)) for e in items]}
    return parse_reply(json.dumps(document), EditDocument)


GPTQ4 = {"schema_version": 1, "name": "gptq4", "default": {"weight": {"bits": 4, "group_size": 64, "rounding": "gptq"}}}
SYM3 = {"schema_version": 1, "name": "sym3", "default": {"weight": {"bits": 3, "group_size": 64, "symmetric": True}}}


def selected(facts, layers, role):
    return {i.name for i in facts.linears if i.layer in layers and (role == "all" or role in i.name)}


# --- edit documents ------------------------------------------------------------------------------------------


# (edits, layers, role they select, what every selected module's weight must hold)
APPLIED = [
    ([("set_bits", "20-29", "mlp", 3)], range(20, 30), "mlp", {"bits": 3, "rounding": "gptq"}),
    ([("bit_shift", "all", "attn", -1)], range(30), "attn", {"bits": 3}),
    ([("set_format", "all", "mlp", "nf4")], range(30), "mlp", {"bits": 4, "format": "nf4", "rounding": "rtn"}),
    ([("set_group_size", "0-9", "attn", 32)], range(10), "attn", {"group_size": 32}),
    ([("set_rounding", "5", "all", "awq")], range(5, 6), "all", {"rounding": "awq"}),
    ([("set_scale", "all", "down_proj", "pow2")], range(30), "down_proj", {"scale": "pow2"}),
    ([("set_symmetric", "all", "all", True)], range(30), "all", {"symmetric": True}),
    ([("set_format", "all", "down_proj", "nf4"), ("set_group_size", "all", "down_proj", 128)], range(30), "down_proj",
     {"format": "nf4", "group_size": 128}),
]  # fmt: skip


@pytest.mark.parametrize("items, layers, role, expected", APPLIED, ids=[a[0][-1][0] for a in APPLIED[:-1]] + ["two"])
def test_edits_apply_to_the_selected_modules_only(facts, items, layers, role, expected):
    space = SearchSpace(facts, 4.5)
    child, repaired = apply_edits(GPTQ4, edits(*items), space, rng(0))
    assert not repaired
    before, after = configs(GPTQ4, facts), configs(child, facts)
    chosen = selected(facts, layers, role)
    assert chosen
    for name, config in after.items():
        if name in chosen:
            assert {key: getattr(config.weight, key) for key in expected} == expected, name
        else:
            assert config == before[name], name
    assert_within(child, space)


def test_an_edit_that_changes_nothing_beside_others_is_harmless(facts):
    space = SearchSpace(facts, 4.5)
    child, _ = apply_edits(GPTQ4, edits(("set_bits", "0", "all", 16), ("bit_shift", "0", "all", 1)), space, rng(0))
    assert {c.weight.bits for n, c in configs(child, facts).items() if ".layers.0." in n} == {16}


def test_set_outliers_keeps_a_middle_fraction(facts):
    child, _ = apply_edits(
        GPTQ4, edits(("set_outliers", "all", "v_proj", "keep_fp16")), SearchSpace(facts, 4.5), rng(0)
    )
    kept = {(c.outliers.method, c.outliers.fraction) for n, c in configs(child, facts).items() if "v_proj" in n}
    assert kept == {("keep_fp16", 0.005)}


def test_an_edit_over_budget_is_repaired_and_others_pay(facts):
    space = SearchSpace(facts, 4.3125)  # exactly W4 g64 asymmetric: no room
    child, repaired = apply_edits(GPTQ4, edits(("set_bits", "0-3", "down_proj", 5)), space, rng(0))
    assert repaired
    assert_within(child, space)
    after = configs(child, facts)
    assert all(after[n].weight.bits == 5 for n in selected(facts, range(4), "down_proj"))
    assert any(c.weight.bits < 4 for c in after.values())  # paid for elsewhere


@pytest.mark.parametrize(
    "items, reason",
    [
        ([("set_bits", "35", "mlp", 3)], "edits[0].layers: layer 35 does not exist; the model has layers 0-29"),
        ([("set_bits", "9-3", "mlp", 3)], "edits[0].layers: range '9-3' runs backwards"),
        ([("set_bits", "all", "lm_head", 3)], "edits[0].modules: 'lm_head' selects no module in layers all"),
        ([("set_group_size", "all", "q_proj", 128)],
         "edits[0]: set_group_size 128 on q_proj in layers all: format int on input width 576 takes group sizes "
         "[0, 16, 32, 64, 96, 192, 576]"),
        ([("set_format", "all", "all", "nf4"), ("set_rounding", "0-3", "mlp", "gptq")],
         'edits[1]: set_rounding "gptq" on mlp in layers 0-3: rounding gptq needs format int or gguf_q4_0 or gguf_q5_0 '
             "or gguf_q8_0 or gguf_iq4_nl, these modules use nf4"),
        ([("set_format", "all", "all", "fp4"), ("set_scale", "all", "all", "pow2")],
         'edits[1]: set_scale "pow2" on all in layers all: scale pow2 needs format int or fp8_e4m3, these modules '
         "use fp4"),
        ([("set_bits", "all", "all", 4), ("set_rounding", "all", "mlp", "gptq")],
         "edits: they change nothing; the parent already has what they set"),
        ([("set_bits", "0-9", "all", 5), ("set_bits", "0-9", "all", 4)],
         "edits: they change nothing; the parent already has what they set"),
    ],
    ids=["missing-layer", "backwards", "no-module", "group-128", "gptq-on-nf4", "pow2-on-fp4", "no-change", "undone"],
)  # fmt: skip
def test_an_edit_that_cannot_apply_is_rejected_with_its_reason(facts, items, reason):
    with pytest.raises(EditError) as error:
        apply_edits(GPTQ4, edits(*items), SearchSpace(facts, 4.5), rng(0))
    assert str(error.value).startswith(reason), str(error.value)


@pytest.mark.parametrize(
    "document",
    [
        {"edits": []},
        {"edits": [{"operator": "set_color", "layers": "all", "modules": "all", "value": 3}]},
        {"edits": [{"operator": "set_bits", "layers": "all", "modules": "all", "value": 7}]},
        {"edits": [{"operator": "set_bits", "layers": "0-3,7", "modules": "all", "value": 3}]},
        {"edits": [{"operator": "set_symmetric", "layers": "all", "modules": "all", "value": "yes"}]},
    ],
    ids=["empty", "unknown-operator", "bits-7", "two-spans", "string-bool"],
)
def test_edit_documents_off_the_model_are_refused(document):
    with pytest.raises(ValidationError):
        parse_reply(json.dumps(document), EditDocument)


# --- recombinations ---------------------------------------------------------------------------------------------


def test_spans_take_the_named_layers_from_parent_b(facts):
    space = SearchSpace(facts, 4.5)
    plan = parse_reply('{"crossover": "spans", "spans": [{"layers": "20-29", "parent": "B"}]}', Recombination)
    child, over = apply_recombination(GPTQ4, SYM3, plan, space, rng(0))
    assert not over
    a, b, after = configs(GPTQ4, facts), configs(SYM3, facts), configs(child, facts)
    assert all(after[i.name] == (b if i.layer >= 20 else a)[i.name] for i in facts.linears)


def test_a_child_over_budget_gives_layers_back(facts):
    space = SearchSpace(facts, 4.5)
    front = {**SYM3, "name": "front", "rules": [{"layers": "0-14", "weight": {"bits": 5}}]}
    back = {**SYM3, "name": "back", "rules": [{"layers": "15-29", "weight": {"bits": 5}}]}
    plan = parse_reply('{"crossover": "spans", "spans": [{"layers": "15-29", "parent": "B"}]}', Recombination)
    child, over = apply_recombination(front, back, plan, space, rng(0))
    assert over
    assert_within(child, space)


@pytest.mark.parametrize("crossover", ["layerwise", "blockwise"])
def test_random_crossovers_take_every_layer_from_a_parent(facts, crossover):
    space = SearchSpace(facts, 4.5)
    plan = Recombination(crossover=crossover)
    child, _ = apply_recombination(GPTQ4, SYM3, plan, space, rng(3))
    a, b, after = configs(GPTQ4, facts), configs(SYM3, facts), configs(child, facts)
    assert all(after[n] in (a[n], b[n]) for n in after)
    assert apply_recombination(GPTQ4, SYM3, plan, space, rng(3)) == (child, False)


@pytest.mark.parametrize(
    "spans, reason",
    [
        ([{"layers": "40", "parent": "B"}], "spans[0].layers: layer 40 does not exist"),
        ([], "spans: the child takes every layer from parent A"),
        ([{"layers": "all", "parent": "B"}], "spans: the child takes every layer from parent B"),
    ],
    ids=["missing-layer", "copy-of-a", "copy-of-b"],
)
def test_a_recombination_that_cannot_apply_is_rejected(facts, spans, reason):
    plan = Recombination(crossover="spans", spans=spans)
    with pytest.raises(EditError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        apply_recombination(GPTQ4, SYM3, plan, SearchSpace(facts, 4.5), rng(0))


# --- schemas ---------------------------------------------------------------------------------------------------------


def _integer_nodes(node):
    if isinstance(node, dict):
        if node.get("type") == "integer":
            yield node
        for value in node.values():
            yield from _integer_nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _integer_nodes(value)


def test_request_schemas_bound_integers_by_enum_and_compile_for_outlines(facts):
    space = SearchSpace(facts, 4.5)
    for schema in (propose_schema(space), edit_schema(space), recombine_schema()):
        assert all("enum" in node or "const" in node for node in _integer_nodes(schema))
        assert build_regex_from_schema(json.dumps(schema), r"[ ]?")


def test_the_propose_schema_is_narrowed_to_the_model_and_choices(facts):
    schema = propose_schema(SearchSpace(facts, 4.5))
    assert {"name", "notes", "schema_version"}.isdisjoint(schema["properties"])
    weight = schema["$defs"]["WeightGene"]["properties"]
    assert weight["group_size"]["enum"] == [0, 16, 32, 64, 96, 192]  # sizes dividing both 576 and 1536
    assert "down_proj" in schema["$defs"]["Rule"]["properties"]["modules"]["items"]["enum"]


# --- reflection ---------------------------------------------------------------------------------------------------


def low_bit(group, rounding="rtn"):
    return {"schema_version": 1, "name": f"low-{group}-{rounding}",
            "default": {"weight": {"bits": 4, "group_size": group, "rounding": rounding}},
            "rules": [{"layers": "20-29", "modules": ["mlp.down_proj"], "weight": {"bits": 2}}]}  # fmt: skip


def test_features_of_a_strategy(facts):
    found = features({**low_bit(64), "arithmetic": {"compute_dtype": "fp16"}}, facts)
    assert {"2-bit mlp in layers 20-29", "4-bit mlp in layers 20-29", "4-bit attn in layers 0-9", "rtn rounding",
            "fp16 compute"} <= found  # fmt: skip
    assert features({"default": {"weight": {"bits": 7}}}, facts) == frozenset()


def test_reflection_summarises_failures_and_rejections(facts):
    population = [
        Evaluated(low_bit(32), -9.0, False, "collapse", None, None),
        Evaluated(low_bit(64), -9.0, False, "collapse", None, None),
        Evaluated(low_bit(96), -9.0, False, "collapse", None, None),
        Evaluated(low_bit(192), -1.0, True, "ok", 0.9, 3.9),
        Evaluated({**GPTQ4, "arithmetic": {"compute_dtype": "fp16"}}, -9.0, False, "overflow", None, None),
        Evaluated({**SYM3, "arithmetic": {"compute_dtype": "fp16"}}, -9.0, False, "overflow", None, None),
        Evaluated({**GPTQ4, "default": {"weight": {"bits": 8}}}, -2.0, False, "ok", 0.01, 8.3),
        Evaluated({"schema_version": 1, "default": {"weight": {"bits": 7}}}, -9.0, False, "invalid", None, None),
    ]
    rejections = ["mutate: edits[0].layers: layer 35 does not exist; the model has layers 0-29",
                  "mutate: edits[0].layers: layer 41 does not exist; the model has layers 0-29",
                  "propose: duplicate of a strategy already proposed or evaluated"]  # fmt: skip
    reflection = Reflection(facts)
    reflection.observe(population, rejections)
    assert reflection.short_term == [
        "last generation: 8 new strategies, 1 survived (3 collapse, 2 overflow, 1 over budget, 1 invalid); "
        "3 replies rejected",
        "3 of 4 strategies with 2-bit mlp in layers 20-29 collapsed",
        "2 of 2 strategies with fp16 compute overflowed fp16",
        "2 replies rejected like: mutate: edits[0].layers: layer 35 does not exist; the model has layers 0-29",
    ]
    assert reflection.long_term[:2] == reflection.short_term[1:3]

    reflection.observe(population, [])  # strategies seen before do not count again
    assert reflection.short_term == ["last generation: 0 new strategies, 0 survived"]
    more = [Evaluated(low_bit(g, "gptq"), -9.0, False, "collapse", None, None) for g in (32, 64)]
    reflection.observe(more, [])
    assert reflection.long_term[0] == "5 of 6 strategies with 2-bit mlp in layers 20-29 collapsed"
    assert reflection.long_term[-2:] == [
        "2 replies rejected like: mutate: edits[0].layers: layer 35 does not exist; the model has layers 0-29",
        "1 reply rejected like: propose: duplicate of a strategy already proposed or evaluated",
    ]


# --- the generator on a real (tiny) model ------------------------------------------------------------------------


def test_proposals_from_a_tiny_model_resolve_fit_and_repeat_for_a_seed(facts, backend):
    space = SearchSpace(facts, 4.5)
    generator = make_generator("llm", space, backend=backend, sensitivities={k: 1 / (1 + k) for k in range(30)})
    started = time.perf_counter()
    proposals = generator.propose([], 3, rng(0))
    requests = generator.counts["accepted"] + generator.counts["rejected"]
    print(f"{requests} requests in {time.perf_counter() - started:.1f} s")  # shown with -s
    assert 1 <= len(proposals) == generator.counts["accepted"] <= 3 and requests <= 9
    assert len({strategy_id(d) for d in proposals}) == len(proposals)
    for document in proposals:
        assert_within(document, space)
        assert document["name"] == f"llm-{strategy_id(document)}" and document["notes"].startswith("llm propose")
    records = generator.take_records()
    assert [r.stream for r in records] == ["rejections"] * generator.counts["rejected"]
    assert all(r.data["reason"].startswith("propose: ") and r.data["reply"] is not None for r in records)
    assert generator.take_records() == []

    again = LlmGenerator(space, backend, sensitivities={k: 1 / (1 + k) for k in range(30)})
    assert again.propose([], 3, rng(0)) == proposals


class Counting:
    """A backend that records the prompts it passes on to the real one."""

    def __init__(self, backend):
        self.backend, self.name, self.prompts = backend, backend.name, []
        self.concurrency = backend.concurrency

    def generate(self, prompt, schema, seed, max_tokens):
        self.prompts.append(prompt)
        return self.backend.generate(prompt, schema, seed, max_tokens)


def test_later_generations_mutate_and_recombine_the_elite(facts, backend):
    space = SearchSpace(facts, 4.5)
    counting = Counting(backend)
    generator = LlmGenerator(space, counting)
    population = [Evaluated(d, -0.1 * k, True, "ok", 0.1 * k, 4.3) for k, d in enumerate([GPTQ4, SYM3])]
    population.append(Evaluated(low_bit(64), -9.0, False, "collapse", None, None))
    generator.tell(population)
    (reflections,) = generator.take_records()
    assert reflections.stream == "reflections" and reflections.data["accepted"] == 0

    stream = generator.iter_proposals(population, 4, rng(5))
    first = next(stream)
    made = len(counting.prompts)
    rest = list(stream)
    assert made < len(counting.prompts)  # the first proposal came before the other requests were made
    assert len({prompt.split(" ", 2)[1] for prompt in counting.prompts}) >= 2  # "You improve/combine/design ..."
    known = {strategy_id(m.document) for m in population}
    for document in [first, *rest]:
        assert_within(document, space)
        assert strategy_id(document) not in known
        assert document["notes"].split(" ")[1] in ("propose", "mutate", "recombine")
    rejections = [r.data["reason"] for r in generator.take_records()]
    assert len(rejections) == generator.counts["rejected"] == len(counting.prompts) - 1 - len(rest)


@pytest.mark.slow
def test_smollm2_on_vllm_proposes_edits_and_recombines_within_budget(facts, smollm2_server):
    """The product path: SmolLM2 behind a real vLLM server (0.1-3 s a request on 2 cores)."""
    from agentqat.serving.backends import VllmBackend

    space = SearchSpace(facts, 4.5)
    sensitivities = {layer: 1 / (1 + layer) for layer in range(30)}
    generator = LlmGenerator(space, VllmBackend.for_server(smollm2_server), sensitivities=sensitivities)
    first = generator.propose([], 4, rng(0))
    assert len(first) >= 2
    population = [Evaluated(d, -0.1 * k, True, "ok", 0.15 + 0.1 * k, 4.3) for k, d in enumerate(first)]
    generator.tell(population)
    later = generator.propose(population, 6, rng(1))
    assert len(later) >= 3
    assert {d["notes"].split(" ")[1] for d in later} & {"mutate", "recombine"}
    for document in first + later:
        assert_within(document, space)
    # A batch of requests is not batch-invariant on vLLM CPU (the same seed can sample other tokens beside other
    # requests), so reproducibility holds for requests decoded one at a time.
    alone = VllmBackend.for_server(smollm2_server, concurrency=1)
    one_at_a_time = [LlmGenerator(space, alone, sensitivities=sensitivities).propose([], 3, rng(2)) for _ in range(2)]
    assert one_at_a_time[0] == one_at_a_time[1]


# --- ablations and counts (the llm-random-edits control runs the same pipeline without a model) ------------------


def test_ablations_leave_lessons_and_sensitivities_out_and_counts_are_recorded(facts):
    from agentqat.rundir.manifest import LlmSettings

    assert LlmSettings.model_validate({"reflection": False, "sensitivities": False}).model_dump()["reflection"] is False
    space = SearchSpace(facts, 4.5)
    full = make_generator("llm-random-edits", space, sensitivities={k: 1 / (1 + k) for k in range(30)})
    ablated = make_generator("llm-random-edits", space, reflect=False)
    for generator in (full, ablated):
        proposals = generator.propose([], 4, rng(0))
        generator.tell([Evaluated(d, -math.inf, False, "collapse", None, None) for d in proposals])
    assert full.context([]).lessons and not ablated.context([]).lessons
    assert ablated.context([]).sensitivities == "not measured" != full.context([]).sensitivities
    counts = full.take_records()[-1].data
    assert counts["accepted"] == 4 and counts["decode_s"] >= 0
    assert counts["repaired_modules"] >= counts["repaired"] and (counts["repaired_bits"] > 0) == (counts["repaired"] > 0)


class Overlapping(RandomJsonBackend):
    """The schema sampler, slowed down and sent `concurrency` requests at once; records the most in flight."""

    def __init__(self, concurrency):
        self.concurrency, self.in_flight, self.most = concurrency, 0, 0
        self._lock = threading.Lock()

    def generate(self, prompt, schema, seed, max_tokens):
        with self._lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        time.sleep(0.05)
        with self._lock:
            self.in_flight -= 1
        return super().generate(prompt, schema, seed, max_tokens)


def test_concurrent_requests_give_the_one_at_a_time_proposals(facts):
    space = SearchSpace(facts, 4.5)
    parents = [Evaluated(d, -0.1 * k, True, "ok", 0.1 * k, 4.3) for k, d in enumerate([GPTQ4, SYM3])]
    sequential, concurrent = Overlapping(1), Overlapping(4)
    one_at_a_time = LlmGenerator(space, sequential).propose(parents, 6, rng(3))
    batched = LlmGenerator(space, concurrent).propose(parents, 6, rng(3))
    assert [doc["name"] for doc in batched] == [doc["name"] for doc in one_at_a_time]
    assert len(batched) == 6
    assert sequential.most == 1
    assert concurrent.most > 1
