"""The method registry: a method registered in this test alone (ternary weights) reaches validation, effective bits,
the schema, the generators, the LLM edits and the baseline matrix with no other change, and leaves no trace when it
is removed. Then the contract every registered method keeps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agentqat.arena.baselines import baseline_requests
from agentqat.generators import make_generator
from agentqat.generators.llm.edits import EditDocument, apply_edits, edit_schema, parse_reply, propose_schema
from agentqat.generators.operators import MUTATIONS
from agentqat.quant import METHODS, Method, WeightQuant, method_of, quantize_weight, registered
from agentqat.quant.base import DEFAULT_ROUNDING, LayerStats
from agentqat.quant.registry import DEPLOY_TARGETS, check_weight, register, unregister
from agentqat.quant.storage import scales_only
from agentqat.strategy.bits import strategy_bits
from agentqat.strategy.document import StrategyError, parse_strategy, strategy_json_schema
from agentqat.strategy.resolve import resolve_strategy
from agentqat.strategy.space import GeneChoices, SearchSpace

TERNARY_DOCUMENT = {"schema_version": 1, "name": "ternary", "default": {"weight": {"format": "ternary", "bits": 2}}}


def ternary_quantize(weight: torch.Tensor, config: WeightQuant, stats: LayerStats | None = None) -> torch.Tensor:
    """Returns each group as {-a, 0, a}: entries under 0.7 mean|w| become 0, the others sign(w) times their mean |w|."""
    groups = weight.reshape(-1, config.group_size or weight.shape[1])
    magnitude = groups.abs()
    kept = magnitude > 0.7 * magnitude.mean(1, keepdim=True)
    scale = (magnitude * kept).sum(1, keepdim=True) / kept.sum(1, keepdim=True).clamp_min(1)
    return (torch.sign(groups) * kept * scale.to(torch.float16).to(torch.float32)).reshape(weight.shape)


TERNARY = Method(
    name="ternary", format="ternary", rounding=DEFAULT_ROUNDING, quantize=ternary_quantize, storage=scales_only,
    label="ternary", deploy_targets=frozenset({"fake-quant"}), bits=(2,), scales=("fp16",), clips=(1.0,),
    scaling="absmean", baseline={"weight": {"group_size": 64}},
)  # fmt: skip


@pytest.fixture
def ternary():
    with registered(TERNARY) as method:
        yield method


@pytest.fixture
def facts(smollm2_shaped_facts):
    return smollm2_shaped_facts


def resolve(document, facts):
    return resolve_strategy(parse_strategy(document), facts)


def weight_formats(schema: dict) -> list[str]:
    node = schema["$defs"]["WeightGene"]["properties"]["format"]
    return node.get("anyOf", [node])[0]["enum"]


def baseline_names() -> list[str]:
    return [request.document["name"] for request in baseline_requests("screen", 0, bits=(8, 4, 2), budgets=(4,))]


def snapshot(facts) -> tuple:
    """Returns everything a registered method may extend."""
    space = SearchSpace(facts, 4.5)
    return (
        tuple(METHODS), json.dumps(strategy_json_schema()), GeneChoices(), baseline_names(),
        json.dumps(edit_schema(space)), json.dumps(propose_schema(space)),
    )  # fmt: skip


def test_registering_extends_and_removing_restores_every_view(facts):
    before = snapshot(facts)
    with registered(TERNARY):
        during = snapshot(facts)
        assert "ternary" in during[0] and "ternary" in GeneChoices().formats and "ternary-w2" in during[3]
        assert all(a != b for a, b in zip(before, during)), "every view changes"
    assert snapshot(facts) == before
    with pytest.raises(StrategyError, match="default.weight.format: Input should be 'int', 'nf4', 'fp4', "):
        parse_strategy(TERNARY_DOCUMENT)


def test_the_schema_and_documents_name_a_registered_method(ternary):
    assert weight_formats(strategy_json_schema())[-1] == "ternary"
    assert parse_strategy(TERNARY_DOCUMENT).default.weight.format == "ternary"


def test_resolve_checks_a_registered_method_by_its_declared_capabilities(ternary, facts):
    resolved = resolve(TERNARY_DOCUMENT, facts)
    assert {method_of(c.weight).name for c in resolved.modules.values()} == {"ternary"}
    cases = [
        ({"bits": 3}, "default.weight.bits: format ternary stores 2-bit codes but bits is 3; set bits to 2 or format "
                      "to int"),
        ({"bits": 2, "scale": "pow2"}, "default.weight.scale: ternary keeps its own absmean scales"),
        ({"bits": 2, "clip": "mse"}, "default.weight.clip: ternary scales by the block's absmean; set clip 1.0"),
        ({"bits": 2, "rounding": "gptq"}, "default.weight.rounding: rounding gptq works on integer grids, GGUF's Q4_0, "
                                          "GGUF's Q5_0, GGUF's Q8_0 and GGUF's IQ4_NL only, not on format ternary; use "
                                          "rounding rtn or format int, gguf_q4_0, gguf_q5_0, gguf_q8_0 or gguf_iq4_nl"),
    ]  # fmt: skip
    for weight, expected in cases:
        with pytest.raises(StrategyError) as caught:
            resolve({"default": {"weight": {"format": "ternary", **weight}}}, facts)
        assert any(line.startswith(expected) for line in caught.value.lines), caught.value.lines


def test_effective_bits_and_quantization_follow_the_method(ternary, facts):
    assert strategy_bits(resolve(TERNARY_DOCUMENT, facts), facts).bits_per_weight == pytest.approx(2 + 16 / 64)
    weight = torch.randn(8, 128, generator=torch.Generator().manual_seed(0))
    quantized = quantize_weight(weight, WeightQuant(bits=2, format="ternary"))
    assert all(len(torch.unique(group.abs())) <= 2 for group in quantized.reshape(-1, 64))


def test_the_random_generator_draws_a_registered_method(ternary, facts):
    space = SearchSpace(facts, 2.5)
    assert "ternary" in space.choices.formats
    proposals = make_generator("random", space).propose([], 30, np.random.default_rng(1))
    formats = {c.weight.format for d in proposals for c in resolve(d, facts).modules.values()}
    assert "ternary" in formats


def test_mutations_keep_a_registered_method_valid(ternary, facts):
    space = SearchSpace(facts, 2.5)
    for name, mutate in sorted(MUTATIONS.items()):
        child = mutate(TERNARY_DOCUMENT, space, np.random.default_rng(3))
        resolved = resolve(child, facts)  # raises if a mutation broke what ternary takes
        assert strategy_bits(resolved, facts).bits_per_weight <= space.bits_budget, name
    child = MUTATIONS["group_size_change"](TERNARY_DOCUMENT, space, np.random.default_rng(0))
    sizes = {(c.weight.format, c.weight.group_size) for c in resolve(child, facts).modules.values()}
    assert ("ternary", 64) in sizes and len(sizes) > 1


def test_llm_edits_offer_and_apply_a_registered_method(ternary, facts):
    space = SearchSpace(facts, 4.5)
    schema = edit_schema(space)
    assert "ternary" in schema["$defs"]["Edit_set_format"]["properties"]["value"]["enum"]
    assert "ternary" in weight_formats(propose_schema(space))
    reply = {"edits": [{"operator": "set_format", "layers": "0-3", "modules": "mlp", "value": "ternary"}]}
    document = parse_reply(json.dumps(reply), EditDocument)
    child, _ = apply_edits({"schema_version": 1, "default": {}}, document, space, np.random.default_rng(0))
    configs = resolve(child, facts).modules
    edited = {c.weight for name, c in configs.items() if ".mlp." in name and int(name.split(".")[2]) < 4}
    assert {(w.format, w.bits) for w in edited} == {("ternary", 2)}


def test_the_baseline_matrix_plays_a_registered_method(ternary):
    assert "ternary-w2" in baseline_names() and "ternary-w4" not in baseline_names()


def test_the_registry_refuses_clashes():
    with pytest.raises(ValueError, match="registered twice"):
        register(METHODS["gptq"])
    with pytest.raises(ValueError, match="capabilities of format int"):
        register(Method(**{**TERNARY.__dict__, "name": "int-ternary", "format": "int", "rounding": "ternary"}))
    with pytest.raises(ValueError, match="unknown deploy targets"):
        Method(**{**TERNARY.__dict__, "deploy_targets": frozenset({"tensorrt"})})
    with pytest.raises(ValueError, match="default config selects"):
        unregister(DEFAULT_ROUNDING)


# --- the contract of every registered method ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_keeps_the_contract(name, facts):
    method = METHODS[name]
    assert "fake-quant" in method.deploy_targets and method.deploy_targets <= DEPLOY_TARGETS
    info = facts.linears[0]
    for bits in method.bits:
        group = next(g for g in (64, 0, *(method.group_sizes or ())) if method.takes_group(g, info.in_features))
        config = WeightQuant(bits=bits, group_size=group, format=method.format, rounding=method.rounding)
        assert method_of(config) is method and check_weight(config, info) == [], config
        storage = method.storage(config, info)
        assert storage.scale_bits > 0 and storage.zero_bits >= 0
    odd = WeightQuant(bits=method.bits[0], group_size=16, format=method.format, scale="pow2", clip="mse")
    repaired = method.repair(odd, info.in_features, GeneChoices().group_sizes)
    assert method_of(repaired) is method and method.check(repaired, info) == []
