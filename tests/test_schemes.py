"""The scheme registries (agentqat.quant.schemes). An outlier policy registered in this test alone (keep each output
row's largest entry) reaches the schema, resolve, quantization, effective bits, the deploy check, the exporters'
checks and canonical ids with no other change, and leaves no trace when it is removed. Then the contract the
built-in policies keep, a toy activation format, SmoothQuant as the registered input transform, and GPTQ's settings
on its registered method."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from agentqat import defaults
from agentqat.export.base import ExportModule
from agentqat.export.compressed_tensors import scheme_problem
from agentqat.export.gguf_types import gguf_problem
from agentqat.levels.database import level_file
from agentqat.models import model_facts
from agentqat.quant import METHODS, ActivationQuant, OutlierPolicy, WeightQuant, quantize_weight, quantize_with_outliers
from agentqat.quant.activation import SMOOTHQUANT, fake_quantize_activation
from agentqat.quant.base import LayerStats
from agentqat.quant.gptq import GptqSettings, gptq_quantize
from agentqat.quant.registry import changed_settings, configure, configured
from agentqat.quant.schemes import (
    ACTIVATIONS,
    OUTLIER_SCHEMES,
    ActivationScheme,
    OutlierScheme,
    outlier_scheme,
    registered_outliers,
    transforms_of,
    unregister_outliers,
    without_transforms,
)
from agentqat.strategy.apply import apply_strategy, restore
from agentqat.strategy.bits import strategy_bits
from agentqat.strategy.canonical import canonical_config
from agentqat.strategy.deploy import unservable
from agentqat.strategy.document import StrategyError, parse_strategy, strategy_json_schema
from agentqat.strategy.resolve import ModuleConfig, module_needs_calibration, resolve_strategy
from agentqat.strategy.space import GeneChoices


def _row_max(weight: torch.Tensor, policy: OutlierPolicy, stats) -> torch.Tensor:
    """Returns a mask of each output row's largest |W| entry."""
    mask = torch.zeros_like(weight, dtype=torch.bool)
    mask[torch.arange(weight.shape[0]), weight.abs().argmax(1)] = True
    return mask


ROW_MAX = OutlierScheme(
    name="row_max", select=_row_max, count=lambda policy, i, out, stats: out,
    position_bits=lambda count, out: 16 * count,  # an int16 column index per row
    fields=(), deploy_targets=frozenset({"fake-quant"}), exports=frozenset({"fake-quant"}),
    kept="each row's largest weight in fp16",
)  # fmt: skip
DOCUMENT = {
    "schema_version": 1, "name": "row-max",
    "default": {"weight": {"bits": 4, "group_size": 32, "symmetric": True}, "outliers": {"method": "row_max"}},
}  # fmt: skip


def outlier_enum(schema: dict) -> list[str]:
    node = schema["$defs"]["OutlierGene"]["properties"]["method"]
    return node.get("anyOf", [node])[0]["enum"]


@pytest.fixture(scope="module")
def model(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, torch_dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def facts_tiny(model):
    return model_facts(model, "tiny")


def test_a_registered_policy_runs_end_to_end_and_leaves_no_trace(model):
    facts = model_facts(model, "tiny")
    before = json.dumps(strategy_json_schema()), GeneChoices().outlier_methods
    with registered_outliers(ROW_MAX):
        assert outlier_enum(strategy_json_schema())[-1] == "row_max" and "row_max" in GeneChoices().outlier_methods
        resolved = resolve_strategy(parse_strategy(DOCUMENT), facts)
        assert {c.outliers.method for c in resolved.modules.values()} == {"row_max"}
        assert not any(module_needs_calibration(c) for c in resolved.modules.values())

        # quantize: each row's largest entry comes back exactly, and the model runs with every module swapped
        weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
        config = next(iter(resolved.modules.values()))
        result, mask = quantize_with_outliers(weight, config.weight, config.outliers)
        assert mask.sum() == 8 and torch.equal(result[mask], weight[mask])
        applied = apply_strategy(model, resolved, None)
        try:
            assert all(applied.outlier_counts[info.name] == info.out_features for info in facts.linears)
            model(torch.arange(8).unsqueeze(0))
        finally:
            restore(model, applied)

        # bits: 4-bit codes, an fp16 scale per 32, and per row one fp16 value and one 16-bit index
        bits = strategy_bits(resolved, facts)
        expected = sum(i.in_features * i.out_features * (4 + 16 / 32) + i.out_features * 32 for i in facts.linears)
        assert bits.bits_per_weight == pytest.approx(expected / bits.linear_weights)

        # deploy and export say what the policy declares
        broken = unservable(resolved, facts, "vllm-cpu")
        assert any("each row's largest weight in fp16 (row_max) are not exported to" in line for line in broken)
        assert "GGUF blocks keep no each row's largest weight in fp16" in gguf_problem(config)
        module = ExportModule("m", config, weight, result, None)
        assert "they keep each row's largest weight in fp16 beside the codes (row_max)" in scheme_problem(module)
        assert canonical_config(config) == config  # row_max reads no other field: they are all at their defaults
    assert (json.dumps(strategy_json_schema()), GeneChoices().outlier_methods) == before
    with pytest.raises(StrategyError, match="outliers.method: Input should be 'none', 'keep_fp16' or 'llm_int8'"):
        parse_strategy(DOCUMENT)


def test_the_registry_refuses_clashes_and_keeps_the_default():
    with pytest.raises(ValueError, match="registered twice"):
        with registered_outliers(OutlierScheme(**{**ROW_MAX.__dict__, "name": "keep_fp16"})):
            pass
    with pytest.raises(ValueError, match="cannot be removed"):
        unregister_outliers("none")
    with pytest.raises(ValueError, match="unknown deploy targets"):
        OutlierScheme(**{**ROW_MAX.__dict__, "deploy_targets": frozenset({"tpu"})})
    with pytest.raises(ValueError, match="no OutlierPolicy fields"):
        OutlierScheme(**{**ROW_MAX.__dict__, "fields": ("alpha",)})


@pytest.mark.parametrize("name", list(OUTLIER_SCHEMES))
def test_every_policy_keeps_the_contract(name):
    """Its mask has the weight's shape, its expected count matches the mask on stats it is given, and quantizing
    around it puts the kept entries back exactly."""
    scheme = outlier_scheme(name)
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(2)) * torch.linspace(0.5, 12.0, 64)
    stats = LayerStats(x.T @ x / 256, x.abs().mean(0), x.abs().amax(0), 256)
    policy = OutlierPolicy(name, fraction=0.01, threshold=6.0)
    mask = scheme.select(weight, policy, stats)
    assert mask.shape == weight.shape and mask.dtype == torch.bool
    assert int(mask.sum()) == scheme.count(policy, 64, 16, stats)
    result, kept = quantize_with_outliers(weight, WeightQuant(bits=4, group_size=32), policy, stats)
    assert torch.equal(result[kept], weight[kept])
    assert scheme.stored_bits(0, 16) == 0


