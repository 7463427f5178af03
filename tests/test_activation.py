"""Specification of activation fake quantization and SmoothQuant's scales (agentqat.quant.activation)."""

from __future__ import annotations

import pytest
import torch

from agentqat.quant import ActivationQuant, fake_quantize_activation, smoothing_scales


def activations(seed: int = 0) -> torch.Tensor:
    """Returns [batch 2, seq 16, in 64] activations whose tokens differ in scale, with one massive channel."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 64, generator=g) * torch.rand(2, 16, 1, generator=g) * 3.0
    x[..., 7] *= 30.0
    return x


@pytest.mark.parametrize("bits", [8, 4])
def test_per_token_int_error_is_within_half_a_token_step(bits):
    x = activations()
    result = fake_quantize_activation(x, ActivationQuant(bits=bits, granularity="per_token"))
    half_step = x.abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1) / 2
    assert result.shape == x.shape and result.dtype == x.dtype
    assert ((result - x).abs() <= half_step * 1.0001).all()
    assert not torch.equal(result, x)


def test_per_tensor_int_uses_one_step_and_is_coarser_than_per_token():
    x = activations()
    per_tensor = fake_quantize_activation(x, ActivationQuant(bits=8, granularity="per_tensor"))
    step = x.abs().max() / 127
    codes = per_tensor / step
    assert torch.allclose(codes, torch.round(codes), atol=1e-3)
    per_token = fake_quantize_activation(x, ActivationQuant(bits=8, granularity="per_token"))
    assert (per_token - x).square().mean() < (per_tensor - x).square().mean()


@pytest.mark.parametrize("granularity", ["per_token", "per_tensor"])
def test_fp8_values_are_representable_after_dividing_by_the_scale(granularity):
    x = activations()
    result = fake_quantize_activation(x, ActivationQuant(bits=8, format="fp8_e4m3", granularity=granularity))
    absmax = x.abs().amax(-1, keepdim=True) if granularity == "per_token" else x.abs().max()
    scaled = result / (absmax / 448.0)
    assert torch.allclose(scaled.to(torch.float8_e4m3fn).to(torch.float32), scaled, rtol=1e-5)
    assert torch.allclose(result, x, rtol=0.07, atol=1e-6 * float(x.abs().max()))
    assert not torch.equal(result, x)


def test_bits_16_is_the_identity():
    x = activations()
    assert fake_quantize_activation(x, ActivationQuant(bits=16)) is x


def test_keeps_the_input_dtype_and_zero_tokens():
    x = activations().to(torch.bfloat16)
    x[0, 3] = 0.0
    result = fake_quantize_activation(x, ActivationQuant(bits=8))
    assert result.dtype == torch.bfloat16 and torch.isfinite(result).all()
    assert (result[0, 3] == 0).all()


def test_fp8_activations_refuse_other_bits():
    with pytest.raises(ValueError, match="8-bit"):
        fake_quantize_activation(activations(), ActivationQuant(bits=4, format="fp8_e4m3"))


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.85, 1.0])
def test_smoothing_leaves_the_layer_output_unchanged(alpha):
    x = activations().to(torch.float64)
    g = torch.Generator().manual_seed(1)
    weight = (torch.randn(32, 64, generator=g) * 0.02).to(torch.float64)
    scales = smoothing_scales(x.abs().amax((0, 1)), weight, alpha)
    assert scales.shape == (64,) and torch.isfinite(scales).all() and (scales > 0).all()
    assert torch.allclose((x / scales) @ (weight * scales).T, x @ weight.T, rtol=1e-10, atol=1e-12)


def test_smoothing_moves_the_massive_channel_into_the_weights():
    x = activations()
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(1)) * 0.02
    scales = smoothing_scales(x.abs().amax((0, 1)), weight, 0.5)
    assert scales[7] == scales.max()
    smoothed = (x / scales).abs().amax((0, 1))
    assert smoothed.max() / smoothed.median() < x.abs().amax((0, 1)).max() / x.abs().amax((0, 1)).median() / 5


def test_smoothing_scales_stay_finite_for_dead_channels():
    weight = torch.zeros(4, 8)
    scales = smoothing_scales(torch.zeros(8), weight, 0.5)
    assert torch.isfinite(scales).all() and (scales > 0).all()
