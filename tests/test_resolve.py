"""Resolving strategies against a model of the default model's shape (built on the meta device)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from agentqat.models import model_facts
from agentqat.strategy.document import StrategyError, parse_strategy
from agentqat.strategy.resolve import needs_calibration, parse_layers, resolve_strategy


@pytest.fixture(scope="module")
def facts():
    """Facts of a model shaped like SmolLM2-135M: 30 layers, hidden 576, MLP 1536, 9 heads / 3 KV heads."""
    config = LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
    )
    with torch.device("meta"):
        return model_facts(LlamaForCausalLM(config), "smollm2-shaped")


def resolve(document, facts):
    return resolve_strategy(parse_strategy(document), facts)


def test_every_module_gets_exactly_one_config(facts):
    resolved = resolve({}, facts)
    assert set(resolved.modules) == {info.name for info in facts.linears}
    assert len(resolved.modules) == 210


def test_later_rules_override_earlier_ones_field_by_field(facts):
    resolved = resolve(
        {
            "default": {"weight": {"bits": 4, "group_size": 32}},
            "rules": [
                {"layers": "0-3", "modules": ["mlp"], "weight": {"bits": 8}},
                {"layers": "2", "modules": ["down_proj"], "weight": {"bits": 3, "rounding": "gptq"}},
            ],
        },
        facts,
    )
    config = lambda name: resolved.modules[f"model.layers.{name}"].weight  # noqa: E731
    assert (config("0.mlp.up_proj").bits, config("0.mlp.up_proj").group_size) == (8, 32)
    assert (config("2.mlp.down_proj").bits, config("2.mlp.down_proj").rounding) == (3, "gptq")
    assert config("2.mlp.up_proj").bits == 8
    assert config("4.mlp.up_proj").bits == 4
    assert config("0.self_attn.q_proj").bits == 4


@pytest.mark.parametrize(
    "pattern, selected",
    [
        ("attn", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}),
        ("mlp", {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}),
        ("q_proj", {"self_attn.q_proj"}),
        ("mlp.down_proj", {"mlp.down_proj"}),
        ("*_proj", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}),
        ("self_attn.[kv]*", None),  # brackets are not allowed in patterns: rejected when parsed
    ],
)
def test_module_patterns(facts, pattern, selected):
    document = {"rules": [{"layers": "5", "modules": [pattern], "weight": {"bits": 8}}]}
    if selected is None:
        with pytest.raises(StrategyError):
            resolve(document, facts)
        return
    resolved = resolve(document, facts)
    changed = {name.split("layers.5.")[1] for name, c in resolved.modules.items() if c.weight.bits == 8}
    assert changed == selected


@pytest.mark.parametrize(
    "spec, expected",
    [("all", tuple(range(30))), ("0-3", (0, 1, 2, 3)), ("7", (7,)), ("0-1,5,28-29", (0, 1, 5, 28, 29)), ("3,1,3", (1, 3))],
)
def test_layer_selections(spec, expected):
    assert parse_layers(spec, 30) == expected


@pytest.mark.parametrize(
    "document, expected",
    [
        ({"rules": [{"layers": "0-30"}]}, "rules[0].layers: layer 30 does not exist; the model has layers 0-29"),
        ({"rules": [{"layers": "5-2"}]}, "rules[0].layers: range '5-2' runs backwards"),
        ({"rules": [{"modules": ["mlp.dwon_proj"]}]}, "rules[0].modules[0]: 'mlp.dwon_proj' matches no linear module"),
        ({"rules": [{"modules": ["mlp", "lm_head"]}]}, "rules[0].modules[1]: 'lm_head' matches no linear module"),
        ({"default": {"weight": {"group_size": 128}}}, "default.weight.group_size: group_size 128 does not divide the input width 576"),
        ({"rules": [{"modules": ["q_proj"], "weight": {"group_size": 384}}]}, "rules[0].weight.group_size: group_size 384"),
        ({"default": {"weight": {"format": "nf4", "bits": 3}}}, "default.weight.bits: format nf4 stores 4-bit codes but bits is 3"),
        ({"default": {"weight": {"format": "fp8_e4m3"}}}, "format fp8_e4m3 stores 8-bit codes but bits is 4"),
        ({"default": {"weight": {"format": "nf4", "rounding": "gptq"}}}, "default.weight.rounding: rounding gptq works on integer grids, GGUF's Q4_0"),
        ({"default": {"weight": {"format": "llm_int8", "bits": 8}}}, "llm_int8 scales each output row; set group_size 0"),
        ({"default": {"weight": {"format": "nf4", "scale": "pow2"}}}, "default.weight.scale: bitsandbytes' nf4 keeps its own absmax scales"),
        ({"default": {"activation": {"format": "fp8_e4m3", "bits": 4}}}, "default.activation.bits: fp8_e4m3 activations are 8-bit"),
        ({"default": {"weight": {"format": "nf4", "group_size": 0}}}, "default.weight.group_size: bitsandbytes' nf4 takes blocks of 32, 64, 128, 256"),
        ({"default": {"weight": {"format": "fp4", "group_size": 192}}}, "bitsandbytes' fp4 takes blocks of"),
        ({"default": {"weight": {"format": "nf4", "clip": "mse"}}}, "default.weight.clip: bitsandbytes' nf4 scales by the block's absmax"),
    ],
    ids=lambda value: None if isinstance(value, dict) else value[:40],
)
def test_invalid_for_the_model(facts, document, expected):
    with pytest.raises(StrategyError) as caught:
        resolve(document, facts)
    assert any(expected in line for line in caught.value.lines), caught.value.lines


def test_a_group_size_problem_is_reported_once_with_a_module_count(facts):
    with pytest.raises(StrategyError) as caught:
        resolve({"default": {"weight": {"group_size": 128}}}, facts)
    assert len(caught.value.lines) == 1
    assert "180 modules" in caught.value.lines[0]  # every module but down_proj (input 1536)


def test_bits_16_skips_the_grid_checks(facts):
    resolve({"default": {"weight": {"bits": 16, "group_size": 128}}}, facts)


def test_shift_scales_forces_power_of_two_scales(facts):
    resolved = resolve({"arithmetic": {"shift_scales": True}}, facts)
    assert {c.weight.scale for c in resolved.modules.values()} == {"pow2"}


@pytest.mark.parametrize(
    "document, expected",
    [
        ({}, False),
        ({"default": {"weight": {"rounding": "gptq"}}}, True),
        ({"default": {"weight": {"rounding": "gptq", "bits": 16}}}, False),
        ({"rules": [{"modules": ["q_proj"], "weight": {"rounding": "awq"}}]}, True),
        ({"default": {"activation": {"bits": 8, "smooth_alpha": 0.5}}}, True),
        ({"default": {"outliers": {"method": "llm_int8"}}}, True),
        ({"default": {"outliers": {"method": "keep_fp16", "fraction": 0.01}}}, False),
        ({"default": {"outliers": {"method": "keep_fp16", "fraction": 0.01, "criterion": "saliency"}}}, True),
    ],
)
def test_needs_calibration(facts, document, expected):
    assert needs_calibration(resolve(document, facts)) is expected
