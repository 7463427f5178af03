"""Effective bits per weight: the documented formula, as a table of configs and expected costs."""

import pytest
import torch

from agentqat.models import LinearInfo
from agentqat.quant.base import ActivationQuant, LayerStats, OutlierPolicy, WeightQuant
from agentqat.strategy.bits import expected_outlier_count, module_bits
from agentqat.strategy.resolve import ModuleConfig

INFO = LinearInfo("model.layers.0.mlp.up_proj", 0, in_features=576, out_features=1536)


def config(weight=WeightQuant(), activation=ActivationQuant(), outliers=OutlierPolicy()):
    return ModuleConfig(weight, activation, outliers)


@pytest.mark.parametrize(
    "weight, expected_bits_per_weight",
    [
        (WeightQuant(bits=4, group_size=64, symmetric=False), 4 + (16 + 4) / 64),
        (WeightQuant(bits=4, group_size=64, symmetric=True), 4 + 16 / 64),
        (WeightQuant(bits=4, group_size=64, symmetric=True, scale="pow2"), 4 + 8 / 64),
        (WeightQuant(bits=3, group_size=32, symmetric=False, rounding="gptq"), 3 + (16 + 3) / 32),
        (WeightQuant(bits=4, group_size=64, symmetric=False, rounding="hqq"), 4 + (16 + 16) / 64),
        (WeightQuant(bits=8, group_size=0, symmetric=True), 8 + 16 / 576),
        (WeightQuant(bits=4, group_size=64, format="nf4"), 4 + 32 / 64),
        (WeightQuant(bits=4, group_size=64, format="fp4", symmetric=False), 4 + 32 / 64),
        (WeightQuant(bits=8, group_size=0, format="llm_int8"), 8 + 32 / 576),
        (WeightQuant(bits=8, group_size=32, format="fp8_e4m3", scale="pow2"), 8 + 8 / 32),
        (WeightQuant(bits=16), 16.0),
    ],
    ids=lambda v: f"{v.bits}b-g{v.group_size}-{v.format}-{v.rounding}-{'sym' if v.symmetric else 'asym'}-{v.scale}" if isinstance(v, WeightQuant) else None,
)
def test_weight_storage(weight, expected_bits_per_weight):
    assert module_bits(config(weight), INFO, outlier_count=0).bits_per_weight == pytest.approx(expected_bits_per_weight)


def test_kept_outliers_cost_a_value_and_a_position_each():
    policy = OutlierPolicy(method="keep_fp16", fraction=0.01)
    count = expected_outlier_count(policy, INFO, None)
    assert count == round(0.01 * 576 * 1536)
    bits = module_bits(config(WeightQuant(bits=4, group_size=64, symmetric=True), outliers=policy), INFO, count)
    assert bits.outlier_bits == count * (16 + 32)
    assert bits.bits_per_weight == pytest.approx(4 + 16 / 64 + 0.01 * 48, rel=1e-3)


def test_llm_int8_outlier_columns_cost_values_and_one_index_per_column():
    abs_max = torch.ones(576)
    abs_max[:3] = 50.0
    stats = LayerStats(torch.eye(576), torch.ones(576), abs_max, tokens=10)
    policy = OutlierPolicy(method="llm_int8", threshold=6.0)
    count = expected_outlier_count(policy, INFO, stats)
    assert count == 3 * 1536
    bits = module_bits(config(WeightQuant(bits=8, group_size=0, format="llm_int8"), outliers=policy), INFO, count)
    assert bits.outlier_bits == count * 16 + 3 * 32


def test_smoothing_stores_one_fp16_divisor_per_input_channel():
    bits = module_bits(config(activation=ActivationQuant(bits=8, smooth_alpha=0.5)), INFO, 0)
    assert bits.smoothing_bits == 16 * 576
