"""A strategy's identity: genes without effect are dropped, so twins share a canonical id and others do not."""

import copy

import pytest

from agentqat.generators.prior import uniform_prior
from agentqat.strategy.canonical import canonical_id
from agentqat.strategy.document import strategy_id
from agentqat.strategy.space import SearchSpace

BASE = {"schema_version": 1, "name": "base", "default": {"weight": {"bits": 4, "group_size": 64, "rounding": "gptq"}}}


def variant(*rules, default=None, name="variant"):
    document = copy.deepcopy(BASE)
    document["name"] = name
    document["default"].update(default or {})
    document["rules"] = list(rules)
    return document


TWINS = {  # what differs, in a document that configures every module alike
    "activation format at 16 bits": variant(default={"activation": {"format": "fp8_e4m3", "granularity": "per_tensor"}}),
    "outlier fields, method none": variant(default={"outliers": {"method": "none", "fraction": 0.01, "threshold": 3.0}}),
    "threshold under keep_fp16": (
        variant(default={"outliers": {"method": "keep_fp16", "fraction": 0.005, "threshold": 2.0}}),
        variant(default={"outliers": {"method": "keep_fp16", "fraction": 0.005}}),
    ),
    "genes of unquantized weights": (
        variant({"layers": "0-3", "modules": ["mlp"], "weight": {"bits": 16, "group_size": 32, "rounding": "rtn"},
                 "outliers": {"method": "keep_fp16", "fraction": 0.01}}),
        variant({"layers": "0-3", "modules": ["mlp"], "weight": {"bits": 16}}),
    ),
    "a rule restating the default": variant({"layers": "5", "modules": ["attn"], "weight": {"bits": 4}}),
}  # fmt: skip
DIFFERENT = {
    "smoothing under quantized weights": variant(default={"activation": {"smooth_alpha": 0.5}}),
    "another bit width": variant({"layers": "0", "modules": ["mlp"], "weight": {"bits": 5}}),
    "activations quantized in another format": (
        variant(default={"activation": {"bits": 8, "format": "fp8_e4m3"}}),
        variant(default={"activation": {"bits": 8, "format": "int"}}),
    ),
    "compute dtype": variant(default={}, name="bf16") | {"arithmetic": {"compute_dtype": "bf16"}},
}


def pair(case):
    return case if isinstance(case, tuple) else (BASE, case)


@pytest.mark.parametrize("case", sorted(TWINS))
def test_twins_share_an_identity(smollm2_shaped_facts, case):
    first, second = pair(TWINS[case])
    assert strategy_id(first) != strategy_id(second)
    assert canonical_id(first, smollm2_shaped_facts) == canonical_id(second, smollm2_shaped_facts)


@pytest.mark.parametrize("case", sorted(DIFFERENT))
def test_genes_with_an_effect_keep_strategies_apart(smollm2_shaped_facts, case):
    first, second = pair(DIFFERENT[case])
    assert canonical_id(first, smollm2_shaped_facts) != canonical_id(second, smollm2_shaped_facts)


def test_a_document_that_does_not_resolve_keeps_its_strategy_id(smollm2_shaped_facts):
    broken = variant({"layers": "40", "modules": ["mlp"], "weight": {"bits": 5}})
    assert canonical_id(broken, smollm2_shaped_facts) == strategy_id(broken)


def test_the_default_prior_is_the_best_uniform_gptq_and_awq_within_budget(smollm2_shaped_facts):
    prior = uniform_prior(SearchSpace(smollm2_shaped_facts, 4.5))
    weights = [document["default"]["weight"] for document in prior]
    assert [(w["bits"], w["group_size"], w["symmetric"], w["rounding"]) for w in weights] == [
        (4, 64, False, "gptq"), (4, 64, False, "awq")]  # fmt: skip
    assert all(document["name"].startswith("prior-") and not document["rules"] for document in prior)