def test_gptq_settings_live_on_its_method_and_configure_changes_them():
    settings = METHODS["gptq"].settings
    assert settings == GptqSettings(defaults.GPTQ_DAMP, defaults.GPTQ_ACT_ORDER, defaults.GPTQ_BLOCK_SIZE)
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(4)) * torch.linspace(0.5, 4.0, 64)
    stats = LayerStats(x.T @ x / 256, x.abs().mean(0), x.abs().amax(0), 256)
    config = WeightQuant(bits=3, group_size=32, rounding="gptq")
    assert torch.equal(quantize_weight(weight, config, stats), gptq_quantize(weight, config, stats.hessian))
    with configured("gptq", act_order=False, damp=0.1) as method:
        assert method.settings == GptqSettings(damp=0.1, act_order=False)
        natural = gptq_quantize(weight, config, stats.hessian, act_order=False, damp=0.1)
        assert torch.equal(quantize_weight(weight, config, stats), natural)
    assert METHODS["gptq"].settings == settings
    with pytest.raises(ValueError, match="has no settings"):
        configure("rtn", damp=0.1)
    with pytest.raises(ValueError, match="gptq"):
        configure("gptq", damping=0.1)
    with pytest.raises(ValueError, match="damp in"):
        GptqSettings(damp=0.0)


def _ternary_activations(x: torch.Tensor, config) -> torch.Tensor:
    """Returns each token's entries as {-m, 0, m}, m its mean |x|."""
    magnitude = x.abs().mean(-1, keepdim=True)
    return torch.sign(x) * (x.abs() > 0.5 * magnitude) * magnitude


def test_a_registered_activation_format_is_validated_and_applied(facts_tiny):
    toy = ActivationScheme("ternary_act", _ternary_activations, bits=(4,))
    document = {"default": {"activation": {"bits": 8, "format": "ternary_act"}}}
    with ACTIVATIONS.registered(toy):
        schema = strategy_json_schema()["$defs"]["ActivationGene"]["properties"]["format"]
        assert schema.get("anyOf", [schema])[0]["enum"][-1] == "ternary_act"
        with pytest.raises(StrategyError, match="ternary_act activations are 4-bit, not 8; set bits to 4"):
            resolve_strategy(parse_strategy(document), facts_tiny)
        document["default"]["activation"]["bits"] = 4
        config = next(iter(resolve_strategy(parse_strategy(document), facts_tiny).modules.values()))
        x = torch.randn(3, 64, generator=torch.Generator().manual_seed(5))
        assert len(torch.unique(fake_quantize_activation(x, config.activation)[0].abs())) <= 2
    with pytest.raises(StrategyError, match="activation.format"):
        parse_strategy(document)


def test_smoothquant_is_the_registered_input_transform(facts_tiny):
    document = {"default": {"weight": {"bits": 8, "group_size": 0, "symmetric": True},
                            "activation": {"bits": 8, "smooth_alpha": 0.5}}}  # fmt: skip
    resolved = resolve_strategy(parse_strategy(document), facts_tiny)
    config = next(iter(resolved.modules.values()))
    assert transforms_of(config.activation) == (SMOOTHQUANT,) and module_needs_calibration(config)
    smoothed = strategy_bits(resolved, facts_tiny)
    unsmoothed = parse_strategy({"default": {**document["default"], "activation": {"bits": 8}}})
    plain = strategy_bits(resolve_strategy(unsmoothed, facts_tiny), facts_tiny)
    extra = sum(m.smoothing_bits for m in smoothed.modules) - sum(m.smoothing_bits for m in plain.modules)
    assert extra == sum(16 * i.in_features for i in facts_tiny.linears)
    assert any("SmoothQuant scales are not exported" in line for line in unservable(resolved, facts_tiny, "vllm-cpu"))
    assert "SmoothQuant" in gguf_problem(replace(config, activation=replace(config.activation, bits=16)))
    assert without_transforms(config.activation).smooth_alpha is None


def test_changed_gptq_settings_key_the_level_files():
    config = ModuleConfig(WeightQuant(bits=4, rounding="gptq"), ActivationQuant(), OutlierPolicy())
    before = level_file(config)
    assert changed_settings(config.weight) == {}
    with configured("gptq", damp=0.05):
        assert changed_settings(config.weight) == {"damp": 0.05} and level_file(config) != before
    assert level_file(config) == before
